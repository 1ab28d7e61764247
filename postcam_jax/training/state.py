"""The run's mesh, model and optimizer, created sharded; what a checkpoint holds of them.

Only the trainable set (``models.postcam.trainable``) gets gradients and AdamW state; the frozen
backbone comes from ``config.backbone`` (a PostCam model directory) or random weights, and is
never saved by the trainer.
"""

import functools
import math

import jax
import numpy as np
import optax
from flax import nnx

from postcam_jax import parallel
from postcam_jax.core.config import from_preset
from postcam_jax.geometry import cameras
from postcam_jax.io import model_dir
from postcam_jax.models.postcam import PostCamConfig, PostCamModel, frozen, trainable
from postcam_jax.training import checkpointing


def model_config(config) -> PostCamConfig:
  """``config.model`` (a preset name plus field overrides) -> the typed PostCamConfig."""
  return from_preset(PostCamConfig, dict(config.model))


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Clip by global norm -> AdamW on a warmup + constant/cosine schedule. Gradient accumulation
  (``optim.accum_steps``) is inside the train step (``step.make_train_step``): the optimizer sees
  one averaged gradient per step."""
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
  return tx, schedule


def make_run_mesh(config):
  """The run's mesh from ``config.mesh`` over all devices, or the first ``config.mesh_devices``."""
  count = int(config.get("mesh_devices", 0) or 0)
  devices = jax.devices()[:count] if count else None
  return parallel.make_mesh(config.mesh or None, devices=devices)


def batch_sharding(mesh, batch_size: int | None = None):
  """Batch axis over the data-parallel mesh axes (the ``batch`` logical rule); with
  ``batch_size``, only the axes that divide it."""
  spec = parallel.logical_to_spec(("batch",))
  if batch_size is not None:
    spec = parallel.fit_spec(spec, (batch_size,), mesh)
  return jax.sharding.NamedSharding(mesh, spec)


def replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def camera_shape(cfg: PostCamConfig, batch: int, latent_shape) -> tuple[int, int, int]:
  """The batch's ``camera`` shape for the model ``cfg`` and target latents (F, h, w, ...):
  [B, 11, 12], the RT tokens, or, for a Plucker model (``cfg.plucker``), [B, N, 24], one row
  per target token, N = F (h // 2) (w // 2) (``cameras.plucker_tokens``)."""
  if not cfg.plucker:
    return (batch, cameras.NUM_CAMERA_TOKENS, cfg.camera_width)
  f, h, w = (int(v) for v in latent_shape[:3])
  _, ph, pw = cfg.patch_size
  return (batch, f * (h // ph) * (w // pw), cfg.camera_width)


def check_batch_camera(cfg: PostCamConfig, batch: dict):
  """The batch's camera has the model's representation (``camera_shape``), or a ValueError
  naming both (e.g. records or a cache made for the other ``camera_input``)."""
  got = tuple(np.shape(batch["camera"]))
  want = camera_shape(cfg, got[0], np.shape(batch["target_latent"])[1:4])
  if got != want:
    kind = "Plucker rays [B, N, 24]" if cfg.plucker else "RT tokens [B, 11, 12]"
    raise ValueError(f"the batch's camera is {got}, but the model (camera_input="
                     f"{cfg.camera_input!r}, variant={cfg.variant!r}) reads {kind}: {want}")


@functools.lru_cache(maxsize=4)
def _jitted_init(cfg: PostCamConfig, mesh):
  """A jitted ``seed -> sharded parameters`` of a random PostCam (cached: one compile per
  config and mesh in a process), its graphdef and an abstract state to fill."""
  abstract = nnx.eval_shape(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = parallel.param_shardings(abstract_state, mesh)

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
    model = model_dir.load_postcam(config.backbone, precision=cfg.precision, mesh=mesh,
                                     **options)
    if model.cfg.num_layers != cfg.num_layers or model.cfg.dim != cfg.dim:
      raise ValueError(f"{config.backbone} holds a dim={model.cfg.dim}, "
                       f"{model.cfg.num_layers}-layer PostCam; config.model asks for dim="
                       f"{cfg.dim}, {cfg.num_layers} layers")
    return model, {"backbone": config.backbone}
  create, graphdef, cached_state = _jitted_init(cfg, mesh)
  abstract_state = jax.tree.map(lambda v: v, cached_state)  # fresh Variables per model
  seed = jax.device_put(np.int32(config.seed), replicated(mesh))
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


def create_optimizer(model, tx, mesh) -> nnx.Optimizer:
  """AdamW state for the trainable set only, created sharded like the parameters it mirrors."""
  abstract = nnx.eval_shape(lambda: nnx.Optimizer(model, tx, wrt=trainable))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = parallel.param_shardings(abstract_state, mesh)
  model_graph, params, rest = nnx.split(model, trainable, ...)

  def init(p, r):
    return nnx.to_pure_dict(nnx.state(nnx.Optimizer(nnx.merge(model_graph, p, r), tx,
                                                    wrt=trainable)))

  state = jax.jit(init, out_shardings=shardings)(params, rest)
  nnx.replace_by_pure_dict(abstract_state, state)
  return nnx.merge(graphdef, abstract_state)


def split_train_state(model, optimizer):
  """(graphdef, trainable params, frozen params, optimizer state) of a model + its optimizer."""
  return nnx.split((model, optimizer), trainable, frozen, ...)


def checkpoint_state(model, optimizer, rng, step: int) -> dict:
  """The ``state`` item: trainable parameters, optimizer state, step, RNG (no frozen weights)."""
  return {"params": nnx.to_pure_dict(nnx.state(model, trainable)),
          "opt": nnx.to_pure_dict(nnx.state(optimizer)),
          "step": np.asarray(step, np.int64), "rng": rng}


def restore_state_into(model, optimizer, restored):
  params = nnx.state(model, trainable)
  nnx.replace_by_pure_dict(params, restored["params"])
  nnx.update(model, params)
  opt = nnx.state(optimizer)
  nnx.replace_by_pure_dict(opt, restored["opt"])
  nnx.update(optimizer, opt)


def init_trainable_from(model, path):
  params = nnx.state(model, trainable)
  target = checkpointing.abstract_like(nnx.to_pure_dict(params))
  nnx.replace_by_pure_dict(params, checkpointing.restore_params(path, target))
  nnx.update(model, params)


def global_batch(batch: dict, shard) -> dict:
  """A process-local numpy batch -> global arrays (an explicit transfer)."""
  return {k: jax.make_array_from_process_local_data(shard, np.asarray(v))
          for k, v in batch.items()}
