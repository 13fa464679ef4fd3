"""Held-out evaluation.

* `per_client`: one federated pass giving every held-out client's loss,
  accuracy and count, and the confusion matrix (`Evaluator`).
* `model_choice`: which of several models (clustered FL's) evaluates a
  client that never trained: the one of least loss on its selection data
  (IFCA).
"""

from tff_research.evaluation.per_client import build_per_client_eval
from tff_research.evaluation.per_client import Evaluator

__all__ = ['build_per_client_eval', 'Evaluator']
