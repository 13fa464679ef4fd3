"""Where TFF computations run.

* `runtime`: TFF's C++ runtime on a local worker process this process owns
  (it never outlives us and never hangs a pipe), or on remote workers;
  `start`, `stop`, signal handling, one-line `WorkerError`s.
* `remote`: a round's clients split across TFF workers on other machines.
* `monitor`: worker health shared by both: `Monitor`, the monitored stub and
  runner, TFF's execution context on one worker.
* `worker`: the worker process itself (`python -m tff_research.cli.worker`).
* `stderr_filter`: file descriptor 2 without TensorFlow's known noise.

This package imports nothing, so `worker` and `stderr_filter` stay light.
"""
