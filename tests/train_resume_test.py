"""Preemption and resume of the trainer as a subprocess: SIGKILL between checkpoints then restart
gives bitwise the losses of an uninterrupted run; SIGTERM saves the current step and exits 0."""

import os
import signal
import subprocess
import sys
import time

import pytest

from postcam_jax.training import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 900  # per trainer process


def command(workdir, cache_dir, steps):
  # Every step's loss is recorded at each log (log_every only spaces the host syncs): logging every
  # 10 steps keeps the steps asynchronous, the run 2-3x faster than logging each one on 2 cores.
  return [sys.executable, "-m", "postcam_jax.train", "--config", "configs/postcam_tiny.py",
          "--workdir", str(workdir), f"--config.data.cache_dir={cache_dir}",
          "--config.data.height=64", "--config.data.width=96", "--config.mesh_devices=1",
          f"--config.stage_steps=({steps},{3 * steps})", "--config.checkpoint.every=50",
          "--config.log_every=10", "--config.eval.every=0"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  out = dict(os.environ)
  # One compile for every process of the test: the persistent cache is shared.
  out["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
  out["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  out["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  out["JAX_PLATFORMS"] = "cpu"
  return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic")


def last_losses(workdir) -> dict[int, float]:
  """step -> loss, the last record of each step (a resumed run rewrites the redone steps)."""
  out = {}
  for record in metrics.read_jsonl(str(workdir)):
    if "train/grad_norm" in record:
      out[record["step"]] = record["train/loss"]
  return out


def checkpoint_steps(workdir) -> list[int]:
  directory = os.path.join(str(workdir), "checkpoints")
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def run_until(cmd, env, workdir, step, sig):
  """Start ``cmd``; once ``step`` is logged, send ``sig``; return (exit code, last step seen)."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  # Generous: a loaded CI machine ran these 400 steps 7x slower than an idle one (the signal must
  # land before the run ends; how long it takes to get there does not matter).
  deadline = time.time() + TIMEOUT_S
  seen = 0
  while time.time() < deadline and proc.poll() is None:
    steps = last_losses(workdir)
    seen = max(steps) if steps else 0
    if seen >= step:
      proc.send_signal(sig)
      break
    time.sleep(0.05)
  _, err = proc.communicate(timeout=TIMEOUT_S)
  assert seen >= step, f"the run never reached step {step}:\n{err[-3000:]}"
  return proc.returncode, err


def test_sigkill_resume_is_bitwise_and_sigterm_saves(env, cache_dir, tmp_path):
  # stages of 100 and 300 steps, checkpoints every 50: the kills at steps 130 and 70 leave
  # hundreds of steps to run (seconds at the tiny model's speed, over a minute on a loaded machine),
  # so the signal lands before the run ends
  steps = 100
  full = tmp_path / "full"
  done = subprocess.run(command(full, cache_dir, steps), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  assert done.returncode == 0, done.stderr[-3000:]
  reference = last_losses(full)
  assert sorted(reference) == list(range(1, 4 * steps + 1))

  killed = tmp_path / "killed"
  rc, _ = run_until(command(killed, cache_dir, steps), env, killed, 130, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  restored = max(checkpoint_steps(killed))
  assert restored < max(last_losses(killed)), "the kill must fall between checkpoints"
  done = subprocess.run(command(killed, cache_dir, steps), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from" in done.stderr and f"at step {restored}" in done.stderr
  resumed = last_losses(killed)
  after = [s for s in sorted(reference) if s > restored]
  assert [resumed[s] for s in after] == [reference[s] for s in after]  # bitwise

  term = tmp_path / "term"
  rc, err = run_until(command(term, cache_dir, steps), env, term, 70, signal.SIGTERM)
  assert rc == 0, err[-3000:]
  last = max(last_losses(term))
  assert 70 <= last < 4 * steps
  assert max(checkpoint_steps(term)) == last
