"""Reliability tests: worker health, bad input files, checkpoints, run locks."""
