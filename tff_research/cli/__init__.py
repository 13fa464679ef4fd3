"""The command line: the only layer (with `experiments/`) that reads flags.

* `flags`: every experiment flag, defined once in recorded groups and parsed
  once into a `run.config.ExperimentConfig`; `tune_flags`: the study
  binaries' `--tune*` flags.
* `binary`: what every binary does around its work (one-line errors, a
  quiet log, a worker that never outlives it); `console`: TensorFlow
  imported without its noise.
* Module entry points (`python -m tff_research.cli.NAME`), each a `main`
  around a library call: `build_emnist_cache` (`data.build_emnist_cache`),
  `calibrate` (`privacy.calibrate`), `worker` (`execution.worker`).

This package imports nothing, so `console` stays light.
"""
