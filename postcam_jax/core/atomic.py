"""Atomic outputs: a file or a folder appears whole or not at all, and nothing a user owns is lost.

Every output is staged beside its target (same filesystem) and renamed into place at the end:

- :func:`check_output`: the checks to run before any work (not a file where a folder goes, not
  under a file, writable, exists only with ``overwrite``, replaceable);
- :class:`AtomicDirectory`: a whole folder (a model directory, a depth folder, a scene);
- :class:`AtomicFiles`: files added to a folder that may hold others (the sampler's ``--out``);
- :func:`atomic_file`: one file; :func:`scratch_dir`: a temporary folder beside a target;
- :func:`append_line`: one whole line added to a log (metrics, journals), never half of one.

Replacing (``overwrite``) removes only a folder this project made: it holds the project's marker
(``model.json`` of a model directory; :data:`MARKER` for other folders, which the helpers write)
and none of the run's inputs. The old folder is moved aside, the new one renamed in, then the old
one removed. Anything else is refused with one line (:class:`OutputError`).

Staging names carry the host and the process id (``.NAME.partial-HOST-PID-<random>``). The next
run into the same place removes those of dead processes (``kill -9``), puts back a folder that
such a run had moved aside but not yet replaced, and reports what it did.

Signals: while a staging path exists, SIGTERM raises :class:`Terminated` (a ``SystemExit`` with
status 143) and SIGINT ``KeyboardInterrupt`` in the main thread, so every staging path is removed
on the way out; both wait while a rename or a removal is in progress and still stop every commit
when Python dropped their exception (:func:`raise_if_signalled`). A handler installed by someone
else (the trainer's preemption watcher) is left alone.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

MARKER = ".postcam-jax"  # the marker file of folders without their own (model dirs: model.json)
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's names


class OutputError(ValueError):
  """An output path that cannot be written or replaced; the message names it and the fix."""


class OutputExistsError(OutputError, FileExistsError):
  """The output exists and ``overwrite`` was not given."""


class Terminated(SystemExit):
  """SIGTERM arrived while an output was being written; its staging was removed (status 143)."""


# ----------------------------------------------------------------------------------------------
# Checks.


def _held_input(path: str, inputs) -> str | None:
  """The first of ``inputs`` that is ``path`` or lies inside it (resolving links)."""
  real = os.path.realpath(path)
  for item in inputs:
    if item is None:
      continue
    candidate = os.path.realpath(os.fspath(item))
    if candidate == real or candidate.startswith(real.rstrip(os.sep) + os.sep):
      return os.fspath(item)
  return None


def _check_creatable(path: str):
  """The nearest existing ancestor of ``path`` is a folder this process can create things in."""
  probe = os.path.dirname(path)
  while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise OutputError(f"output {path} lies under {probe}, which is a file, not a folder; choose "
                      f"a path under a folder")
  try:  # a real attempt: permissions, read-only filesystems, root included
    os.rmdir(tempfile.mkdtemp(prefix=".postcam-jax-probe-", dir=probe))
  except OSError as e:
    raise OutputError(f"output {path}: cannot write in {probe} ({e.strerror}); choose a writable "
                      f"place") from None


def check_output(path, *, overwrite: bool = False, marker: str | None = MARKER, inputs=(),
                 kind: str = "folder", merge: bool = False) -> str:
  """The absolute output path, or one :class:`OutputError` naming why it cannot be written.

  ``kind``: "folder" or "file". An existing output is refused without ``overwrite``; with it, a
  folder is replaced only if it holds ``marker`` (None: no marker needed) and holds none of
  ``inputs``, a file only if it is none of ``inputs``. ``merge``: an existing folder is fine (files
  are added into it, see :class:`AtomicFiles`).
  """
  path = os.path.abspath(os.fspath(path))
  _check_creatable(path)
  if not os.path.lexists(path):
    return path
  if os.path.islink(path):
    raise OutputError(f"output {path} is a symbolic link; give the path it points to, or another "
                      f"one")
  if kind == "folder" and not os.path.isdir(path):
    raise OutputError(f"output {path} is a file, not a folder; choose a folder path")
  if kind == "file" and os.path.isdir(path):
    raise OutputError(f"output {path} is a folder, not a file; choose a file path")
  if merge:
    return path
  if not overwrite:
    raise OutputExistsError(f"output {path} exists; pass --overwrite to replace it")
  held = _held_input(path, inputs)
  if held is not None:
    what = "is" if os.path.realpath(held) == os.path.realpath(path) else "holds"
    raise OutputError(f"output {path} {what} the input {held}, which --overwrite would delete; "
                      f"choose another output")
  if kind == "folder" and marker is not None and not os.path.isfile(os.path.join(path, marker)):
    raise OutputError(f"output {path} was not made by postcam-jax (no {marker} in it), and "
                      f"--overwrite replaces only what it made; move it away or choose another "
                      f"output")
  return path


def check_files(paths, *, overwrite: bool = False, inputs=()) -> list[str]:
  """:func:`check_output` of every file a run will write, and no two of them the same."""
  seen = set()
  out = []
  for p in paths:
    p = check_output(p, overwrite=overwrite, inputs=inputs, kind="file")
    if p in seen:
      raise OutputError(f"two outputs of this run are both {p}; give them different names")
    seen.add(p)
    out.append(p)
  return out


def write_marker(folder: str):
  """The :data:`MARKER` file that says postcam-jax made ``folder`` (so it may replace it)."""
  with open(os.path.join(folder, MARKER), "w") as f:
    json.dump({"made_by": "postcam-jax", "program": os.path.basename(sys.argv[0] or "python"),
               "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
    f.write("\n")


# ----------------------------------------------------------------------------------------------
# Staging paths, stale ones, signals.

_lock = threading.RLock()
_staging: set[str] = set()
_installed: dict[int, object] = {}  # signal -> the handler ours replaced
_critical_depth = 0
_pending: int | None = None
_signalled: int | None = None  # the signal our handler took, until the staging is all gone
_saved_unraisablehook = None  # the hook ours replaced, while ours is in place


def _raise_for(signum: int):
  if signum == signal.SIGINT:
    raise KeyboardInterrupt
  raise Terminated(128 + signum)


def _handler(signum, _frame):
  global _pending, _signalled
  _signalled = signum
  if _critical_depth:  # a rename or removal is under way: finish it first
    _pending = signum
    return
  _raise_for(signum)


def _unraisablehook(unraisable):
  """Our handler's exception dropped by Python is not printed ("Exception ignored ... Traceback"):
  :func:`raise_if_signalled` raises it again. Anything else goes to the hook ours replaced."""
  if _signalled is not None and issubclass(unraisable.exc_type, (KeyboardInterrupt, Terminated)):
    return
  _saved_unraisablehook(unraisable)


def raise_if_signalled():
  """Raise again for a signal whose exception Python dropped: raised in a garbage-collection
  callback (JAX has one) or a ``__del__``, it goes nowhere and the program goes on. Every commit
  asks first, so such a run never publishes; long loops ask between steps."""
  if _signalled is not None:
    _raise_for(_signalled)


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _critical():
  """Signals wait until the block is done (renames and removals are never cut in half)."""
  global _critical_depth, _pending
  main = _main_thread()
  if main:
    _critical_depth += 1
  try:
    yield
  finally:
    if main:
      _critical_depth -= 1
      if not _critical_depth and _pending is not None:
        signum, _pending = _pending, None
        _raise_for(signum)


def _install_handlers():
  """Our SIGTERM/SIGINT handlers, where the defaults are in place, and our unraisable hook with
  them (main thread only)."""
  global _saved_unraisablehook
  with _lock:
    if not _main_thread():
      return
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
      if sig not in _installed and signal.getsignal(sig) is default:
        _installed[sig] = signal.signal(sig, _handler)
    if _installed and sys.unraisablehook is not _unraisablehook:
      _saved_unraisablehook, sys.unraisablehook = sys.unraisablehook, _unraisablehook


def _unregister(path: str | None):
  """Forget ``path``; with no staging left, put the previous handlers back."""
  global _signalled
  with _lock:
    _staging.discard(path)
    if _staging or not _main_thread():
      return
    for sig, previous in list(_installed.items()):
      if signal.getsignal(sig) is _handler:
        signal.signal(sig, previous)
      del _installed[sig]
    if sys.unraisablehook is _unraisablehook:
      sys.unraisablehook = _saved_unraisablehook
    _signalled = None  # its exception is on its way out (or was caught by the caller)


def active_staging() -> list[str]:
  """The staging paths this process holds now."""
  with _lock:
    return sorted(_staging)


def _remove(path: str):
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def _prefix(path: str, what: str) -> str:
  return f".{os.path.basename(path)}.{what}-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def clean_stale(path) -> list[str]:
  """Remove the staging paths of ``path`` left by dead processes of this host, put back a folder
  moved aside by a run killed while replacing it, report staging of unknown owners; returns the
  notes (also printed to stderr)."""
  path = os.path.abspath(os.fspath(path))
  parent, base = os.path.split(path)
  if not os.path.isdir(parent):
    return []
  ours = re.compile(re.escape(f".{base}.") + rf"(partial|replaced)-([^-]+)-(\d+)-{_RANDOM}"
                    r"(\.[^/]*)?$")
  legacy = re.compile(re.escape(f".{base}.partial-") + rf"{_RANDOM}(\.replaced|\.[a-z0-9]+)?$")
  notes = []
  for name in sorted(os.listdir(parent)):
    full = os.path.join(parent, name)
    m = ours.match(name)
    if m is None:
      if legacy.match(name):
        notes.append(f"{full} was left by an interrupted run of an older version; remove it if "
                     f"no other run is writing {path}")
      continue
    what, host, pid = m.group(1), m.group(2), int(m.group(3))
    if host != _HOST or pid == os.getpid() or _alive(pid):
      continue  # another host's, this process's, or a running process's: not stale
    with _critical():
      if what == "replaced" and not os.path.lexists(path):
        os.replace(full, path)
        notes.append(f"put {path} back: a run (pid {pid}) was killed while replacing it")
      else:
        _remove(full)
        notes.append(f"removed {full}, left by an interrupted run (pid {pid})")
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  return notes


def _make_staging(path: str, *, folder: bool, suffix: str = "") -> str:
  """A registered staging folder (or file) beside ``path``."""
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = None
  try:
    # Handlers first: a signal once the path exists waits until it is registered, then removes it.
    with _critical():
      _install_handlers()
      if folder:
        tmp = tempfile.mkdtemp(prefix=_prefix(path, "partial"), dir=parent)
      else:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path, "partial"), suffix=suffix, dir=parent)
        os.close(fd)
      with _lock:
        _staging.add(tmp)
  except BaseException:
    if tmp is None:
      _unregister(None)
    else:
      _drop_staging(tmp)
    raise
  return tmp


def _drop_staging(tmp: str):
  with _critical():
    _remove(tmp)
    _unregister(tmp)


# ----------------------------------------------------------------------------------------------
# The outputs.


class _Staged:
  """A ``with`` block that writes into a staging folder ``self.tmp``: on a clean exit (and no
  signal pending) the subclass's ``_commit`` moves it into place, uninterruptible; the staging
  goes either way."""

  tmp: str | None = None

  def __exit__(self, exc_type, exc, tb):
    try:
      if exc_type is None:
        raise_if_signalled()
        with _critical():
          self._commit()
    finally:
      _drop_staging(self.tmp)
    return False


class AtomicDirectory(_Staged):
  """``with AtomicDirectory(out, overwrite) as tmp:`` write into ``tmp``; renamed to ``out`` on
  success, removed on an exception, SIGTERM or SIGINT.

  ``marker``: the file that proves a folder is this project's (checked before an existing
  ``out`` is replaced; it must be in ``tmp`` at the end). With the default :data:`MARKER` the
  helper writes it; a model directory passes ``model.json``, which it writes itself. ``inputs``:
  paths the run reads, which a replaced folder must not hold.
  """

  def __init__(self, output, overwrite: bool = False, *, marker: str | None = MARKER,
               inputs=()):
    self.output = os.path.abspath(os.fspath(output))
    self.overwrite = overwrite
    self.marker = marker
    self.inputs = tuple(inputs)
    self.tmp = None

  def _check(self) -> str:
    return check_output(self.output, overwrite=self.overwrite, marker=self.marker,
                        inputs=self.inputs)

  def __enter__(self) -> str:
    clean_stale(self.output)
    self._check()
    self.tmp = _make_staging(self.output, folder=True)
    if self.marker == MARKER:
      try:
        write_marker(self.tmp)
      except BaseException:
        _drop_staging(self.tmp)
        raise
    return self.tmp

  def _commit(self):
    self._check()  # nothing appeared (or changed) there meanwhile
    if self.marker is not None and not os.path.isfile(os.path.join(self.tmp, self.marker)):
      raise RuntimeError(f"internal error: {self.tmp} holds no {self.marker} at the end")
    aside = None
    if os.path.lexists(self.output):
      aside = tempfile.mkdtemp(prefix=_prefix(self.output, "replaced"),
                               dir=os.path.dirname(self.output))
      os.replace(self.output, aside)
    try:
      os.replace(self.tmp, self.output)
    except BaseException:
      if aside is not None:
        os.replace(aside, self.output)
      raise
    if aside is not None:
      shutil.rmtree(aside, ignore_errors=True)


class AtomicFiles(_Staged):
  """``with AtomicFiles(folder, overwrite) as tmp:`` write files (sub-folders allowed) into
  ``tmp``; on success each moves to the same relative path under ``folder`` (created if needed,
  other files there kept), on an exception or a signal none does. An existing file is replaced
  only with ``overwrite`` and never when it is one of ``inputs``. ``published``: the final paths.
  """

  def __init__(self, folder, overwrite: bool = False, *, inputs=()):
    self.folder = os.path.abspath(os.fspath(folder))
    self.overwrite = overwrite
    self.inputs = tuple(inputs)
    self.tmp = None
    self.published: list[str] = []

  def __enter__(self) -> str:
    clean_stale(self.folder)
    check_output(self.folder, merge=True)
    self.tmp = _make_staging(self.folder, folder=True)
    return self.tmp

  def _commit(self):
    moves = sorted((os.path.join(root, f), os.path.join(self.folder, os.path.relpath(root,
                                                                                     self.tmp), f))
                   for root, _, files in os.walk(self.tmp) for f in files)
    check_output(self.folder, merge=True)
    targets = check_files([os.path.normpath(dst) for _, dst in moves], overwrite=self.overwrite,
                          inputs=self.inputs)
    for (src, _), dst in zip(moves, targets):
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.replace(src, dst)
      self.published.append(dst)


@contextlib.contextmanager
def atomic_file(path, suffix: str = "", *, overwrite: bool = True, inputs=()):
  """``with atomic_file(path) as tmp:`` write the file ``tmp``; it replaces ``path`` on success.

  ``suffix`` is kept on the staging name for writers that pick a format by extension (e.g.
  ``np.savez`` adds ``.npz`` unless the name ends with it). Concurrent writers of one path never
  expose a half-written file to readers: each renames its own complete copy. ``overwrite=False``
  refuses an existing ``path``; an input is never replaced.
  """
  path = check_output(path, overwrite=overwrite, inputs=inputs, kind="file")
  clean_stale(path)
  tmp = _make_staging(path, folder=False, suffix=suffix)
  try:
    yield tmp
    raise_if_signalled()
    with _critical():
      check_output(path, overwrite=overwrite, inputs=inputs, kind="file")
      os.replace(tmp, path)
  finally:
    _drop_staging(tmp)


def append_line(path, text: str) -> bool:
  """Append ``text`` and a newline to the file ``path`` (created if needed) in one ``write`` to a
  descriptor opened for appending: a kill never leaves half of it. A last line cut anyway (a
  power loss mid-write) is ended first, so the new line stands on its own and a reader can skip
  the cut one; returns True when it had to."""
  data = (text.rstrip("\n") + "\n").encode("utf-8")
  fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    torn = False
    if os.fstat(fd).st_size:
      with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        torn = f.read(1) != b"\n"
    if torn:
      data = b"\n" + data
    written = os.write(fd, data)
    while written < len(data):  # (a regular file takes it whole; be safe on others)
      written += os.write(fd, data[written:])
  finally:
    os.close(fd)
  return torn


@contextlib.contextmanager
def scratch_dir(near):
  """A temporary folder beside ``near`` (renames out of it stay on one disk), removed on exit,
  on an exception and on a signal, named as staging of ``near`` (so a ``kill -9`` leftover is
  cleaned by the next run into the same place)."""
  near = os.path.abspath(os.fspath(near))
  clean_stale(near)
  tmp = _make_staging(near, folder=True)
  try:
    yield tmp
  finally:
    _drop_staging(tmp)
