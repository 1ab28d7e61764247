"""The command lines and the public API as a user meets them outside the repository: ``--help``
of the absl entry points that read a ``configs/`` file (``train``, ``aot``, ``demo``) explains the
command and its flags; a config file loads from any working directory (its ``from configs import
common`` resolves through the installed package); ``import postcam_jax`` loads its API on first
use, so ``python -m`` of a module the API reaches runs without runpy's double-import warning."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(args, cwd) -> subprocess.CompletedProcess:
  # No PYTHONPATH: only what `make install` installed is importable, as for a user.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def run_module(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
  return _run(["-m", module, *args], cwd)


def run_module_code(code: str, cwd) -> subprocess.CompletedProcess:
  return _run(["-c", code], cwd)


@pytest.mark.parametrize("module,usage,flag_names", [
    ("postcam_jax.train", "python -m postcam_jax.train --config configs/X.py",
     ("--config", "--workdir", "--coordinator", "--num_processes", "--process_id")),
    ("postcam_jax.aot", "python -m postcam_jax.aot --config",
     ("--config", "--topology", "--mesh", "--step", "--sweep", "--out")),
    ("postcam_jax.demo", "python -m postcam_jax.demo --workdir",
     ("--config", "--train", "--checkpoint", "--sample_steps", "--depth_model")),
])
def test_help_lists_the_flags_from_any_directory(tmp_path, module, usage, flag_names):
  proc = run_module(module, "--help", cwd=tmp_path)
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert usage in proc.stdout
  for name in flag_names:
    assert f"  {name}" in proc.stdout or f"  --[no]{name[2:]}" in proc.stdout, (name, proc.stdout)
  # absl's --help exits 1 (its own convention); the planner's own parser exits 0
  assert proc.returncode == (0 if module == "postcam_jax.aot" else 1), proc.stderr[-2000:]


def test_a_bad_demo_flag_is_one_line(tmp_path):
  proc = run_module("postcam_jax.demo", "--sample_steps=many", cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("error: flag --sample_steps=many"), \
      proc.stderr[-2000:]
  assert "FATAL" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_trainer_loads_a_config_file_from_any_directory(tmp_path):
  """An absolute config path from elsewhere gets as far as checking the workdir: the config
  (which imports configs.common) loaded, and the one-line error is the workdir's."""
  workdir = tmp_path / "a_file"
  workdir.write_text("not a folder")
  proc = run_module("postcam_jax.train", f"--config={REPO}/configs/postcam_tiny.py",
                    f"--workdir={workdir}", cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and str(workdir) in error[0], proc.stderr[-2000:]


def test_the_public_api_loads_on_first_use(tmp_path):
  probe = """
import importlib, sys
import postcam_jax
assert [m for m in sys.modules if m.startswith("postcam_jax.")] == [], "import loaded submodules"
for name, module in postcam_jax._API.items():
  assert getattr(postcam_jax, name) is getattr(importlib.import_module(module), name), name
from postcam_jax import load_postcam, train_and_evaluate  # the from-import form too
assert set(postcam_jax.__all__) <= set(dir(postcam_jax))
try:
  postcam_jax.load_everything
except AttributeError as e:
  print("refused:", e)
"""
  proc = run_module_code(probe, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "refused: module 'postcam_jax' has no attribute 'load_everything'" in proc.stdout


def test_python_m_of_a_module_the_api_reaches_runs_it_once(tmp_path):
  # data.synthetic is imported by the trainer's data path, which the API names
  proc = run_module("postcam_jax.data.synthetic", "--help", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "RuntimeWarning" not in proc.stderr, proc.stderr
  assert proc.stdout.startswith("usage: python -m postcam_jax.data.synthetic")
