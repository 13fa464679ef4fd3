"""Federated-learning research on TensorFlow Federated.

Each package is a layer. `LAYERS` lists them from the ground up: a module
imports modules of its own layer or of the layers below it, never above, and
never in a cycle (modules or packages). The experiment binaries
(`experiments/`) stand above every layer. `tests/test_layering.py` checks
this on the import graph, together with two house rules: absl's `flags` and
`app` are imported only under `cli/` (and by the binaries), and no library
function is longer than 80 lines. docs/architecture.md walks through it.

This module imports nothing, so importing a light module of the package
(`cli.console`, `execution.worker`) never imports TensorFlow.
"""

LAYERS = (
    # What is trained, and on which clients' data.
    ('models', 'data'),
    # `tff.aggregators` factories: the excluding mean, robust rules, DP.
    ('aggregators', 'privacy'),
    # Federated algorithms (and the axes that wrap them); malicious clients.
    ('algorithms', 'attacks'),
    # The held-out evaluation pass.
    ('evaluation',),
    # TFF's runtime: a local worker that never outlives us, remote workers.
    ('execution',),
    # One run: config, data split, round loop, hooks, checkpoints, releases.
    ('run',),
    # Many runs: comparisons, sweeps, statistics, reference experiments.
    ('studies', 'reference'),
    # The command line: flags, the binaries' helpers, `python -m` entry points.
    ('cli',),
)
