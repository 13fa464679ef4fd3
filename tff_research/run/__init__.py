"""One run: config, data split, the round loop, hooks, checkpoints, releases.

`training.train(config)` builds what a run needs from an `ExperimentConfig`
(`config.py`) and hands it to `loop.run_rounds`; `checkpoint_evaluation`
re-evaluates a saved run. The command line that builds the config lives in
`cli/`.
"""
