"""The one atomic-output helper (postcam_jax.core.atomic): what --overwrite may replace, staging
removed on an exception, SIGTERM and SIGINT (real subprocesses), stale staging of a ``kill -9``
cleaned by the next run, and the shared one-line error formatting (postcam_jax.core.cli)."""

import json
import os
import signal
import subprocess
import sys

import pytest

from postcam_jax.core import atomic, cli
from tests.conftest import REPO

HOST = atomic._HOST  # pylint: disable=protected-access (staging names of other processes)

ATOMIC_PY = os.path.join(REPO, "postcam_jax", "core", "atomic.py")
# A child process that stages an output and then waits: core.atomic imports nothing of the
# project, so it is loaded from its file (no JAX start-up; the test stays fast).
# It first takes the signal settings of a command started from a shell's foreground: a child
# inherits an ignored SIGINT and a blocked mask from its parent, and once (a full suite, the
# SIGINT-file case) the child of an xdist worker slept through its SIGINT while the worker's
# other cases passed.
CHILD = r"""
import importlib.util, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
spec = importlib.util.spec_from_file_location("postcam_atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
kind, out = sys.argv[2], sys.argv[3]
contexts = {"folder": lambda: atomic.AtomicDirectory(out), "files": lambda: atomic.AtomicFiles(out),
            "file": lambda: atomic.atomic_file(out), "scratch": lambda: atomic.scratch_dir(out)}
with contexts[kind]() as tmp:
  path = tmp if kind == "file" else os.path.join(tmp, "a.txt")
  with open(path, "w") as f:
    f.write("half")
  print("staged", flush=True)
  if len(sys.argv) > 4:  # a signal during a rename or removal waits for it
    with atomic._critical():
      os.kill(os.getpid(), int(sys.argv[4]))
      time.sleep(0.3)
      open(out + ".finished", "w").close()
  time.sleep(120)
"""
DEADLINE = 120  # seconds; the machine may be loaded


def start_child(kind, out, *extra):
  return subprocess.Popen([sys.executable, "-c", CHILD, ATOMIC_PY, kind, str(out), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def staging_of(out) -> list[str]:
  parent, base = os.path.split(str(out))
  return [n for n in os.listdir(parent) if n.startswith(f".{base}.")]


def wait_for_staging(proc, out):
  """Until the child has written into its staging path (it says so)."""
  line = proc.stdout.readline()
  if line.strip() != "staged":
    _, err = proc.communicate(timeout=DEADLINE)
    raise AssertionError(f"the child never staged its output:\n{err}")
  assert staging_of(out)


def dead_pid() -> int:
  """The id of a process that has exited."""
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


@pytest.mark.parametrize("kind", ["folder", "files", "file", "scratch"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_removes_the_staging_and_publishes_nothing(tmp_path, kind, sig):
  out = tmp_path / "out"
  proc = start_child(kind, out)
  wait_for_staging(proc, out)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=DEADLINE)
  # SIGTERM: Terminated (SystemExit 143); SIGINT: KeyboardInterrupt, which Python ends with the
  # signal itself. Either way after the staging was removed.
  assert proc.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGINT), err
  assert os.listdir(tmp_path) == [], "staging or output left behind"


class SignalInDel:
  """Raises ``sig`` while Python finalises it: the handler's exception is raised inside
  ``__del__``, where Python cannot raise it and goes on, as in a garbage-collection callback (CI
  saw a Ctrl-C lost in JAX's that way, and "Exception ignored ... Traceback" printed)."""

  def __init__(self, sig):
    self.sig = sig

  def __del__(self):
    signal.raise_signal(self.sig)


class RaisesInDel:

  def __del__(self):
    raise ValueError("not ours")


@pytest.mark.parametrize("kind", ["folder", "files", "file"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_whose_exception_python_dropped_still_stops_the_commit(tmp_path, monkeypatch,
                                                                        kind, sig):
  dropped = []
  collect = lambda u: dropped.append(u.exc_type)  # noqa: E731 (Python's hook, for the test)
  monkeypatch.setattr(sys, "unraisablehook", collect)
  out = tmp_path / "out"
  contexts = {"folder": lambda: atomic.AtomicDirectory(out),
              "files": lambda: atomic.AtomicFiles(out), "file": lambda: atomic.atomic_file(out)}
  expected = KeyboardInterrupt if sig == signal.SIGINT else atomic.Terminated
  went_on = False
  with pytest.raises(expected):
    with contexts[kind]() as tmp:
      with open(tmp if kind == "file" else os.path.join(tmp, "a.txt"), "w") as f:
        f.write("whole, but stopped")
      RaisesInDel()  # someone else's dropped exception still reaches Python's hook
      SignalInDel(sig)  # finalised at once (no reference kept)
      went_on = True
  # The handler's exception was dropped (the block went on) without a printed traceback: our
  # hook took it, and Python's is back.
  assert went_on and dropped == [ValueError] and sys.unraisablehook is collect
  assert os.listdir(tmp_path) == [], "published or staging left behind"
  with contexts[kind]() as tmp:  # the signal was answered: the next output commits
    with open(tmp if kind == "file" else os.path.join(tmp, "a.txt"), "w") as f:
      f.write("next")
  assert os.path.exists(out)


def test_a_signal_as_the_staging_appears_waits_for_its_registration(tmp_path, monkeypatch):
  """Ctrl-C right after the staging folder is created (the sampler's signal test watches for
  that folder) is raised once the folder is registered, so it is removed: the handler is in
  place before the folder exists."""
  mkdtemp = atomic.tempfile.mkdtemp

  def created_then_signalled(*args, **kwargs):
    path = mkdtemp(*args, **kwargs)
    if ".partial-" in os.path.basename(path):  # the staging folder (not the writability probe)
      signal.raise_signal(signal.SIGINT)
    return path

  monkeypatch.setattr(atomic.tempfile, "mkdtemp", created_then_signalled)
  with pytest.raises(KeyboardInterrupt):
    with atomic.AtomicDirectory(tmp_path / "out"):
      pass
  assert os.listdir(tmp_path) == [] and not atomic.active_staging()


def test_a_signal_during_a_rename_waits_for_it(tmp_path):
  out = tmp_path / "out"
  proc = start_child("folder", out, str(int(signal.SIGTERM)))
  _, err = proc.communicate(timeout=DEADLINE)
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert os.listdir(tmp_path) == ["out.finished"]  # the block ran to its end, then it stopped


def test_kill_9_leftovers_are_cleaned_by_the_next_run(tmp_path, capsys):
  out = tmp_path / "out"
  proc = start_child("folder", out)
  wait_for_staging(proc, out)
  proc.kill()
  proc.wait(timeout=DEADLINE)
  (left,) = staging_of(out)
  assert f"-{proc.pid}-" in left
  with atomic.AtomicDirectory(out) as tmp:
    open(os.path.join(tmp, "b.txt"), "w").close()
  assert sorted(os.listdir(tmp_path)) == ["out"]
  assert sorted(os.listdir(out)) == [atomic.MARKER, "b.txt"]
  assert f"removed {tmp_path / left}, left by an interrupted run (pid {proc.pid})" in (
      capsys.readouterr().err)


def test_a_folder_moved_aside_by_a_killed_run_is_put_back(tmp_path, capsys):
  """A run killed between moving the old output aside and renaming the new one in: the next run
  into the same place restores the old output before anything else."""
  out = tmp_path / "out"
  pid = dead_pid()
  aside = tmp_path / f".out.replaced-{HOST}-{pid}-abcd_123"
  partial = tmp_path / f".out.partial-{HOST}-{pid}-efgh_456"
  aside.mkdir()
  atomic.write_marker(aside)
  (aside / "weights").write_text("the user's model")
  partial.mkdir()
  notes = atomic.clean_stale(out)
  assert sorted(os.listdir(tmp_path)) == ["out"]
  assert (out / "weights").read_text() == "the user's model"
  assert len(notes) == 2 and any(n.startswith(f"put {out} back") for n in notes)
  assert "note: put" in capsys.readouterr().err
  # A running process's staging (this one's parent, say) is left alone.
  alive = tmp_path / f".out.partial-{HOST}-{os.getppid()}-ijkl_789"
  alive.mkdir()
  assert atomic.clean_stale(out) == [] and alive.exists()


def test_overwrite_replaces_only_what_the_project_made(tmp_path):
  out = tmp_path / "out"
  with atomic.AtomicDirectory(out) as tmp:
    open(os.path.join(tmp, "old"), "w").close()
  with pytest.raises(atomic.OutputExistsError, match="exists; pass --overwrite to replace it"):
    atomic.check_output(out)
  with atomic.AtomicDirectory(out, overwrite=True) as tmp:
    open(os.path.join(tmp, "new"), "w").close()
  assert sorted(os.listdir(out)) == [atomic.MARKER, "new"]
  assert sorted(os.listdir(tmp_path)) == ["out"]  # the old folder moved aside, then removed
  # A folder without the marker, or holding an input, is never replaced.
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "photo.jpg").write_text("x")
  with pytest.raises(atomic.OutputError, match="was not made by postcam-jax"):
    with atomic.AtomicDirectory(tmp_path / "mine", overwrite=True):
      pass
  with pytest.raises(atomic.OutputError, match="holds the input .*new, which --overwrite would"):
    atomic.check_output(out, overwrite=True, inputs=[out / "new"])
  with pytest.raises(atomic.OutputError, match="is the input"):
    atomic.check_output(out, overwrite=True, inputs=[out])
  assert (tmp_path / "mine" / "photo.jpg").exists() and (out / "new").exists()


def test_output_paths_that_cannot_work(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(atomic.OutputError, match="is a file, not a folder"):
    atomic.check_output(tmp_path / "file", overwrite=True)
  with pytest.raises(atomic.OutputError, match=r"lies under .*file, which is a file"):
    atomic.check_output(tmp_path / "file" / "sub" / "out")
  with pytest.raises(atomic.OutputError, match="is a folder, not a file"):
    atomic.check_output(tmp_path, kind="file", overwrite=True)
  (tmp_path / "link").symlink_to(tmp_path / "file")
  with pytest.raises(atomic.OutputError, match="symbolic link"):
    atomic.check_output(tmp_path / "link", overwrite=True)
  # Unwritable: /sys refuses new entries even to root; elsewhere a read-only folder.
  if os.geteuid() == 0 and os.path.isdir("/sys"):
    target = "/sys/postcam-jax-test/out"
  else:
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    target = tmp_path / "ro" / "out"
  with pytest.raises(atomic.OutputError, match="cannot write in"):
    atomic.check_output(target)
  with pytest.raises(atomic.OutputError, match="are both"):
    atomic.check_files([tmp_path / "a", tmp_path / "b" / ".." / "a"])
  assert sorted(os.listdir(tmp_path)) in (["file", "link"], ["file", "link", "ro"])


def test_files_join_a_folder_and_an_exception_publishes_none(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "theirs.txt").write_text("kept")
  with atomic.AtomicFiles(out) as tmp:
    os.makedirs(os.path.join(tmp, "sub"))
    open(os.path.join(tmp, "sub", "a.txt"), "w").close()
  with pytest.raises(RuntimeError, match="boom"):
    with atomic.AtomicFiles(out) as tmp:
      open(os.path.join(tmp, "b.txt"), "w").close()
      raise RuntimeError("boom")
  assert sorted(os.listdir(out)) == ["sub", "theirs.txt"]
  assert sorted(os.listdir(tmp_path)) == ["out"]
  # A file of the same name is replaced only with overwrite, never an input.
  with pytest.raises(atomic.OutputExistsError):
    with atomic.AtomicFiles(out) as tmp:
      open(os.path.join(tmp, "theirs.txt"), "w").close()
  with pytest.raises(atomic.OutputError, match="is the input"):
    with atomic.AtomicFiles(out, overwrite=True, inputs=[out / "theirs.txt"]) as tmp:
      open(os.path.join(tmp, "theirs.txt"), "w").close()
  assert (out / "theirs.txt").read_text() == "kept"
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_append_line_writes_whole_lines_and_ends_a_cut_one(tmp_path):
  log = tmp_path / "log.jsonl"
  assert not atomic.append_line(log, '{"a": 1}')
  assert not atomic.append_line(log, '{"a": 2}\n')
  with open(log, "a") as f:
    f.write('{"a": 3, "b')  # a crash in the middle of a record
  assert atomic.append_line(log, '{"a": 4}')
  assert log.read_text().splitlines() == ['{"a": 1}', '{"a": 2}', '{"a": 3, "b', '{"a": 4}']


def test_one_line_errors():
  problems = ValueError("cannot convert x: 2 problem(s)\n  - missing key 'a'\n  - extra 'b'")
  assert cli.one_line(problems) == "cannot convert x: 2 problem(s): missing key 'a'; extra 'b'"
  config = os.path.join(REPO, "configs", "postcam_tiny.py")
  argv = ["prog", f"--config={config}", "--config.height=3"]
  assert cli.config_override_problem(argv) == (
      f"--config.height: {config} has no field 'height' (overrides change the config's fields, "
      f"they do not add any); did you mean --config.data.height?")
  typo = cli.config_override_problem(["prog", "--config", config, "--config.optim.lrr=1"])
  assert "no field 'optim.lrr'" in typo and "--config.optim.lr?" in typo
  assert cli.config_override_problem(["prog", f"--config={config}", "--config.seed=3"]) is None


def test_the_marker_says_who_made_the_folder(tmp_path):
  with atomic.AtomicDirectory(tmp_path / "out") as tmp:
    assert os.listdir(tmp) == [atomic.MARKER]
  with open(tmp_path / "out" / atomic.MARKER) as f:
    assert json.load(f)["made_by"] == "postcam-jax"
