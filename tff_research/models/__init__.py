"""Model constructors: `--model=linear|mlp|cnn|linear_variable|pkg.mod:fn`.

`model_fn(model, num_classes, input_spec, seed)` returns a no-argument
function building a fresh `tff.learning.models.VariableModel`, which is what
every `tff.learning` builder takes. `model` is a built-in name, a
`package.module:function` path, or the function itself: a function of
`num_classes` returning an uncompiled Keras model whose outputs are logits
and whose input is a batch of 784 floats (`preprocessing.element_spec()`).
"""

from __future__ import annotations

import importlib
import re
from typing import Callable, Union

import tensorflow as tf
import tensorflow_federated as tff

from tff_research.models import keras_models
from tff_research.models import variable_model

MODEL_NAMES = ('linear', 'mlp', 'cnn', 'linear_variable')
KerasConstructor = Callable[[int], tf.keras.Model]
_IMPORT_PATH = re.compile(r'^[A-Za-z_][\w.]*:[A-Za-z_]\w*$')


def check_model_name(name: str) -> None:
  """ValueError (one line) unless `name` is a built-in model or an
  importable `package.module:function`."""
  if name not in MODEL_NAMES:
    import_constructor(name)


def import_constructor(path: str) -> KerasConstructor:
  """The function `package.module:function` names."""
  if not _IMPORT_PATH.match(path):
    raise ValueError(
        f'--model={path} is not valid: give one of {", ".join(MODEL_NAMES)}'
        ' or package.module:function (a function of num_classes returning'
        ' a Keras model)')
  module_name, function_name = path.split(':')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f'--model={path}: cannot import {module_name} ({e})'
                     ) from None
  constructor = getattr(module, function_name, None)
  if not callable(constructor):
    raise ValueError(
        f'--model={path}: {module_name} has no function {function_name}')
  return constructor


def keras_model(name: str, num_classes: int, seed: int | None = None):
  """The raw Keras model (logits) for `name` in {linear, mlp, cnn}."""
  try:
    return keras_models.KERAS_MODELS[name](num_classes, seed)
  except KeyError:
    raise ValueError(
        f'unknown Keras model {name!r}; valid: '
        f'{", ".join(keras_models.KERAS_MODELS)}'
    ) from None


def model_fn(
    model: Union[str, KerasConstructor],
    num_classes: int,
    input_spec,
    seed: int | None = None,
) -> Callable[[], tff.learning.models.VariableModel]:
  """A `tff.learning` model constructor for `--model=model`."""
  if model == 'linear_variable':
    return lambda: variable_model.LinearVariableModel(num_classes, input_spec)
  if isinstance(model, str) and model in keras_models.KERAS_MODELS:
    seeded = lambda n: keras_model(model, n, seed)  # pylint: disable=unnecessary-lambda-assignment
  else:
    if callable(model):
      constructor = model
    elif isinstance(model, str) and ':' in model:
      constructor = import_constructor(model)
    else:
      raise ValueError(
          f'unknown model {model!r}; valid: {", ".join(MODEL_NAMES)} or'
          ' package.module:function')

    def seeded(n):
      # A researcher's model seeds its unseeded initializers from the run
      # (Keras draws them from Python's, NumPy's and TF's global seeds).
      if seed is not None:
        tf.keras.utils.set_random_seed(seed)
      return constructor(n)

  def build():
    return tff.learning.models.from_keras_model(
        seeded(num_classes),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=input_spec,
        metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
    )

  return build
