"""Model aggregators: the mean and the robust rules, as `tff.aggregators`
factories, with a registry (`registry.py`).

| name | module | paper |
| --- | --- | --- |
| `mean` | `mean.py` | McMahan et al. 2017 (the non-finite-excluding mean of `excluding_mean.py`) |
| `median` | `median.py` | Yin et al. 2018, coordinate-wise median |
| `trimmed_mean` | `trimmed_mean.py` | Yin et al. 2018, coordinate-wise trimmed mean |
| `krum`, `multi_krum` | `krum.py` | Blanchard et al. 2017 |
| `norm_bound` | `norm_bound.py` | Sun et al. 2019, on TFF's `clipping_factory` |

Rules that need every update (median, trimmed mean, Krum) collect them with
one `tff.federated_aggregate` whose merge concatenates (`collection.py`), so
they stay mergeable across TFF workers. Every rule leaves non-finite updates
out and counts them (`excluded_clients`), as `excluding_mean.py`, the model
aggregator of every TFF-built algorithm, does; and reports `kept_clients` and
`kept_share` (float32[capacity], per position: see `collection.py` for what
a position is on one machine and across workers) so that an attack layer can
count the malicious clients a rule kept
(`tff_research.attacks.selection.kept_malicious`).

This package is a layer below the algorithms: it imports TensorFlow, TFF and
numpy, nothing else of this project. This module imports nothing, so an
algorithm importing `excluding_mean` pays for nothing else.
"""
