"""Atomic outputs: a file or a folder appears whole, or not at all.

Everything is written to a staging path beside the target (same filesystem) and renamed into
place at the end; on any exception the staging path is removed.
"""

import contextlib
import os
import shutil
import tempfile


class AtomicDirectory:
  """``with AtomicDirectory(out, overwrite) as tmp:`` write into ``tmp``; renamed to ``out`` on
  success, removed on any exception."""

  def __init__(self, output: str, overwrite: bool = False):
    self.output = os.path.abspath(os.fspath(output))
    self.overwrite = overwrite
    self.tmp = None

  def __enter__(self):
    if os.path.exists(self.output) and not self.overwrite:
      raise FileExistsError(f"{self.output} exists; pass --overwrite to replace it")
    parent = os.path.dirname(self.output) or "."
    os.makedirs(parent, exist_ok=True)
    self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output)}.partial-", dir=parent)
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)
      return False
    if os.path.exists(self.output):
      shutil.rmtree(self.output)
    os.replace(self.tmp, self.output)
    return False


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = ""):
  """``with atomic_file(path) as tmp:`` write the file ``tmp``; it replaces ``path`` on success.

  ``suffix`` is kept on the staging name for writers that pick a format by extension (e.g.
  ``np.savez`` adds ``.npz`` unless the name ends with it). Concurrent writers of one path never
  expose a half-written file to readers: each renames its own complete copy.
  """
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-", suffix=suffix,
                             dir=parent)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
