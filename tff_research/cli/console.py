"""A clean console: TensorFlow's import-time noise removed at its source.

Importing TensorFlow 2.14 on a machine without a GPU prints three "Unable to
register cuDNN/cuFFT/cuBLAS factory" lines (TF registers its CUDA plugins
twice; the second registration fails harmlessly), a TensorRT warning, INFO
lines about CUDA drivers and CPU instructions, and TensorBoard's
`pkg_resources` deprecation warning. None of them is actionable here.

`import_tensorflow_quietly()` imports TensorFlow and TFF with the C++ log
level at WARNING (INFO lines off, warnings and errors kept), the one Python
warning filtered by its exact message, and stderr captured at the file
descriptor during the import only (`execution.stderr_filter`): the known
noise lines are dropped, every other line is passed through unchanged.
Binaries call it before anything else imports TensorFlow; this module itself
imports nothing heavy.
"""

import os
import sys
import warnings

from tff_research.execution import allocator
from tff_research.execution import stderr_filter


def import_tensorflow_quietly() -> None:
  """Imports tensorflow and tensorflow_federated without their noise.

  Also caps glibc's arenas first (`execution.allocator`): it must precede
  TensorFlow's threads.
  """
  allocator.limit_arenas()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  warnings.filterwarnings(
      'ignore', message=r'pkg_resources is deprecated as an API',
      category=UserWarning)
  if 'tensorflow' in sys.modules:
    return
  with stderr_filter.stderr_without(stderr_filter.is_noise):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow_federated  # pylint: disable=g-import-not-at-top,unused-import
