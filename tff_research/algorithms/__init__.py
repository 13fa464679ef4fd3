"""Federated algorithms, selected by `--algorithm`.

Each algorithm is one module exporting a `SPEC` (`spec.AlgorithmSpec`: name,
paper, builder, hyperparameters, capabilities), listed in `registry.py`.
Flags, validation, defaults, the comparison's algorithm list and the docs
table all come from the specs. See `registry.py` for the privacy and
clustering axes.
"""

from tff_research.algorithms.registry import AlgorithmConfig
from tff_research.algorithms.registry import algorithm_names
from tff_research.algorithms.registry import build_algorithm
from tff_research.algorithms.registry import CLUSTERING_METRICS
from tff_research.algorithms.registry import get_spec
from tff_research.algorithms.registry import register
from tff_research.algorithms.registry import SPECS

__all__ = [
    'AlgorithmConfig', 'algorithm_names', 'build_algorithm',
    'CLUSTERING_METRICS', 'get_spec', 'register', 'SPECS',
]
