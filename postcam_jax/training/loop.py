"""Flow-matching training of PostCam: ``train_and_evaluate(config, workdir)``.

Command line (absl, ``postcam_jax.training.cli``)::

  python -m postcam_jax.train --config configs/postcam_1p3b.py --workdir DIR [--config.x=y]

The loop follows big_vision's order: mesh -> data -> abstract model -> sharded init/restore ->
optimizer -> resume -> loop. Only the trainable set (``models.postcam.trainable``) gets gradients
and AdamW state; the frozen backbone is an input of the jitted step, never differentiated, never
saved by the trainer. Stages (``STAGE_KINDS``) change the model's inputs, not its parameters: a
run walks ``config.schedule`` with ``config.stage_steps``; ``config.init_from`` starts the
trainable set from another run's checkpoint (e.g. stage 2 on its own after a stage-1 run).

The pieces live beside this module: ``stages`` (the schedule), ``state`` (mesh, model, optimizer,
checkpoint state), ``step`` (the jitted steps; the planner lowers the same), ``evaluator``,
``checkpointing``, ``metrics`` and ``data``.
"""

import dataclasses
import math
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from postcam_jax.models import flops
from postcam_jax.models.postcam import PostCamModel, trainable
from postcam_jax.training import checkpointing, losses, metrics, resume
from postcam_jax.training import data as train_data
from postcam_jax.training.camera_eval import CameraEvaluator
from postcam_jax.training.evaluator import Evaluator
from postcam_jax.training.stages import stage_at, stages_of
from postcam_jax.training.state import (
  backbone_of,
  batch_sharding,
  check_batch_camera,
  checkpoint_state,
  create_model,
  create_optimizer,
  global_batch,
  init_trainable_from,
  make_optimizer,
  make_run_mesh,
  model_config,
  replicated,
  restore_state_into,
  split_train_state,
)
from postcam_jax.training.step import make_train_step, stacked_batch_sharding


@dataclasses.dataclass
class TrainResult:
  """What a finished (or preempted) run leaves in memory: last metrics and the live model."""
  metrics: dict
  step: int
  model: PostCamModel
  optimizer: nnx.Optimizer
  preempted: bool = False


def step_record(step: int, fetched: dict) -> dict:
  """One optimizer step's host scalars from its fetched metrics (the step averages the loss over
  its micro-batches and checks the updated state once)."""
  return {"step": step, "loss": float(fetched["loss"]), "grad_norm": float(fetched["grad_norm"]),
          "state_finite": bool(fetched["state_finite"])}


def first_non_finite(records: list) -> int | None:
  """Index of the first record whose loss or gradient norm is NaN/Inf, or whose update left a
  NaN/Inf in the parameters or optimizer state; None if every step is good."""
  for i, r in enumerate(records):
    if not (math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["state_finite"]):
      return i
  return None


def check_finite(records: list, latest_good: int | None):
  """Raise FloatingPointError naming the first bad step of ``records`` (see ``step_record``).

  The loop calls this on every step since its last check *before* it saves, so a checkpoint
  never holds a state that a NaN/Inf touched; the last checkpoint on disk is the last good one.
  """
  bad = first_non_finite(records)
  if bad is None:
    return
  r = records[bad]
  if math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]):
    what = (f"the update of step {r['step']} left NaN/Inf in the trainable parameters or the "
            f"optimizer state (loss {r['loss']:.6g}, gradient norm {r['grad_norm']:.6g})")
  else:
    what = f"loss is {r['loss']} and gradient norm {r['grad_norm']} at step {r['step']}"
  raise FloatingPointError(
      f"{what}: training stopped. Nothing from step {r['step']} on was saved (latest "
      f"checkpoint: step {latest_good}); lower optim.lr, check optim.eps and the data, or "
      f"resume from that checkpoint")


def train_and_evaluate(config, workdir: str) -> TrainResult:
  """Train per ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

  Returns the last metrics and the live model/optimizer. A NaN/Inf loss or gradient norm, or an
  update that leaves a NaN/Inf in the trainable parameters or optimizer state, raises
  FloatingPointError naming the step, before any later save (the last checkpoint is the last
  good state). The checkpoint may come from another mesh: it is read into this run's shardings.
  SIGTERM saves the current step and returns with ``preempted=True``.
  """
  workdir = os.path.abspath(workdir)
  backbone_of(config)  # fail before any data or compile work when a required backbone is unset
  cfg = model_config(config)
  resume.check_resume(workdir, config, cfg)  # a workdir's run continues only with its own model
  loss_cfg = losses.LossConfig.from_config(config.loss)
  stages = stages_of(config)
  if loss_cfg.condition_dropout and not all(s.camera for s in stages):  # before any data work
    raise ValueError(f"loss.condition_dropout zeroes the camera, but schedule "
                     f"{config.schedule!r} has a render-only stage; use a schedule whose stages "
                     f"feed the camera, or loss.condition_dropout=0")
  total = stages[-1].end
  accum = int(config.optim.accum_steps)
  if accum < 1 or config.data.batch_size % accum:
    raise ValueError(f"data.batch_size {config.data.batch_size} must be a positive multiple of "
                     f"optim.accum_steps {accum}")
  micro = config.data.batch_size // accum
  data_camera = train_data.camera_input(config)
  if data_camera != ("plucker" if cfg.plucker else "rt"):  # one rule for data and model
    raise ValueError(f"the data would build the {data_camera!r} camera for a model with "
                     f"camera_input={cfg.camera_input!r}, variant={cfg.variant!r}")

  # -- mesh ------------------------------------------------------------------------------------
  mesh = make_run_mesh(config)
  logging.info("mesh %s on %d of %d device(s), %d process(es)", dict(mesh.shape), mesh.size,
               jax.device_count(), jax.process_count())
  bshard = batch_sharding(mesh, micro)
  step_batch_shard = stacked_batch_sharding(bshard) if accum > 1 else bshard

  # -- data ------------------------------------------------------------------------------------
  pi, pc = jax.process_index(), jax.process_count()
  train_iter = iter(train_data.train_dataset(config, pi, pc, micro))
  eval_sets = train_data.eval_batches(config, pi, pc, micro) if config.eval.every > 0 else []
  camera_eval = CameraEvaluator.from_config(config, mesh)  # eval.camera; None when off

  # -- abstract model -> sharded init (or the backbone restored into its shards) -------------
  model, backbone_ref = create_model(config, cfg, mesh)
  if pi == 0:
    for line in metrics.parameter_overview(model, trainable).splitlines():
      logging.info("%s", line)
  if config.init_from:
    init_trainable_from(model, config.init_from)

  # -- optimizer -----------------------------------------------------------------------------
  tx, schedule = make_optimizer(config)
  optimizer = create_optimizer(model, tx, mesh)
  rng = jax.device_put(jax.random.key_data(jax.random.key(config.seed)), replicated(mesh))

  # -- resume --------------------------------------------------------------------------------
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    every=config.checkpoint.every, keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
  step = ckpt.latest_step() or 0
  if step:
    target = checkpointing.abstract_like(checkpoint_state(model, optimizer, rng, 0))
    restored = ckpt.restore(step, target, train_iter)
    restore_state_into(model, optimizer, restored)
    rng = restored["rng"]
    logging.info("resumed from %s at step %d", ckpt.directory, step)
  meta = {"config": config.to_json(), "model": cfg.to_dict(), **backbone_ref}

  with jax.set_mesh(mesh):
    # -- loop ----------------------------------------------------------------------------------
    graphdef, params, frozen_params, opt = split_train_state(model, optimizer)
    del model, optimizer  # the loop owns (and donates) the state from here on
    # The state's own (declared) layouts, pinned for the step's inputs and outputs.
    step_shardings = (*(jax.tree.map(lambda x: x.sharding, s) for s in (params, opt,
                                                                        frozen_params)),
                      rng.sharding, step_batch_shard)
    writer = metrics.MetricWriter(workdir)
    evaluator = Evaluator(config, graphdef, eval_sets, bshard, mesh) if eval_sets else None
    steps_by_kind = {}
    watcher = checkpointing.PreemptionWatcher()
    progress = metrics.Progress(total, step)
    pending, last, preempted, shapes = [], {}, False, None
    try:
      while step < total:
        stage = stage_at(stages, step)
        if stage.kind not in steps_by_kind:
          logging.info("stage %s: steps %d..%d (camera=%s, render=%s)", stage.kind, stage.start,
                       stage.end, stage.camera, stage.render)
          steps_by_kind[stage.kind] = make_train_step(
              graphdef, loss_cfg, camera=stage.camera, render=stage.render,
              fixed_noise=bool(config.loss.get("fixed_noise", False)), shardings=step_shardings,
              accum_steps=accum)
        micro_batches = [next(train_iter) for _ in range(accum)]
        batch = micro_batches[0]
        if shapes is None:
          check_batch_camera(cfg, batch)
        shapes = shapes or (batch["target_latent"].shape[1:4],
                            batch["render_latent"].shape[1:4] if "render_latent" in batch
                            else None)
        if accum > 1:  # one step over all micro-batches, stacked (make_train_step)
          batch = {k: np.stack([b[k] for b in micro_batches]) for k in batch}
        placed = global_batch(batch, step_batch_shard)  # the one (explicit) host-to-device copy
        with jax.transfer_guard("disallow"):  # nothing else may move implicitly
          params, opt, m = steps_by_kind[stage.kind](params, opt, frozen_params, rng, placed)
        step += 1
        pending.append((step, m))
        is_log = step % config.log_every == 0 or step == total
        is_ckpt = step % config.checkpoint.every == 0 or step == total
        preempted = watcher.should_stop(step)
        if not (is_log or is_ckpt or preempted):
          continue
        # Losses reach the host only here (one transfer for every pending step), so the steps in
        # between stay asynchronous.
        fetched = jax.device_get([m for _, m in pending])
        records = [step_record(s, f) for (s, _), f in zip(pending, fetched)]
        pending = []
        bad = first_non_finite(records)
        for r in records[:bad]:  # the good steps are recorded, up to a bad one
          writer.write_scalars(r["step"], {"train/loss": r["loss"],
                                           "train/grad_norm": r["grad_norm"]}, console=False)
        if bad is not None:
          writer.flush()
        # Before any save: a NaN/Inf anywhere since the last check stops the run here.
        check_finite(records, ckpt.latest_step())
        per_step = [(r["step"], r["loss"]) for r in records]
        progress.update(step, {"loss": per_step[-1][1]})
        if is_log:
          last = log_summary(config, cfg, writer, progress, stage, step, per_step, schedule,
                             shapes, mesh)
        if is_ckpt or preempted:
          model, optimizer = nnx.merge(graphdef, params, frozen_params, opt)
          ckpt.save(step, checkpoint_state(model, optimizer, rng, step), train_iter,
                    dict(meta, stage=stage.kind), force=preempted or step == total)
        if evaluator is not None and (step % config.eval.every == 0 or step == total):
          val = evaluator(stage, params, opt, frozen_params)
          writer.write_scalars(step, val)
          last.update(val)
        if camera_eval is not None and camera_eval.due(step, total):
          val = camera_eval(stage, nnx.merge(graphdef, params, frozen_params, opt)[0])
          writer.write_scalars(step, val)
          last.update(val)
        writer.flush()
        if preempted:
          logging.warning("preempted: checkpoint of step %d written; exiting cleanly", step)
          break
    finally:
      ckpt.close()
      writer.close()
      progress.close()
      watcher.restore_handlers()
    model, optimizer = nnx.merge(graphdef, params, frozen_params, opt)
  return TrainResult(last, step, model, optimizer, preempted)


def log_summary(config, cfg, writer, progress, stage, step, per_step, schedule, shapes,
                mesh) -> dict:
  """Console/TensorBoard summary: loss, lr, steps/s, tokens/s, model TFLOP/s and MFU (over the
  peak of the run's mesh, which may be a subset of the devices: ``config.mesh_devices``)."""
  rate = progress.rate(step)
  latent_shape, render_shape = shapes
  render_shape = render_shape if stage.render else None
  batch = config.data.batch_size
  n, m = flops.token_counts(cfg, latent_shape, render_shape)
  flops_step = flops.postcam_train_flops(cfg, batch, latent_shape, render_shape)
  peak = flops.peak_flops(mesh.devices.flat[0], config.get("peak_flops_per_device"))
  scalars = {"train/loss": per_step[-1][1], "train/lr": float(schedule(step - 1)),
             "train/loss_avg": float(np.mean([v for _, v in per_step]))}
  if rate:
    scalars.update({"perf/steps_per_sec": rate, "perf/tokens_per_sec": rate * batch * (2 * n + m),
                    "perf/model_tflops_per_sec": rate * flops_step / 1e12})
    util = metrics.mfu(flops_step, rate, peak, mesh.size)
    if util is not None:
      scalars["perf/mfu"] = util
  writer.write_scalars(step, scalars)
  return scalars
