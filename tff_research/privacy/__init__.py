"""Differential privacy for federated training (docs/privacy.md).

* `dp_config`: `DPConfig`, the mechanism, its budget and sampling, and the
  aggregation factory that implements it.
* `dp_server`, `dp_client`, `clipping`, `adaptive_clipping`: custom
  `tff.aggregators` factories in TFF's federated core: central DP-FedAvg
  (McMahan et al. 2018, adaptive clipping of Andrew et al. 2021) and local DP.
* `accounting`: epsilon of a run with `dp_accounting` (RDP every round, PLD
  where it applies), the per-round DpEvent matching the client sampling.
* `calibrate`: the noise multiplier that meets a budget (its command line:
  `python -m tff_research.cli.calibrate`).

The algorithm wrapper that applies a `DPConfig` is
`tff_research.algorithms.private`; this package never imports algorithms.
"""
