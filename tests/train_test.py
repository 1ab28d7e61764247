"""The trainer on the tiny PostCam and generated scenes (CPU): learning, camera use, frozen set,
optimizer-state tree, and 8 devices (one process, and 2 processes x 4) against one device."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import postcam_tiny
from postcam_jax import training
from postcam_jax.models.postcam import frozen, trainable
from postcam_jax.training import metrics
from tests.conftest import optimized, readable_tail

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(cache_dir, arg=None, **overrides):
  """The tiny config on 4 small scenes (64x96, 4 cameras, every 4th pair held out), 1 device."""
  config = postcam_tiny.get_config(arg)
  config.data.cache_dir = str(cache_dir)
  config.data.height, config.data.width, config.data.num_scenes = 64, 96, 4
  config.mesh_devices = 1
  config.log_every = 50
  config.checkpoint.every = 1000
  config.update(overrides)
  return config


def shared_cache_dir(tmp_path_factory):
  """One synthetic-data cache for every trainer test of the session, so the scenes of
  ``tiny_config`` are generated once (cached examples are keyed by the data config and written
  atomically; scene directories by seed and scene count, so keep the tests' scene settings
  those of ``tiny_config``)."""
  path = tmp_path_factory.getbasetemp() / "synthetic_tiny"
  path.mkdir(exist_ok=True)
  return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return shared_cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def general_run(cache_dir, tmp_path_factory):
  """Two stages (pose, then joint) on every training pair with fresh noise each step.

  1,000 steps a stage: at 400 + 400 the camera's gain on the held-out loss (about 1 %) is within
  what the run's seed moves it (seeds 0-2 measured: -0.8 % to +1 %); at 1,000 + 1,000 it is
  +0.7 % to +6 % on the same seeds (seed 0, this run: +2.8 %)."""
  config = tiny_config(cache_dir, stage_steps=(1000, 1000))
  config.eval.every = 2000
  config.eval.num_batches = 6  # all 12 held-out pairs
  workdir = tmp_path_factory.mktemp("general")
  with optimized():  # 2,000 steps: running, not compiling
    return config, workdir, training.train_and_evaluate(config, str(workdir))


def step_losses(workdir):
  out = {}
  for record in metrics.read_jsonl(str(workdir)):
    if "train/grad_norm" in record:
      out[record["step"]] = record["train/loss"]
  return [out[s] for s in sorted(out)]


def test_camera_is_used_on_held_out_pairs(general_run):
  _, _, result = general_run
  assert result.step == 2000
  val, zero = result.metrics["val/loss"], result.metrics["val/loss_zero_camera"]
  assert np.isfinite(val) and val < zero, (val, zero)


def test_frozen_unchanged_and_optimizer_state_only_for_trainable(general_run, xla_optimized):
  config, _, result = general_run
  cfg = training.model_config(config)
  fresh, _ = training.create_model(config, cfg, training.make_run_mesh(config))
  before = nnx.to_flat_state(nnx.state(fresh, frozen))
  after = dict(nnx.to_flat_state(nnx.state(result.model, frozen)))
  assert len(before) > 0
  for path, var in before:
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(after[path][...]),
                                  err_msg=str(path))
  # The trainable set did move.
  moved = [not np.array_equal(np.asarray(a[...]), np.asarray(b[...])) for (_, a), (_, b) in zip(
      nnx.to_flat_state(nnx.state(fresh, trainable)),
      nnx.to_flat_state(nnx.state(result.model, trainable)))]
  assert any(moved)
  # Every optimizer array mirrors a trainable parameter; every trainable parameter has its moments.
  trainable_paths = {path for path, _ in nnx.to_flat_state(nnx.state(result.model, trainable))}
  frozen_paths = {path for path, _ in before}
  opt_paths = [path for path, var in nnx.to_flat_state(nnx.state(result.optimizer))
               if np.ndim(var[...]) > 0]
  mirrored = set()
  for path in opt_paths:
    hits = [t for t in trainable_paths if path[-len(t):] == t]
    assert hits, f"optimizer array {path} mirrors no trainable parameter"
    assert not any(path[-len(f):] == f for f in frozen_paths), path
    mirrored.update(hits)
  assert mirrored == trainable_paths


def test_overfits_a_fixed_batch(cache_dir, tmp_path, xla_optimized):
  """One pair, the same noise and timesteps every step: the loss falls >= 10x."""
  config = tiny_config(cache_dir, "overfit", schedule="pose_only", stage_steps=(400,))
  config.data.num_scenes = 2  # 2 pairs = one batch
  config.optim.lr = 3e-3
  config.loss.fixed_noise = True
  config.eval.every = 0
  training.train_and_evaluate(config, str(tmp_path))
  losses = step_losses(tmp_path)
  assert len(losses) == 400
  assert losses[0] / np.mean(losses[-10:]) >= 10.0, (losses[0], losses[-10:])
  # The same per-step losses are in the TensorBoard event files (read back TF-free).
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"),
                                              size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  logged = {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
            for e in events.Tensors("train/loss")}
  assert len(logged) == 400
  np.testing.assert_allclose([logged[s] for s in sorted(logged)], losses, rtol=1e-6)
  assert {"train/grad_norm", "train/lr", "perf/steps_per_sec"} <= set(events.Tags()["tensors"])


def test_sharded_8_devices_matches_one_device(general_run, tmp_path):
  if jax.device_count() < 8:
    pytest.skip(f"needs 8 (fake CPU) devices, have {jax.device_count()}")
  config, workdir, _ = general_run
  sharded = tiny_config(config.data.cache_dir, schedule="pose_only", stage_steps=(4,),
                        mesh="data=2,fsdp=4", mesh_devices=8)
  sharded.eval.every = 0
  training.train_and_evaluate(sharded, str(tmp_path))
  one = step_losses(workdir)[:4]
  eight = step_losses(tmp_path)
  np.testing.assert_allclose(eight, one, rtol=1e-5)


def test_two_processes_of_4_devices_match_one_device(general_run, tmp_path):
  """launch/local.py: 2 processes x 4 fake CPU devices, mesh data=2,fsdp=4."""
  config, workdir, _ = general_run
  cmd = [sys.executable, os.path.join(REPO, "launch", "local.py"), "-n", "2", "-d", "4", "--",
         "-m", "postcam_jax.train", "--config", "configs/postcam_tiny.py",
         "--workdir", str(tmp_path), f"--config.data.cache_dir={config.data.cache_dir}",
         "--config.data.height=64", "--config.data.width=96", "--config.data.num_scenes=4",
         "--config.schedule=pose_only", "--config.stage_steps=(4,)",
         "--config.mesh=data=2,fsdp=4", "--config.eval.every=0", "--config.log_every=1",
         "--config.checkpoint.every=1000"]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
  assert done.returncode == 0, readable_tail(done.stdout + done.stderr)
  np.testing.assert_allclose(step_losses(tmp_path), step_losses(workdir)[:4], rtol=1e-5)
