"""Held-out evaluation.

* `per_client`: one federated pass giving every held-out client's loss,
  accuracy and count, and the confusion matrix (`Evaluator`).
* `checkpoint`: a saved run re-evaluated on exactly its held-out clients
  (`experiments/evaluate.py`).
"""

from tff_research.evaluation.per_client import build_per_client_eval
from tff_research.evaluation.per_client import Evaluator

__all__ = ['build_per_client_eval', 'Evaluator']
