"""The trainer's state across meshes, micro-batches and NaNs, on the tiny PostCam (CPU).

One 1-device reference run (4 steps, checkpoints at 2 and 4) is shared: its step-2 checkpoint is
resumed on an 8-device mesh, a gradient-accumulation run is compared with it, and its logged MFU
is checked against the mesh it ran on. Two diverging runs check the NaN/Inf stop.
"""

import math
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from postcam_jax import parallel, training
from postcam_jax.models.postcam import trainable
from postcam_jax.training import checkpointing, losses, metrics
from tests.train_test import shared_cache_dir, tiny_config

STEPS = 4
PEAK = 1e12  # a made-up per-device peak, so the CPU run logs an MFU


def reference_config(cache_dir, **overrides):
  """4 pose-only steps on 1 device, a checkpoint every 2, every step logged. Clipping is off
  (a huge threshold) so the optimizer moments see the raw averaged gradient."""
  config = tiny_config(cache_dir, schedule="pose_only", stage_steps=(STEPS,), log_every=1,
                       peak_flops_per_device=PEAK)
  config.checkpoint.every = 2
  config.checkpoint.async_save = False
  config.eval.every = 0
  config.optim.grad_clip = 1e6
  config.update(overrides)
  return config


def step_records(workdir) -> dict:
  return {r["step"]: r for r in metrics.read_jsonl(str(workdir)) if "train/grad_norm" in r}


def trainable_arrays(model) -> dict:
  return {path: np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(model,
                                                                                  trainable))}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return shared_cache_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  config = reference_config(cache_dir)
  return config, workdir, training.train_and_evaluate(config, str(workdir))


def test_resume_on_a_different_mesh(reference, tmp_path):
  """The 1-device run's step-2 checkpoint resumed on 8 devices (fsdp=2, tensor=2, sequence=2):
  the parameters come back in the new mesh's shardings, and steps 3-4 give the uninterrupted
  run's losses."""
  if jax.device_count() < 8:
    pytest.skip(f"needs 8 (fake CPU) devices, have {jax.device_count()}")
  config, workdir, _ = reference
  os.makedirs(tmp_path / "checkpoints")
  shutil.copytree(workdir / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
  moved = reference_config(config.data.cache_dir, mesh="fsdp=2,tensor=2,sequence=2",
                           mesh_devices=8)
  mesh = training.make_run_mesh(moved)
  assert mesh.size == 8

  # The restore itself: into a model built on the new mesh, values as saved.
  model, _ = training.create_model(moved, training.model_config(moved), mesh)
  tx, _ = training.make_optimizer(moved)
  optimizer = training.create_optimizer(model, tx, mesh)
  rng = jax.device_put(np.zeros(2, np.uint32), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  target = checkpointing.abstract_like(training.checkpoint_state(model, optimizer, rng, 0))
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), every=2, keep=2)
  restored = ckpt.restore(2, target)
  ckpt.close()
  want = parallel.param_shardings(nnx.state(model, trainable), mesh)
  saved = checkpointing.restore_params(str(workdir / "checkpoints" / "2"),
                                       checkpointing.abstract_like(restored["params"]))
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  flat_got = dict(jax.tree_util.tree_leaves_with_path(restored["params"]))
  flat_saved = dict(jax.tree_util.tree_leaves_with_path(saved))
  assert set(flat_want) == set(flat_got) == set(flat_saved) and flat_want
  for path, sh in flat_want.items():
    arr = flat_got[path]
    assert arr.sharding.is_equivalent_to(sh, arr.ndim), (path, arr.sharding, sh)
    np.testing.assert_array_equal(np.asarray(arr), np.asarray(flat_saved[path]), err_msg=str(path))
  # The new layouts really are split over the 8 devices, not a replicated copy.
  assert any(len(sh.device_set) == 8 and not sh.is_fully_replicated for sh in flat_want.values())
  assert any(a.sharding.shard_shape(a.shape) != a.shape for a in flat_got.values())

  # The trainer resumes there and runs on.
  result = training.train_and_evaluate(moved, str(tmp_path))
  assert result.step == STEPS
  ref, resumed = step_records(workdir), step_records(tmp_path)
  assert sorted(resumed) == [3, 4]
  # Sharded matmuls and reductions sum in another order than on one device, so bitwise equality
  # across meshes is not promised (it may happen); float32 rounding stays far below 1e-5.
  np.testing.assert_allclose([resumed[s]["train/loss"] for s in (3, 4)],
                             [ref[s]["train/loss"] for s in (3, 4)], rtol=1e-5)
  # The loop keeps the declared layouts: the trained parameters are still in them.
  final = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(result.model,
                                                                               trainable))))
  assert set(final) == set(flat_want)
  for path, arr in final.items():
    assert arr.sharding.is_equivalent_to(flat_want[path], arr.ndim), (path, arr.sharding)


def test_gradient_accumulation_equals_the_whole_batch(reference, tmp_path):
  """optim.accum_steps=2 (two micro-batches of 1, summed by a scan inside one jitted step) makes
  the same updates as the reference's batch of 2: micro-batch i draws the noise of example i of
  the whole batch, and the step averages the two gradients before AdamW."""
  config, _, whole = reference
  accum = reference_config(config.data.cache_dir)
  accum.optim.accum_steps = 2
  result = training.train_and_evaluate(accum, str(tmp_path))
  ref, acc = step_records(reference[1]), step_records(tmp_path)
  assert sorted(acc) == list(range(1, STEPS + 1))
  # The loss of a step is the mean of its micro-batch losses: the whole batch's mean, summed in
  # another order (float32 rounding, ~1e-7 relative).
  np.testing.assert_allclose([acc[s]["train/loss"] for s in acc],
                             [ref[s]["train/loss"] for s in acc], rtol=1e-5)
  inner = result.optimizer.opt_state
  assert int(result.optimizer.step[...]) == STEPS  # one optimizer update per step
  # Adam's moments: the averaged gradients (mu) and squares (nu) of the whole batch. Each element
  # is a sum over examples whose float32 rounding is relative to the summands' size, not the
  # (possibly cancelling) sum's, so the tolerance is relative to each moment's largest element.
  a_leaves = jax.tree.leaves(whole.optimizer.opt_state)
  b_leaves = jax.tree.leaves(inner)
  assert len(a_leaves) == len(b_leaves)
  for a, b in zip(a_leaves, b_leaves):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind != "f":
      np.testing.assert_array_equal(b, a)  # step counts
      continue
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
  # Parameters: Adam moves an element by at most lr per step (|m/sqrt(v)| <= 1), so the runs'
  # parameters may differ by the float32 rounding of those moves; bound it by 1e-3 of the
  # learning rate summed over the steps (a sign flip or a different gradient moves ~lr).
  _, schedule = training.make_optimizer(accum)
  bound = 1e-3 * sum(float(schedule(s)) for s in range(STEPS))
  a_params, b_params = trainable_arrays(whole.model), trainable_arrays(result.model)
  for path, a in a_params.items():
    np.testing.assert_allclose(b_params[path], a, rtol=0, atol=bound, err_msg=str(path))


def _own_equations(closed_jaxpr):
  """The equations of a jitted function's own jaxpr (the pjit wrapper opened)."""
  jaxpr = closed_jaxpr.jaxpr
  while len(jaxpr.eqns) == 1 and "jaxpr" in jaxpr.eqns[0].params:
    jaxpr = jaxpr.eqns[0].params["jaxpr"].jaxpr
  return jaxpr.eqns


def test_accumulation_is_one_step_with_one_finiteness_check(reference):
  """The accumulated step is one traced function over the 2 stacked micro-batches: one scan sums
  their gradients, and the NaN/Inf check of the updated state (one is_finite per state array)
  sits after it, once per step, exactly as in the step without accumulation."""
  config, _, _ = reference
  mesh = training.make_run_mesh(config)
  checks, scans = {}, {}
  for accum in (1, 2):
    cfg = reference_config(config.data.cache_dir)
    cfg.optim.accum_steps = accum
    graphdef, inputs = training.abstract_train_inputs(cfg, mesh, (3, 16, 24, 16))
    step = training.make_train_step(graphdef, losses.LossConfig(), camera=True, render=False,
                                    accum_steps=accum)
    if accum == 2:
      assert inputs[-1]["target_latent"].shape == (2, 1, 3, 16, 24, 16)
    with jax.set_mesh(mesh):
      eqns = _own_equations(jax.make_jaxpr(step)(*inputs))
    checks[accum] = sum(e.primitive.name == "is_finite" for e in eqns)
    stacked = (2, 1, 3, 16, 24, 16)  # the micro-batches' latents, scanned over
    scans[accum] = [e for e in eqns if e.primitive.name == "scan"
                    and any(getattr(v.aval, "shape", None) == stacked for v in e.invars)]
  assert checks[1] == checks[2] > 0, checks
  assert not scans[1] and len(scans[2]) == 1 and scans[2][0].params["length"] == 2
  body = scans[2][0].params["jaxpr"].jaxpr.eqns
  assert not any(e.primitive.name == "is_finite" for e in body)


def test_mfu_is_over_the_runs_mesh_not_every_device(reference):
  """The reference ran on a 1-device mesh of the 8 devices: its MFU is model FLOP/s over one
  device's peak."""
  _, workdir, _ = reference
  logged = [r for r in metrics.read_jsonl(str(workdir)) if "perf/mfu" in r]
  assert logged
  for r in logged:
    want = r["perf/model_tflops_per_sec"] * 1e12 / (PEAK * 1)
    assert math.isclose(r["perf/mfu"], want, rel_tol=1e-9), (r, want)


def checkpoint_steps(workdir) -> list[int]:
  directory = os.path.join(str(workdir), "checkpoints")
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def saved_params(workdir, step, config) -> dict:
  mesh = training.make_run_mesh(config)
  model, _ = training.create_model(config, training.model_config(config), mesh)
  target = checkpointing.abstract_like(nnx.to_pure_dict(nnx.state(model, trainable)))
  return checkpointing.restore_params(os.path.join(str(workdir), "checkpoints", str(step)),
                                      target)


def test_diverging_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(cache_dir,
                                                                             tmp_path):
  """lr 1e30 blows the parameters up after one step: the next loss is NaN. The run raises
  FloatingPointError naming that step, writes no metric or checkpoint from it on, and the last
  checkpoint on disk is the step before, finite."""
  config = reference_config(cache_dir, stage_steps=(6,))
  config.checkpoint.every = 1
  config.optim.lr, config.optim.warmup_steps = 1e30, 0
  with pytest.raises(FloatingPointError, match=r"at step (\d+): training stopped") as err:
    training.train_and_evaluate(config, str(tmp_path))
  bad = int(str(err.value).split(" at step ")[1].split(":")[0])
  assert 1 < bad <= 6
  assert not math.isfinite(float(str(err.value).split("loss is ")[1].split(" ")[0]))
  assert max(step_records(tmp_path)) == bad - 1
  assert checkpoint_steps(tmp_path)[-1] == bad - 1
  assert f"latest checkpoint: step {bad - 1}" in str(err.value)
  for path, value in jax.tree_util.tree_leaves_with_path(
      saved_params(tmp_path, bad - 1, config)):
    assert np.all(np.isfinite(np.asarray(value))), path


def test_a_finite_loss_with_a_non_finite_update_is_never_checkpointed(cache_dir, tmp_path):
  """optim.eps=0: parameters with exactly zero gradient (the render keys/values in the pose-only
  stage, among others) become NaN through Adam's 0 / (sqrt(0) + 0), while step 1's loss and
  gradient norm (computed before the update) are finite. A check of the loss alone would save
  that NaN state as checkpoint 1 and only stop at step 2; the run must stop at step 1, before
  its checkpoint."""
  config = reference_config(cache_dir, stage_steps=(3,))
  config.checkpoint.every = 1
  config.optim.eps = 0.0
  with pytest.raises(FloatingPointError,
                     match=r"the update of step 1 left NaN/Inf in the trainable parameters"):
    training.train_and_evaluate(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == []
  assert step_records(tmp_path) == {}
