"""A clean console: TensorFlow's import-time noise removed at its source.

Importing TensorFlow 2.14 on a machine without a GPU prints three "Unable to
register cuDNN/cuFFT/cuBLAS factory" lines (TF registers its CUDA plugins
twice; the second registration fails harmlessly), a TensorRT warning, INFO
lines about CUDA drivers and CPU instructions, and TensorBoard's
`pkg_resources` deprecation warning. None of them is actionable here.

`import_tensorflow_quietly()` imports TensorFlow and TFF with the C++ log
level at WARNING (INFO lines off, warnings and errors kept), the one Python
warning filtered by its exact message, and stderr captured at the file
descriptor during the import only: the known noise lines are dropped,
every other line is passed through unchanged. Nothing after the import is
filtered, so real errors always show. Binaries call it before anything else
imports TensorFlow; this module itself imports nothing heavy.
"""

import os
import re
import sys
import threading
import warnings

NOISE = (
    re.compile(r'Unable to register (cuDNN|cuFFT|cuBLAS) factory: Attempting'
               r' to register factory for plugin \w+ when one has already'
               r' been registered'),
    re.compile(r'TF-TRT Warning: Could not find TensorRT'),
)


def is_noise(line: str) -> bool:
  return any(p.search(line) for p in NOISE)


def import_tensorflow_quietly() -> None:
  """Imports tensorflow and tensorflow_federated without their noise."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  warnings.filterwarnings(
      'ignore', message=r'pkg_resources is deprecated as an API',
      category=UserWarning)
  if 'tensorflow' in sys.modules:
    return
  sys.stderr.flush()
  read_fd, write_fd = os.pipe()
  saved = os.dup(2)
  os.dup2(write_fd, 2)
  os.close(write_fd)
  captured = []
  reader = threading.Thread(
      target=lambda: captured.append(_read_all(read_fd)), daemon=True)
  reader.start()
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow_federated  # pylint: disable=g-import-not-at-top,unused-import
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    reader.join()
    os.close(read_fd)
    kept = [l for l in b''.join(captured).decode(errors='replace')
            .splitlines(keepends=True) if not is_noise(l)]
    if kept:
      sys.stderr.write(''.join(kept))
      sys.stderr.flush()


def _read_all(fd: int) -> bytes:
  chunks = []
  while True:
    chunk = os.read(fd, 65536)
    if not chunk:
      return b''.join(chunks)
    chunks.append(chunk)
