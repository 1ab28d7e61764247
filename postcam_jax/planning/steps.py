"""The steps a plan compiles: the trainer's micro-step, the sampler's step, one forward.

Each builder returns (jitted fn, args, kwargs, facts) for one request and mesh; the arguments are
ShapeDtypeStructs with the project's shardings, so nothing is allocated.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postcam_jax import parallel, training
from postcam_jax.inference import sampling
from postcam_jax.models import flops
from postcam_jax.models.postcam import PostCamModel
from postcam_jax.models.wan import WanConfig, WanModel
from postcam_jax.planning.topology import abstract_mesh
from postcam_jax.training import losses

STEPS = ("train", "sample", "forward", "wan_forward")
DEFAULT_LATENT = (11, 60, 104)   # 480x832x41 video -> Wan-VAE latent [11, 60, 104, 16]
DEFAULT_RENDER = (11, 15, 26)    # the release's 4x-down render latent


def with_layers(config, num_layers: int):
  """A copy of ``config`` whose model is the same architecture with ``num_layers`` blocks (the
  presets fix the depth, so the model is spelled out field by field on the open 'tiny' preset)."""
  cfg = training.model_config(config)
  out = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") \
      else config
  fields = dataclasses.asdict(cfg)
  fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
  fields.update(preset="tiny", num_layers=num_layers)
  with out.unlocked():
    out.model = fields
  return out


def per_chip_bytes(tree) -> int:
  """Bytes one device holds of the ShapeDtypeStructs in ``tree`` (each shard, by sharding)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return int(total)


def global_bytes(tree) -> int:
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def abstract_state(state, mesh):
  """An NNX state of ShapeDtypeStructs -> the same with the project's parameter shardings."""
  shard = parallel.param_shardings(state, mesh)
  leaves = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        nnx.to_pure_dict(state), shard)
  out = jax.tree.map(lambda v: v, state)
  nnx.replace_by_pure_dict(out, leaves)
  return out


def sds(shape, dtype, mesh, spec=()):
  spec = parallel.fit_spec(jax.sharding.PartitionSpec(*spec), shape, mesh)
  return jax.ShapeDtypeStruct(tuple(shape), dtype,
                              sharding=jax.sharding.NamedSharding(mesh, spec))


@dataclasses.dataclass(frozen=True)
class Request:
  """What to compile: config (ml_collections), topology, mesh sizes, step and video shape."""
  config: object
  topology: str
  mesh: dict
  step: str = "train"
  latent: tuple = DEFAULT_LATENT
  render: tuple | None = DEFAULT_RENDER
  stage: str = "joint"
  batch: int | None = None       # sample / forward batch (videos); train uses data.batch_size
  sample_steps: int = 50
  guidance_scale: float = 5.0

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)


def build_train(req: Request, mesh):
  """The trainer's jitted micro-step on its own abstract inputs."""
  if req.stage not in training.STAGE_KINDS:
    raise ValueError(f"unknown stage {req.stage!r}; choose one of {sorted(training.STAGE_KINDS)}")
  camera, render = training.STAGE_KINDS[req.stage]
  cfg = training.model_config(req.config)
  render_shape = (*req.render, cfg.in_dim) if (render and req.render) else None
  graphdef, inputs = training.abstract_train_inputs(req.config, mesh, (*req.latent, cfg.in_dim),
                                                 render_shape)
  loss_cfg = losses.LossConfig.from_config(req.config.get("loss", None) or {})
  accum = int(req.config.optim.accum_steps)
  # As the training loop calls it: the state's declared shardings pinned for the inputs and the
  # outputs (here the abstract inputs' NamedShardings), and the accumulation's noise rows.
  step = training.make_train_step(
      graphdef, loss_cfg, camera=camera, render=render_shape is not None,
      fixed_noise=bool((req.config.get("loss", None) or {}).get("fixed_noise", False)),
      shardings=jax.tree.map(lambda x: x.sharding, tuple(inputs)), accum_steps=accum)
  global_batch = int(req.config.data.batch_size)
  n, m = flops.token_counts(cfg, req.latent, render_shape)
  facts = dict(
      param_bytes=per_chip_bytes(inputs[0]) + per_chip_bytes(inputs[2]),
      trainable_param_bytes=per_chip_bytes(inputs[0]),
      opt_state_bytes=per_chip_bytes(inputs[1]), batch_bytes=per_chip_bytes(inputs[4]),
      global_param_bytes=global_bytes(inputs[0]) + global_bytes(inputs[2]),
      model_flops=flops.postcam_train_flops(cfg, global_batch, req.latent, render_shape),
      tokens=global_batch * (2 * n + m), repeats=accum, samples=global_batch,
      num_layers=cfg.num_layers, model=dataclasses.asdict(cfg), micro_batch=global_batch // accum)
  return step, inputs, {}, facts


def _model_and_state(cfg, cls, mesh):
  model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  return graphdef, abstract_state(state, mesh)


def build_sample(req: Request, mesh):
  """The sampler's jitted one-step (CFG: one 2B forward), priced x ``sample_steps``."""
  cfg = training.model_config(req.config)
  graphdef, state = _model_and_state(cfg, PostCamModel, mesh)
  b = req.batch or 1
  guided = float(req.guidance_scale) != 1.0
  rows = 2 * b if guided else b
  dt = cfg.policy.residual_dtype
  batch = ("data", "fsdp")
  render = None if req.render is None else sds((rows, *req.render, cfg.in_dim), dt, mesh, (batch,))
  conds = sampling.Conditions(
      source_latents=sds((rows, *req.latent, cfg.in_dim), dt, mesh, (batch,)),
      camera=sds((rows, 11, cfg.camera_width), dt, mesh, (batch,)),
      render_latents=render,
      context=sds((rows, cfg.text_len, cfg.text_dim), dt, mesh, (batch,)))
  carry = (sds((b, *req.latent, cfg.in_dim), dt, mesh, (batch,)),)
  tables = tuple(sds(np.shape(t), t.dtype, mesh)
                 for t in sampling.solver_tables(req.sample_steps, 5.0, "euler"))
  args = (graphdef, state, carry, conds, sds((), jnp.float32, mesh), tables,
          sds((), jnp.int32, mesh))
  n, m = flops.token_counts(cfg, req.latent, req.render)
  facts = dict(param_bytes=per_chip_bytes(state), opt_state_bytes=0,
               global_param_bytes=global_bytes(state),
               model_flops=req.sample_steps * flops.postcam_forward_flops(
                   cfg, rows, req.latent, req.render),
               tokens=req.sample_steps * rows * (2 * n + m), repeats=req.sample_steps, samples=b,
               num_layers=cfg.num_layers, model=dataclasses.asdict(cfg))
  return sampling.run_one_step, args, dict(solver="euler", guided=guided), facts


def build_forward(req: Request, mesh, wan_only: bool):
  """One forward of the PostCam model (or, ``wan_only``, the plain Wan2.1 DiT of the same size
  and options) on a [B, F, H, W, 16] latent and a text_len context."""
  cfg = training.model_config(req.config)
  if wan_only:
    names = {f.name for f in dataclasses.fields(WanConfig)}
    cfg = WanConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})
  graphdef, state = _model_and_state(cfg, WanModel if wan_only else PostCamModel, mesh)
  b = req.batch or 1
  dt = cfg.policy.residual_dtype
  batch = ("data", "fsdp")
  latents = sds((b, *req.latent, cfg.in_dim), dt, mesh, (batch,))
  inputs = [latents, sds((b,), jnp.float32, mesh, (batch,)),
            sds((b, cfg.text_len, cfg.text_dim), dt, mesh, (batch,))]
  if not wan_only:
    inputs += [latents, sds((b, 11, cfg.camera_width), dt, mesh, (batch,)),
               None if req.render is None else sds((b, *req.render, cfg.in_dim), dt, mesh,
                                                   (batch,))]

  @jax.jit
  def forward(state, *xs):
    return nnx.merge(graphdef, state)(*xs)

  if wan_only:
    model_flops = b * flops.forward_flops(flops.wan_terms(cfg, req.latent))
    n = math.prod(req.latent) // math.prod(cfg.patch_size)
    tokens = b * n
  else:
    model_flops = flops.postcam_forward_flops(cfg, b, req.latent, req.render)
    n, m = flops.token_counts(cfg, req.latent, req.render)
    tokens = b * (2 * n + m)
  facts = dict(param_bytes=per_chip_bytes(state), opt_state_bytes=0,
               global_param_bytes=global_bytes(state), model_flops=model_flops, tokens=tokens,
               repeats=1, samples=b, num_layers=cfg.num_layers, model=dataclasses.asdict(cfg))
  return forward, (state, *inputs), {}, facts


def build(req: Request, mesh):
  if req.step == "train":
    return build_train(req, mesh)
  if req.step == "sample":
    return build_sample(req, mesh)
  if req.step in ("forward", "wan_forward"):
    return build_forward(req, mesh, wan_only=req.step == "wan_forward")
  raise ValueError(f"unknown step {req.step!r}; choose one of {STEPS}")


def lower_step(req: Request):
  """(lowered, facts) of the request's step for its topology and mesh (nothing compiled)."""
  mesh = abstract_mesh(req.topology, req.mesh)
  # Abstract state is built outside the mesh context: nnx.eval_shape under a mesh would read the
  # logical axis names as mesh axes.
  fn, args, kwargs, facts = build(req, mesh)
  with jax.set_mesh(mesh):  # attention picks the mesh's platform's kernel (splash on TPU)
    return fn.lower(*args, **kwargs), facts
