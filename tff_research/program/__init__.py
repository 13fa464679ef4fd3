"""The program layer: config, flags, run directory, round loop, hooks, runtime."""
