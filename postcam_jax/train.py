"""Flow-matching training of PostCam: ``train_and_evaluate(config, workdir)``.

Command line (absl, in ``postcam_jax.main``)::

  python -m postcam_jax.train --config configs/postcam_1p3b.py --workdir DIR [--config.x=y]

The loop follows big_vision's order: mesh -> data -> abstract model -> sharded init/restore ->
optimizer -> resume -> loop. Only the trainable set (``models.postcam.trainable``) gets gradients
and AdamW state; the frozen backbone is an input of the jitted step, never differentiated, never
saved by the trainer. Stages (``STAGE_KINDS``) change the model's inputs, not its parameters: a
run walks ``config.schedule`` with ``config.stage_steps``; ``config.init_from`` starts the
trainable set from another run's checkpoint (e.g. stage 2 on its own after a stage-1 run).

:func:`make_train_step` builds the jitted step the loop runs; ``postcam_jax`` tools that plan or
AOT-compile training lower that same function on abstract inputs (:func:`abstract_train_inputs`).
"""

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from postcam_jax import (cameras, checkpointing, checkpoints, flops, losses, metrics, sharding,
                         train_data)
from postcam_jax.models.postcam import PostCamConfig, PostCamModel, frozen, trainable

# stage kind -> (camera, render) inputs of the model.
STAGE_KINDS = {"pose": (True, False), "joint": (True, True), "render": (False, True)}
SCHEDULES = {
    "two_stage": ("pose", "joint"),      # the paper: 7k pose-only steps, then 10k joint
    "one_stage": ("joint",),             # ablation: joint from step 0
    "render_first": ("render", "joint"),  # ablation: render-only, then joint
    "pose_only": ("pose",),              # ablation: the stage-1 form for the whole run
    "render_only": ("render",),          # ablation: render keys/values only, whole run
}


@dataclasses.dataclass(frozen=True)
class Stage:
  kind: str
  start: int  # first global step (0-based) of the stage
  end: int    # one past its last step

  @property
  def camera(self) -> bool:
    return STAGE_KINDS[self.kind][0]

  @property
  def render(self) -> bool:
    return STAGE_KINDS[self.kind][1]


def stages_of(config) -> list[Stage]:
  """The run's stages from ``config.schedule`` and ``config.stage_steps``."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; choose one of {sorted(SCHEDULES)}")
  kinds = SCHEDULES[config.schedule]
  steps = tuple(config.stage_steps)
  if len(steps) != len(kinds) or any(s < 1 for s in steps):
    raise ValueError(f"schedule {config.schedule!r} has {len(kinds)} stage(s) {kinds}; "
                     f"stage_steps must give as many positive step counts, got {steps}")
  out, start = [], 0
  for kind, n in zip(kinds, steps):
    out.append(Stage(kind, start, start + n))
    start += n
  return out


def stage_at(stages: list[Stage], step: int) -> Stage:
  for stage in stages:
    if stage.start <= step < stage.end:
      return stage
  return stages[-1]


def model_config(config) -> PostCamConfig:
  """``config.model`` (a preset name plus field overrides) -> the typed PostCamConfig."""
  m = dict(config.model)
  preset = m.pop("preset")
  if not hasattr(PostCamConfig, preset):
    raise ValueError(f"unknown model preset {preset!r}; use release_1_3b, release_14b or tiny")
  fields = {f.name for f in dataclasses.fields(PostCamConfig)}
  unknown = sorted(set(m) - fields)
  if unknown:
    raise ValueError(f"config.model has fields PostCamConfig does not know: {unknown}")
  m = {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}
  return getattr(PostCamConfig, preset)(**m)


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clip by global norm -> AdamW on a warmup + constant/cosine schedule (-> MultiSteps)."""
  o = config.optim
  total = sum(config.stage_steps)
  if o.decay == "constant":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1)), optax.constant_schedule(o.lr)],
        [o.warmup_steps])
  elif o.decay == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps,
                                                  max(total, o.warmup_steps + 1),
                                                  end_value=o.lr * o.end_lr_ratio)
  else:
    raise ValueError(f"optim.decay must be 'constant' or 'cosine', got {o.decay!r}")
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                               weight_decay=o.weight_decay))
  if o.accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=o.accum_steps)
  return tx, schedule


# ----------------------------------------------------------------------------------------------
# The jitted steps.


def split_train_state(model, optimizer):
  """(graphdef, trainable params, frozen params, optimizer state) of a model + its optimizer."""
  return nnx.split((model, optimizer), trainable, frozen, ...)


def make_train_step(graphdef, loss_cfg: losses.LossConfig, *, camera: bool, render: bool,
                    fixed_noise: bool = False, shardings=None, accum_steps: int = 1):
  """The jitted micro-step ``(params, opt, frozen, rng, batch) -> (params, opt, metrics)``.

  ``params``/``opt`` are donated. ``rng`` is the run's base key data; the step's key is
  ``fold_in(rng, optimizer updates so far)``, so a resumed run draws the same noise
  (``fixed_noise``: the same timesteps and noise at every step, for overfit checks). With
  ``accum_steps`` > 1 (``optim.accum_steps``, an ``optax.MultiSteps`` optimizer) the batch is one
  of that many micro-batches of an update and gets its rows of the whole batch's draws
  (``losses.draw_noise``): accumulation then computes the update of the whole batch, up to float
  rounding. ``shardings``: the
  (params, opt, frozen, rng, batch) input shardings, and params/opt leave the step in the same
  layouts (the loop passes the state's own, so the parameters keep their declared shardings
  step after step and one executable serves the run); None lets jit follow the arguments' (a
  cached jit per graphdef and stage). The metrics include ``state_finite``: whether the updated
  trainable parameters and optimizer state are free of NaN/Inf (the loop never checkpoints a
  state without).
  """
  if shardings is not None:  # a hashable form, so runs of one process share the compile
    leaves, treedef = jax.tree.flatten(tuple(shardings))
    shardings = (tuple(leaves), treedef)
  return _cached_train_step(graphdef, loss_cfg, camera, render, fixed_noise, int(accum_steps),
                            shardings)


@functools.lru_cache(maxsize=16)
def _cached_train_step(graphdef, loss_cfg, camera, render, fixed_noise, accum_steps,
                       flat_shardings):
  fn = _train_step_fn(graphdef, loss_cfg, camera, render, fixed_noise, accum_steps)
  if flat_shardings is None:
    return jax.jit(fn, donate_argnums=(0, 1))
  shardings = jax.tree.unflatten(flat_shardings[1], flat_shardings[0])
  return jax.jit(fn, donate_argnums=(0, 1), in_shardings=shardings,
                 out_shardings=(shardings[0], shardings[1], None))


def _train_step_fn(graphdef, loss_cfg, camera, render, fixed_noise, accum_steps):
  """The un-jitted step of :func:`make_train_step`."""

  def step(params, opt, frozen_params, rng, batch):
    model, optimizer = nnx.merge(graphdef, params, frozen_params, opt)
    update_count, micro_index = _update_position(optimizer)
    key = jax.random.wrap_key_data(rng)
    if not fixed_noise:
      key = jax.random.fold_in(key, update_count)
    micro = (micro_index, accum_steps) if accum_steps > 1 else None

    def loss_fn(m):
      return losses.flow_matching_loss(m, batch, key, loss_cfg, camera=camera, render=render,
                                       micro=micro)

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trainable), has_aux=True)
    (loss, aux), grads = grad_fn(model)
    optimizer.update(model, grads)
    _, params, _, opt = split_train_state(model, optimizer)
    return params, opt, {"loss": loss, "grad_norm": optax.global_norm(grads),
                         "state_finite": all_finite((params, opt)), **aux}

  return step


def _update_position(optimizer):
  """(optimizer updates applied so far, index of this micro-batch in the accumulated batch)."""
  opt_state = optimizer.opt_state
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.gradient_step[...], opt_state.mini_step[...]
  return optimizer.step[...], 0


def all_finite(tree) -> jax.Array:
  """A scalar bool: every floating-point leaf of ``tree`` (an nnx State or pytree) is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


@functools.lru_cache(maxsize=16)
def make_eval_step(graphdef, sigmas, *, camera: bool, render: bool, zero_camera: bool = False):
  """Jitted ``(params, opt, frozen, key, batch) -> validation losses [len(sigmas)]``."""

  def step(params, opt, frozen_params, key_data, batch):
    model, _ = nnx.merge(graphdef, params, frozen_params, opt)
    return losses.validation_loss(model, batch, jax.random.wrap_key_data(key_data),
                                  tuple(sigmas), camera=camera, render=render,
                                  zero_camera=zero_camera)

  return jax.jit(step)


def abstract_train_inputs(config, mesh, latent_shape, render_shape=None):
  """ShapeDtypeStructs (with shardings) of every input of the train step, nothing allocated:
  what an AOT planner passes to ``make_train_step(...).lower``. Returns (graphdef, inputs). The
  batch's camera is the model's representation (:func:`camera_shape`): [B, 11, 12], or
  [B, N, 24] for a Plucker model with N the target tokens of ``latent_shape``."""
  cfg = model_config(config)
  tx, _ = make_optimizer(config)

  def create():
    model = PostCamModel(cfg, rngs=nnx.Rngs(0))
    return model, nnx.Optimizer(model, tx, wrt=trainable)

  model, optimizer = nnx.eval_shape(create)
  graphdef, params, frozen_params, opt = split_train_state(model, optimizer)
  states = (params, opt, frozen_params)
  abstract = [_abstract(s, mesh) for s in states]
  micro = config.data.batch_size // config.optim.accum_steps
  batch = _abstract_batch(cfg, config, micro, latent_shape, render_shape, mesh)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=_replicated(mesh))
  return graphdef, (*abstract, rng, batch)


def _abstract(state, mesh):
  shard = sharding.param_shardings(state, mesh)
  pure = nnx.to_pure_dict(state)
  leaves = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), pure,
                        shard)
  out = jax.tree.map(lambda v: v, state)
  nnx.replace_by_pure_dict(out, leaves)
  return out


def camera_shape(cfg: PostCamConfig, batch: int, latent_shape) -> tuple[int, int, int]:
  """The batch's ``camera`` shape for the model ``cfg`` and target latents (F, h, w, ...):
  [B, 11, 12], the RT tokens, or, for a Plucker model (``cfg.plucker``), [B, N, 24], one row
  per target token, N = F (h // 2) (w // 2) (``cameras.plucker_tokens``)."""
  if not cfg.plucker:
    return (batch, cameras.NUM_CAMERA_TOKENS, cfg.camera_width)
  f, h, w = (int(v) for v in latent_shape[:3])
  _, ph, pw = cfg.patch_size
  return (batch, f * (h // ph) * (w // pw), cfg.camera_width)


def _abstract_batch(cfg, config, micro, latent_shape, render_shape, mesh):
  bs = batch_sharding(mesh, micro)
  f32 = jnp.float32
  out = {"target_latent": jax.ShapeDtypeStruct((micro, *latent_shape), f32, sharding=bs),
         "source_latent": jax.ShapeDtypeStruct((micro, *latent_shape), f32, sharding=bs),
         "text_embedding": jax.ShapeDtypeStruct((micro, config.data.text_len, cfg.text_dim), f32,
                                                sharding=bs),
         "camera": jax.ShapeDtypeStruct(camera_shape(cfg, micro, latent_shape), f32,
                                        sharding=bs)}
  if render_shape is not None:
    out["render_latent"] = jax.ShapeDtypeStruct((micro, *render_shape), f32, sharding=bs)
  return out


def _replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharding(mesh, batch_size: int | None = None):
  """Batch axis over the data-parallel mesh axes (the ``batch`` logical rule); with
  ``batch_size``, only the axes that divide it."""
  spec = sharding.logical_to_spec(("batch",))
  if batch_size is not None:
    spec = sharding.fit_spec(spec, (batch_size,), mesh)
  return jax.sharding.NamedSharding(mesh, spec)


def make_run_mesh(config):
  """The run's mesh from ``config.mesh`` over all devices, or the first ``config.mesh_devices``."""
  count = int(config.get("mesh_devices", 0) or 0)
  devices = jax.devices()[:count] if count else None
  return sharding.mesh_from_spec(config.mesh or None, devices=devices)


# ----------------------------------------------------------------------------------------------
# Model creation.


@functools.lru_cache(maxsize=4)
def _jitted_init(cfg: PostCamConfig, mesh):
  """A jitted ``seed -> sharded parameters`` of a random PostCam (cached: one compile per
  config and mesh in a process), its graphdef and an abstract state to fill."""
  abstract = nnx.eval_shape(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding.param_shardings(abstract_state, mesh)

  def create(seed):
    return nnx.to_pure_dict(nnx.state(PostCamModel(cfg, rngs=nnx.Rngs(jax.random.key(seed)))))

  return jax.jit(create, out_shardings=shardings), graphdef, abstract_state


def backbone_of(config) -> str:
  """``config.backbone``: a PostCam model directory, or "" for random weights (tiny and demo
  configs). The full-size configs leave it unset (None), which is an error: training PostCam from
  a random backbone is never what a 1.3B/14B run wants."""
  backbone = config.get("backbone")
  if backbone is None:
    raise ValueError(
        "config.backbone is required for this config: pass --config.backbone=DIR, a PostCam "
        "model directory made from a converted Wan DiT with `python tools/convert_weights.py "
        "init-postcam ...` (or --config.backbone='' to train from random weights on purpose)")
  return backbone


def create_model(config, cfg: PostCamConfig, mesh) -> tuple[PostCamModel, dict]:
  """The sharded model: from ``config.backbone`` (a PostCam model directory, e.g. made by
  ``init-postcam`` from a converted Wan DiT) or, when "", random weights from ``config.seed``
  (unset: an error, see :func:`backbone_of`). Returns the model and the backbone reference stored
  in every checkpoint."""
  if backbone_of(config):
    options = {k: getattr(cfg, k) for k in ("remat", "attention", "variant", "camera_input",
                                            "render_rope")}
    model = checkpoints.load_postcam(config.backbone, precision=cfg.precision, mesh=mesh,
                                     **options)
    if model.cfg.num_layers != cfg.num_layers or model.cfg.dim != cfg.dim:
      raise ValueError(f"{config.backbone} holds a dim={model.cfg.dim}, "
                       f"{model.cfg.num_layers}-layer PostCam; config.model asks for dim="
                       f"{cfg.dim}, {cfg.num_layers} layers")
    return model, {"backbone": config.backbone}
  create, graphdef, cached_state = _jitted_init(cfg, mesh)
  abstract_state = jax.tree.map(lambda v: v, cached_state)  # fresh Variables per model
  seed = jax.device_put(np.int32(config.seed), _replicated(mesh))
  nnx.replace_by_pure_dict(abstract_state, create(seed))
  model = nnx.merge(graphdef, abstract_state)
  # A random stand-in backbone (tests, smoke runs). Wan initialises its head to zero, which makes
  # the output independent of every trainable parameter; a pretrained head is not zero, so the
  # stand-in gets a random one (frozen like the rest of the backbone).
  kernel = model.head.head.kernel
  key = jax.random.key(config.seed + 1)
  # Orthogonal with gain sqrt(2): the LayerNorm'd tokens map to outputs of the targets' scale
  # (eps - x0 has variance ~2 for unit-variance latents), any direction reachable.
  init = nnx.initializers.orthogonal(math.sqrt(2.0))
  fill = jax.jit(lambda k: init(k, kernel.shape, kernel.dtype),
                 out_shardings=kernel[...].sharding)
  kernel[...] = fill(key)
  return model, {"backbone": None, "init_seed": config.seed}


# ----------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainResult:
  """What a finished (or preempted) run leaves in memory: last metrics and the live model."""
  metrics: dict
  step: int
  model: PostCamModel
  optimizer: nnx.Optimizer
  preempted: bool = False


def global_batch(batch: dict, shard) -> dict:
  """A process-local numpy batch -> global arrays (an explicit transfer)."""
  return {k: jax.make_array_from_process_local_data(shard, np.asarray(v))
          for k, v in batch.items()}


def step_record(step: int, micro_metrics: list) -> dict:
  """One optimizer step's host scalars from its micro-steps' fetched metrics."""
  return {"step": step,
          "loss": float(np.mean([m["loss"] for m in micro_metrics])),
          "grad_norm": float(np.mean([m["grad_norm"] for m in micro_metrics])),
          "state_finite": bool(all(bool(m["state_finite"]) for m in micro_metrics))}


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


def create_optimizer(model, tx, mesh) -> nnx.Optimizer:
  """AdamW state for the trainable set only, created sharded like the parameters it mirrors."""
  abstract = nnx.eval_shape(lambda: nnx.Optimizer(model, tx, wrt=trainable))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding.param_shardings(abstract_state, mesh)
  model_graph, params, rest = nnx.split(model, trainable, ...)

  def init(p, r):
    return nnx.to_pure_dict(nnx.state(nnx.Optimizer(nnx.merge(model_graph, p, r), tx,
                                                    wrt=trainable)))

  state = jax.jit(init, out_shardings=shardings)(params, rest)
  nnx.replace_by_pure_dict(abstract_state, state)
  return nnx.merge(graphdef, abstract_state)


def checkpoint_state(model, optimizer, rng, step: int) -> dict:
  """The ``state`` item: trainable parameters, optimizer state, step, RNG (no frozen weights)."""
  return {"params": nnx.to_pure_dict(nnx.state(model, trainable)),
          "opt": nnx.to_pure_dict(nnx.state(optimizer)),
          "step": np.asarray(step, np.int64), "rng": rng}


def _restore_into(model, optimizer, restored):
  params = nnx.state(model, trainable)
  nnx.replace_by_pure_dict(params, restored["params"])
  nnx.update(model, params)
  opt = nnx.state(optimizer)
  nnx.replace_by_pure_dict(opt, restored["opt"])
  nnx.update(optimizer, opt)


def _init_trainable_from(model, path):
  params = nnx.state(model, trainable)
  target = checkpointing.abstract_like(nnx.to_pure_dict(params))
  nnx.replace_by_pure_dict(params, checkpointing.restore_params(path, target))
  nnx.update(model, params)


class Evaluator:
  """Validation loss on fixed held-out batches at fixed noise levels (deterministic)."""

  def __init__(self, config, graphdef, batches, shard, mesh):
    self.sigmas = tuple(float(s) for s in config.eval.sigmas)
    self.zero_camera = bool(config.eval.zero_camera_baseline)
    self.graphdef = graphdef
    self.batches = [global_batch(b, shard) for b in batches]
    key = jax.random.key_data(jax.random.key(config.eval.seed))
    self.key = jax.device_put(key, _replicated(mesh))
    self.steps = {}

  def __call__(self, stage: Stage, params, opt, frozen_params) -> dict:
    out = {}
    variants = [False] + ([True] if self.zero_camera and stage.camera else [])
    for zero in variants:
      key = (stage.kind, zero)
      if key not in self.steps:
        self.steps[key] = make_eval_step(self.graphdef, self.sigmas, camera=stage.camera,
                                         render=stage.render, zero_camera=zero)
      per_batch = [self.steps[key](params, opt, frozen_params, self.key, b) for b in self.batches]
      values = np.mean(np.asarray(jax.device_get(per_batch)), axis=0)
      name = "val/loss_zero_camera" if zero else "val/loss"
      out[name] = float(np.mean(values))
      if not zero:
        out.update({f"val/loss_sigma{s:g}": float(v) for s, v in zip(self.sigmas, values)})
    return out


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
  loss_cfg = losses.LossConfig.from_config(config.loss)
  stages = stages_of(config)
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

  # -- data ------------------------------------------------------------------------------------
  pi, pc = jax.process_index(), jax.process_count()
  train_iter = iter(train_data.train_dataset(config, pi, pc, micro))
  eval_sets = train_data.eval_batches(config, pi, pc, micro) if config.eval.every > 0 else []

  # -- abstract model -> sharded init (or the backbone restored into its shards) -------------
  model, backbone_ref = create_model(config, cfg, mesh)
  if pi == 0:
    for line in metrics.parameter_overview(model, trainable).splitlines():
      logging.info("%s", line)
  if config.init_from:
    _init_trainable_from(model, config.init_from)

  # -- optimizer -----------------------------------------------------------------------------
  tx, schedule = make_optimizer(config)
  optimizer = create_optimizer(model, tx, mesh)
  rng = jax.device_put(jax.random.key_data(jax.random.key(config.seed)), _replicated(mesh))

  # -- resume --------------------------------------------------------------------------------
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    every=config.checkpoint.every, keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
  step = ckpt.latest_step() or 0
  if step:
    target = checkpointing.abstract_like(checkpoint_state(model, optimizer, rng, 0))
    restored = ckpt.restore(step, target, train_iter)
    _restore_into(model, optimizer, restored)
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
                      rng.sharding, bshard)
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
        micro_metrics = []
        for _ in range(accum):
          batch = next(train_iter)
          if shapes is None:
            check_batch_camera(cfg, batch)
          shapes = shapes or (batch["target_latent"].shape[1:4],
                              batch["render_latent"].shape[1:4] if "render_latent" in batch
                              else None)
          placed = global_batch(batch, bshard)  # the one (explicit) host-to-device copy
          with jax.transfer_guard("disallow"):  # nothing else may move implicitly
            params, opt, m = steps_by_kind[stage.kind](params, opt, frozen_params, rng, placed)
          micro_metrics.append(m)
        step += 1
        pending.append((step, micro_metrics))
        is_log = step % config.log_every == 0 or step == total
        is_ckpt = step % config.checkpoint.every == 0 or step == total
        preempted = watcher.should_stop()
        if not (is_log or is_ckpt or preempted):
          continue
        # Losses reach the host only here, so steps in between stay asynchronous.
        records = [step_record(s, jax.device_get(ms)) for s, ms in pending]
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


def check_batch_camera(cfg: PostCamConfig, batch: dict):
  """The batch's camera has the model's representation (``camera_shape``), or a ValueError
  naming both (e.g. records or a cache made for the other ``camera_input``)."""
  got = tuple(np.shape(batch["camera"]))
  want = camera_shape(cfg, got[0], np.shape(batch["target_latent"])[1:4])
  if got != want:
    kind = "Plucker rays [B, N, 24]" if cfg.plucker else "RT tokens [B, 11, 12]"
    raise ValueError(f"the batch's camera is {got}, but the model (camera_input="
                     f"{cfg.camera_input!r}, variant={cfg.variant!r}) reads {kind}: {want}")


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


def main(argv=None):
  from postcam_jax import main as app  # pylint: disable=import-outside-toplevel
  app.run(argv)


if __name__ == "__main__":
  main()
