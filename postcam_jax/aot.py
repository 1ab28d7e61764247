"""Plan TPU runs from any machine: AOT-compile the real train / sample step for a TPU topology.

  python -m postcam_jax.aot --config configs/postcam_1p3b.py --topology v5p:2x2x2 \
      [--mesh data=1,fsdp=2,sequence=4] [--step train|sample|forward|wan_forward] [--sweep] \
      [--latent 11,60,104] [--render 11,15,26|none] [--config.x=y ...] [--out DIR]

libtpu compiles for abstract TPU devices (``jax.experimental.topologies``) on a CPU host. The
planner builds the abstract model, optimizer state and batch with the project's shardings
(``train.abstract_train_inputs``; nothing is allocated), lowers and compiles the trainer's
``make_train_step`` (or the sampler's jitted one-step ``sampling._run_one_step``), and reports
per-chip memory against the chip's HBM, compiler vs analytic FLOPs, and the cost model's step
time, MFU and tokens/s. ``--sweep`` tries meshes, remat policies and micro-batches.

Two blind spots of XLA's cost model are handled and labelled in every report:
- a ``while`` body (the ``lax.scan`` over blocks) is counted once, so costs are measured on 0- and
  1-layer compiles of the same step and extrapolated linearly to L layers (c0 + L (c1 - c0));
- Pallas kernels without a ``cost_estimate`` (splash attention) are priced at zero, so their
  analytic FLOPs (from the custom calls' operand shapes in the compiled HLO) are added, at peak.
A third, found on v6e: each ``ConcatBitcast`` custom call (a concatenation of VMEM-prefetched
weight slices that is only a bitcast) is priced at exactly -1 s, a "no estimate" sentinel, so a
1.3B step came out at -21,000 s. The planner counts them in the compiled HLO and takes the -1 s
back out (the op itself moves no data: priced at zero); a step whose time is still negative is
an error, never a report.
"""

import os

# Several processes (pytest workers, sweeps) may load libtpu at once: only compilation happens.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import argparse  # noqa: E402
import ast  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import mesh_utils, topologies  # noqa: E402

from postcam_jax import chips, sharding  # noqa: E402
from postcam_jax.models import splash  # noqa: E402,F401  (registers IMPLEMENTATIONS["splash"])
from postcam_jax.models import attention as attention_lib  # noqa: E402

GIB = 1024 ** 3
STEPS = ("train", "sample", "forward", "wan_forward")
DEFAULT_LATENT = (11, 60, 104)   # 480x832x41 video -> Wan-VAE latent [11, 60, 104, 16]
DEFAULT_RENDER = (11, 15, 26)    # the release's 4x-down render latent


# ----------------------------------------------------------------------------------------------
# Topology, mesh, config.


@functools.cache
def topology_devices(topology: str) -> tuple:
  """Abstract TPU devices of ``topology`` ('v5p:2x2x2', 'v6e:2x4'); a single chip needs the
  chips-per-host bounds spelled out."""
  chips.chip_for_topology(topology)
  dims = topology.split(":", 1)[1] if ":" in topology else ""
  try:
    shape = [int(x) for x in dims.split("x")]
  except ValueError:
    raise ValueError(f"topology must look like 'v5p:2x2x2' or 'v6e:2x4'; got {topology!r}") \
        from None
  kw = {}
  if math.prod(shape) == 1:
    kw["chips_per_host_bounds"] = [1, 1, 1]
  desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw)
  return tuple(desc.devices)


def parse_mesh(spec: str | None, n_devices: int) -> dict[str, int]:
  """'data=1,fsdp=2,sequence=4' -> axis sizes; an unnamed remainder goes to fsdp."""
  sizes = {}
  for part in (spec or "").split(","):
    if not part.strip():
      continue
    name, _, value = part.partition("=")
    if name.strip() not in sharding.MESH_AXES or not value.strip().isdigit():
      raise ValueError(f"mesh entries are AXIS=SIZE with AXIS in {sharding.MESH_AXES}; got "
                       f"{part!r} in {spec!r}")
    sizes[name.strip()] = int(value)
  given = math.prod(sizes.values()) if sizes else 1
  if "fsdp" not in sizes and n_devices % given == 0:
    sizes["fsdp"] = n_devices // given
  sizes = {a: sizes.get(a, 1) for a in sharding.MESH_AXES}
  if math.prod(sizes.values()) != n_devices:
    raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} devices; the topology has "
                     f"{n_devices}")
  return sizes


def parse_meshes(spec: str, n_devices: int) -> list[dict[str, int]]:
  """'fsdp=8;data=8' -> one mesh per ';'-separated entry (a sweep restricted to those meshes,
  e.g. to split one topology's sweep across hosts or finish part of it)."""
  return [parse_mesh(part, n_devices) for part in spec.split(";") if part.strip()]


def mesh_spec_str(sizes: dict[str, int]) -> str:
  return ",".join(f"{a}={sizes[a]}" for a in sharding.MESH_AXES)


def abstract_mesh(topology: str, sizes: dict[str, int]) -> jax.sharding.Mesh:
  """The project's four-axis mesh on the topology's devices, in ICI-aware order (as
  ``jax.make_mesh`` orders real TPU devices)."""
  devices = topology_devices(topology)
  shape = tuple(sizes[a] for a in sharding.MESH_AXES)
  grid = mesh_utils.create_device_mesh(shape, devices=list(devices),
                                       allow_split_physical_axes=True)
  return jax.sharding.Mesh(grid, sharding.MESH_AXES)


def load_config(path: str, overrides: list[str]):
  """An ml_collections config file (``get_config()``) with ``--config.a.b=value`` overrides."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} not found (expected e.g. "
                            f"configs/postcam_1p3b.py with a get_config())")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # configs/*.py import their siblings as ``configs.common``
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location("aot_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not key.startswith("--config.") or not sep:
      raise ValueError(f"overrides look like --config.model.remat=full; got {item!r}")
    set_field(config, key[len("--config."):], parse_value(raw))
  return config


def parse_value(raw: str):
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def set_field(config, dotted: str, value):
  """config.a.b = value for ConfigDicts and plain dicts (``config.model`` is a dict)."""
  *parents, last = dotted.split(".")
  node = config
  for name in parents:
    node = node[name] if isinstance(node, dict) else getattr(node, name)
  if isinstance(node, dict):
    node[last] = value
  else:
    with node.unlocked() if hasattr(node, "unlocked") else _nullcontext():
      setattr(node, last, value)


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def model_dict(config) -> dict:
  return dict(config.model)


def with_layers(config, num_layers: int):
  """A copy of ``config`` whose model is the same architecture with ``num_layers`` blocks (the
  presets fix the depth, so the model is spelled out field by field on the open 'tiny' preset)."""
  from postcam_jax import train  # pylint: disable=import-outside-toplevel
  cfg = train.model_config(config)
  out = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") \
      else config
  fields = dataclasses.asdict(cfg)
  fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
  fields.update(preset="tiny", num_layers=num_layers)
  with out.unlocked():
    out.model = fields
  return out


# ----------------------------------------------------------------------------------------------
# Target-platform attention: the host traces on CPU, so "auto" would pick XLA attention.


class tpu_attention:  # noqa: N801 (a context manager used like a function)
  """While tracing for TPU from a CPU host, make ``attention="auto"`` choose what it chooses on
  TPU (splash for bf16, XLA otherwise)."""

  def __enter__(self):
    self.saved = attention_lib.IMPLEMENTATIONS["auto"]

    def auto_on_tpu(q, k, v, *, precision=None):
      if q.dtype == jnp.bfloat16:
        return attention_lib.IMPLEMENTATIONS["splash"](q, k, v, precision=precision)
      return attention_lib.xla_attention(q, k, v, precision=precision)

    attention_lib.IMPLEMENTATIONS["auto"] = auto_on_tpu
    return self

  def __exit__(self, *exc):
    attention_lib.IMPLEMENTATIONS["auto"] = self.saved
    return False


# ----------------------------------------------------------------------------------------------
# Per-chip bytes of abstract arrays.


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
  shard = sharding.param_shardings(state, mesh)
  leaves = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        nnx.to_pure_dict(state), shard)
  out = jax.tree.map(lambda v: v, state)
  nnx.replace_by_pure_dict(out, leaves)
  return out


def sds(shape, dtype, mesh, spec=()):
  spec = sharding.fit_spec(jax.sharding.PartitionSpec(*spec), shape, mesh)
  return jax.ShapeDtypeStruct(tuple(shape), dtype,
                              sharding=jax.sharding.NamedSharding(mesh, spec))


# ----------------------------------------------------------------------------------------------
# The steps. Each builder returns (jitted fn, args, kwargs, facts) for one config and mesh.


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
  from postcam_jax import flops, losses, train  # pylint: disable=import-outside-toplevel
  if req.stage not in train.STAGE_KINDS:
    raise ValueError(f"unknown stage {req.stage!r}; choose one of {sorted(train.STAGE_KINDS)}")
  camera, render = train.STAGE_KINDS[req.stage]
  cfg = train.model_config(req.config)
  render_shape = (*req.render, cfg.in_dim) if (render and req.render) else None
  graphdef, inputs = train.abstract_train_inputs(req.config, mesh, (*req.latent, cfg.in_dim),
                                                 render_shape)
  loss_cfg = losses.LossConfig.from_config(req.config.get("loss", None) or {})
  accum = int(req.config.optim.accum_steps)
  # As the training loop calls it: the state's declared shardings pinned for the inputs and the
  # outputs (here the abstract inputs' NamedShardings), and the accumulation's noise rows.
  step = train.make_train_step(
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
  from postcam_jax import flops, sampling, train  # pylint: disable=import-outside-toplevel
  from postcam_jax.models.postcam import PostCamModel  # pylint: disable=import-outside-toplevel
  cfg = train.model_config(req.config)
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
  return sampling._run_one_step, args, dict(solver="euler", guided=guided), facts  # noqa: SLF001


def build_forward(req: Request, mesh, wan_only: bool):
  """One forward of the PostCam model (or, ``wan_only``, the plain Wan2.1 DiT of the same size
  and options) on a [B, F, H, W, 16] latent and a text_len context."""
  from postcam_jax import flops, train  # pylint: disable=import-outside-toplevel
  from postcam_jax.models.postcam import PostCamModel  # pylint: disable=import-outside-toplevel
  from postcam_jax.models.wan import WanConfig, WanModel  # pylint: disable=import-outside-toplevel
  cfg = train.model_config(req.config)
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
  with jax.set_mesh(mesh), tpu_attention():
    return fn.lower(*args, **kwargs), facts


# ----------------------------------------------------------------------------------------------
# Pricing.

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_WHILE = re.compile(r"while\(.*body=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|true_computation|false_computation)="
                     r"%?([\w.\-]+)|branch_computations=\{([^}]*)\}")
_SHAPE = re.compile(r"\b(bf16|f16|f32|f64|s8|s32|u8|u32|pred|s16)\[([\d,]*)\]")


def hlo_kernel_flops(hlo: str) -> tuple[float, dict]:
  """Analytic FLOPs of the splash kernels in compiled HLO text; also {kernel name: launches} of
  every Mosaic custom call. A kernel inside a while body is weighted by the loop's
  ``known_trip_count`` where the compiler kept one, else counted once (as the cost model does):
  the estimate uses 0/1-layer compiles, which have no layer loop."""
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo.splitlines():
    head = _COMPUTATION.match(line) if line and not line.startswith(" ") else None
    if head:
      current = head.group(1)
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  entry = next((m.group(1) for m in (_COMPUTATION.match(x) for x in hlo.splitlines()
                                     if x.startswith("ENTRY")) if m), None)
  weight = {entry: 1} if entry else {}
  order = [entry] if entry else []
  for name in order:  # breadth-first: a computation's callers come first in this order
    for line in bodies.get(name, []):
      trip = 1
      if _WHILE.search(line):
        t = _TRIP.search(line)
        trip = int(t.group(1)) if t else 1
      for single, many in _CALLED.findall(line):
        for callee in ([single] if single else re.findall(r"%?([\w.\-]+)", many)):
          w = weight[name] * (trip if f"body={callee}" in line.replace("%", "") else 1)
          if callee not in weight:
            order.append(callee)
          weight[callee] = max(weight.get(callee, 0), w)
  text = hlo.replace("%", "")
  fused = "splash_mha_dq" not in text
  total, launches = 0.0, {}
  for name, lines in bodies.items():
    for line in lines:
      if 'custom_call_target="tpu_custom_call"' not in line:
        continue
      inst = line.strip().split(" = ", 1)[0].lstrip("%")
      kernel = inst.rsplit(".", 1)[0]
      launches[kernel] = launches.get(kernel, 0) + weight.get(name, 1)
      kind = ("fwd" if "_fwd" in kernel else "dq" if "_dq" in kernel
              else ("bwd_fused" if fused else "dkv") if "_dkv" in kernel else None)
      if kind is None or not kernel.startswith("splash"):
        continue
      constraints = line.split("operand_layout_constraints={", 1)[1]
      dims = [tuple(int(d) for d in s.split(",") if d) for t, s in _SHAPE.findall(constraints)
              if t in ("bf16", "f16", "f32")]
      q, k = [d for d in dims if len(d) >= 3][:2]
      total += weight.get(name, 1) * splash.kernel_flops(kind, math.prod(q[:-2]), q[-2], k[-2],
                                                          q[-1])
  return total, launches


# Custom calls the TPU cost model prices at -1 s each (its "no estimate" sentinel; seen on v6e for
# ConcatBitcast, a concatenation that is only a bitcast of its operands).
SENTINEL_TARGETS = ("ConcatBitcast",)
_SENTINEL = re.compile(r'custom_call_target="(' + "|".join(SENTINEL_TARGETS) + r')"')


def cost_of(compiled) -> dict:
  """The cost model's numbers for one compiled step, plus the splash FLOPs it leaves out, with
  the -1 s sentinels of ``SENTINEL_TARGETS`` taken back out (each counted once per instruction,
  as the cost model counts them)."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  hlo = compiled.as_text()
  kernel_flops, launches = hlo_kernel_flops(hlo)
  sentinels = len(_SENTINEL.findall(hlo))
  reported = float(cost.get("optimal_seconds", 0.0))
  seconds = reported + 1.0 * sentinels
  if seconds < 0:
    raise ValueError(f"the TPU cost model returned a negative time ({reported:.4g} s, "
                     f"{seconds:.4g} s after {sentinels} sentinel custom calls); an op it cannot "
                     f"price is not in aot.SENTINEL_TARGETS")
  return {"flops": float(cost.get("flops", 0.0)), "optimal_seconds": seconds,
          "reported_optimal_seconds": reported, "sentinel_custom_calls": sentinels,
          "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
          "kernel_flops": kernel_flops, "kernel_launches": launches}


_ZERO_LAYER_COSTS: dict[str, dict] = {}


def _zero_layer_key(req: Request) -> str:
  """What a 0-block step depends on: everything but the remat policy (no block to remat)."""
  config = with_layers(req.config, 0).to_dict()
  config["model"].pop("remat", None)
  fields = {f.name: getattr(req, f.name) for f in dataclasses.fields(req) if f.name != "config"}
  return json.dumps([config, fields], sort_keys=True, default=str)


def layer_extrapolated_cost(req: Request, num_layers: int) -> dict:
  """c0 + L (c1 - c0) from compiles of the same step with 0 and 1 blocks (blind spot 1). The
  0-block cost is shared by the remat policies of a sweep."""
  c = []
  for k in (0, 1):
    key = _zero_layer_key(req) if k == 0 else None
    if key is not None and key in _ZERO_LAYER_COSTS:
      c.append(_ZERO_LAYER_COSTS[key])
      continue
    lowered, _ = lower_step(req.replace(config=with_layers(req.config, k)))
    c.append(cost_of(lowered.compile()))
    if key is not None:
      _ZERO_LAYER_COSTS[key] = c[-1]
  keys = ("flops", "optimal_seconds", "bytes_accessed", "kernel_flops")
  out = {k: c[0][k] + num_layers * (c[1][k] - c[0][k]) for k in keys}
  out["per_layer"] = {k: c[1][k] - c[0][k] for k in keys}
  out["kernel_launches_per_layer"] = c[1]["kernel_launches"]
  out["sentinel_custom_calls_per_layer"] = c[1]["sentinel_custom_calls"]
  return out


def memory_of(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  out["total"] = max(peak, out["argument"] + out["output"] - out["alias"] + out["temp"]
                     + out["generated_code"])
  return out


# The compiler's two phrasings of an out-of-HBM verdict (the second seen on v5e, just over).
_OOM = re.compile(r"required for .*?\(([\d.]+)([GMK])\) exceeds available HBM \(([\d.]+)G\)"
                  r"|Used ([\d.]+)([GMK]) of ([\d.]+)G hbm")


def oom_bytes(message: str) -> int | None:
  """Bytes the compiler said it needed, from a RESOURCE_EXHAUSTED message."""
  m = _OOM.search(message)
  if not m:
    return None
  value, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(5))
  return int(float(value) * {"G": GIB, "M": 1024 ** 2, "K": 1024}[unit])


# ----------------------------------------------------------------------------------------------
# The plan of one configuration.


def remat_of(req: Request) -> str:
  return dict(req.config.model).get("remat", "none")


def suggestions(req: Request, n: int, micro_per_chip: int, resident: int, usable: int) -> str:
  """What to change, cheapest first; parameters + optimizer state alone over HBM only shrink by
  sharding them over more chips."""
  if resident > usable:
    k = math.ceil(resident * req.mesh["fsdp"] / (0.8 * usable))
    return f"fsdp>={k} (parameters + optimizer state over >= {k} chips; a larger topology)"
  tips = []
  if remat_of(req) != "full":
    tips.append("remat=full")
  if req.mesh["fsdp"] < n:
    tips.append(f"fsdp={n}")
  if micro_per_chip > 1:
    tips.append(f"optim.accum_steps={2 * int(req.config.optim.accum_steps)}")
  tips.append("a larger topology")
  return " or ".join(tips)


def plan(req: Request, *, price: bool = True, out_dir: str | None = None) -> dict:
  """Lower, check and compile one configuration; the report as a dict (``fits``, ``gap``...)."""
  chip = chips.chip_for_topology(req.topology)
  n = len(topology_devices(req.topology))
  lowered, facts = lower_step(req)
  usable = chip.usable_hbm
  batch_axes = req.mesh["data"] * req.mesh["fsdp"]
  micro = facts.get("micro_batch", facts["samples"])
  report = {"topology": req.topology, "chips": n, "chip": chip.name,
            "usable_hbm_gib": usable / GIB, "bf16_peak": chip.bf16_peak,
            "mesh": mesh_spec_str(req.mesh), "step": req.step, "stage": req.stage,
            "latent": list(req.latent), "render": list(req.render) if req.render else None,
            "remat": remat_of(req), "precision": dict(req.config.model).get("precision"),
            "attention": dict(req.config.model).get("attention", "auto"),
            "accum_steps": facts["repeats"] if req.step == "train" else None,
            **{k: facts[k] for k in ("param_bytes", "opt_state_bytes", "model_flops", "tokens",
                                     "samples", "num_layers")}}
  resident = facts["param_bytes"] + facts["opt_state_bytes"] + facts.get("batch_bytes", 0)
  compiled = None
  if resident > usable:
    report.update(fits=False, need_bytes=resident, basis="arguments (eval_shape, not compiled)")
  else:
    try:
      compiled = lowered.compile()
    except Exception as e:  # the compiler's own out-of-memory verdict
      need = oom_bytes(str(e))
      if need is None:
        raise
      report.update(fits=False, need_bytes=need, basis="compiler RESOURCE_EXHAUSTED")
  if compiled is not None:
    mem = memory_of(compiled)
    report.update(memory=mem, need_bytes=mem["total"], basis="compiled memory_analysis",
                  fits=mem["total"] <= usable, raw_cost=cost_of(compiled))
  if not report["fits"]:
    gap = report["need_bytes"] - usable
    report["gap"] = (f"{gap / GIB:.1f} GiB over per chip ({report['need_bytes'] / GIB:.1f} GiB "
                     f"needed by the {report['basis']}, {usable / GIB:.2f} GiB usable on "
                     f"{chip.name}); try "
                     f"{suggestions(req, n, max(1, micro // batch_axes), resident, usable)}")
  elif price:
    est = layer_extrapolated_cost(req, facts["num_layers"])
    seconds_once = est["optimal_seconds"] + est["kernel_flops"] / chip.bf16_peak
    seconds = facts["repeats"] * seconds_once
    report.update(
        estimate=est, step_seconds=seconds,
        compiler_flops=facts["repeats"] * n * (est["flops"] + est["kernel_flops"]),
        mfu=facts["model_flops"] / (seconds * n * chip.bf16_peak),
        tokens_per_second=facts["tokens"] / seconds,
        samples_per_second=facts["samples"] / seconds)
  if out_dir:
    write_report(report, compiled, out_dir)
  return report


def write_report(report: dict, compiled, out_dir: str):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1, default=str)
  with open(os.path.join(out_dir, "report.txt"), "w") as f:
    f.write(format_report(report) + "\n")
  if compiled is not None:
    with open(os.path.join(out_dir, "hlo.txt"), "w") as f:
      f.write(compiled.as_text())


def format_report(r: dict) -> str:
  g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
  lines = [f"{r['step']} on {r['topology']} ({r['chips']} x {r['chip']}, "
           f"{r['usable_hbm_gib']:.2f} GiB usable HBM each), mesh {r['mesh']}, remat "
           f"{r['remat']}, precision {r['precision']}, attention {r['attention']}",
           f"  parameters      {g(r['param_bytes'])} per chip",
           f"  optimizer state {g(r['opt_state_bytes'])} per chip"]
  if "memory" in r:
    for k in ("argument", "output", "alias", "temp", "generated_code"):
      lines.append(f"  {k:15s} {g(r['memory'][k])}")
  lines.append(f"  total           {g(r['need_bytes'])} ({r['basis']}): "
               + ("fits" if r["fits"] else f"DOES NOT FIT: {r['gap']}"))
  if "step_seconds" in r:
    e = r["estimate"]
    lines += [
        f"  compiler FLOPs  {r['compiler_flops']:.4g} (all chips; splash kernels added: "
        f"{e['kernel_flops']:.4g} per chip per repeat) vs analytic model FLOPs "
        f"{r['model_flops']:.4g}",
        f"  estimated time  {r['step_seconds']:.4f} s "
        + ("per video (every sampling step, CFG included)" if r["step"] == "sample"
           else "per step")
        + " (cost model optimal_seconds, layers extrapolated from 0/1-layer compiles, splash "
        f"priced at bf16 peak"
        + (", the -1 s ConcatBitcast sentinels taken out"
           if e.get("sentinel_custom_calls_per_layer") else "")
        + ")",
        f"  MFU             {100 * r['mfu']:.1f} % of {r['bf16_peak'] / 1e12:.0f} TFLOP/s x "
        f"{r['chips']}",
        f"  tokens/s        {r['tokens_per_second']:.0f}   samples/s {r['samples_per_second']:.3f}"]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Sweep.

# Most memory-saving first: the sweep prunes on the order (see ``sweep``).
SWEEP_REMATS = ("full", "dots_no_batch", "none")


def candidate_meshes(n: int, req: Request, batch: int) -> list[dict]:
  """Meshes of n chips: a sequence axis over the divisors of n that split the main stream, the
  rest of the chips all on fsdp or all on data; without a sequence axis also tensor = 2 or 4
  (where it divides the heads and the FFN width) with fsdp on the rest. The batch axes must
  divide the global batch."""
  from postcam_jax import flops, train  # pylint: disable=import-outside-toplevel
  cfg = train.model_config(req.config)
  tokens, _ = flops.token_counts(cfg, req.latent)
  out = []

  def add(sizes):
    if batch % (sizes["data"] * sizes["fsdp"]) == 0 and sizes not in out:
      out.append(sizes)

  for seq in (s for s in range(1, n + 1) if n % s == 0 and (2 * tokens) % s == 0):
    rest = n // seq
    add({"data": 1, "fsdp": rest, "tensor": 1, "sequence": seq})
    add({"data": rest, "fsdp": 1, "tensor": 1, "sequence": seq})
  for t in (2, 4):
    if n % t == 0 and cfg.num_heads % t == 0 and cfg.ffn_dim % t == 0:
      add({"data": 1, "fsdp": n // t, "tensor": t, "sequence": 1})
  return out


def with_options(config, remat: str, accum: int):
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.model = {**dict(config.model), "remat": remat}
    out.optim.accum_steps = accum
  return out


def _request_key(req: Request) -> str:
  """Everything a candidate's plan depends on, as a string (journal entries must match it)."""
  config = req.config.to_dict() if hasattr(req.config, "to_dict") else dict(req.config)
  fields = {f.name: getattr(req, f.name) for f in dataclasses.fields(req) if f.name != "config"}
  return json.dumps([config, fields], sort_keys=True, default=str)


class Journal:
  """Finished sweep candidates, one JSON line each, keyed by their full request. A sweep of a
  1.3B step is hours of compiles on a small host; rerun with the same ``--out``, it reuses every
  candidate already planned and compiles only the rest."""

  def __init__(self, path: str | None):
    self.path, self.done = path, {}
    if path and os.path.exists(path):
      with open(path) as f:
        for line in f:
          if line.strip():
            entry = json.loads(line)
            self.done[entry["key"]] = entry["report"]

  def get(self, req: Request):
    return self.done.get(_request_key(req))

  def add(self, req: Request, report: dict):
    key = _request_key(req)
    self.done[key] = report
    if self.path:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      with open(self.path, "a") as f:
        f.write(json.dumps({"key": key, "report": report}, default=str) + "\n")


def sweep(req: Request, remats=SWEEP_REMATS, accums=(1, 2, 4), meshes=None, log=print,
          plan_fn=None, journal: Journal | None = None) -> list:
  """Every (mesh, remat) that fits at its smallest gradient accumulation, priced; sorted by
  estimated step time.

  Compiles are the cost (about a minute each at 1.3B on a 2-core host), so the sweep prunes on
  two monotonic facts: more accumulation only lowers memory and only slows the step, so for a
  (mesh, remat) only the smallest fitting accumulation is priced; and a remat policy that saves
  less (``remats`` runs from the most saving) needs at least the accumulation of the one before,
  and cannot fit where that one did not, so the remaining policies of that mesh are skipped.
  ``journal`` keeps every planned candidate, so an interrupted sweep resumes where it stopped.
  """
  plan_fn = plan_fn or plan
  journal = journal or Journal(None)
  n = len(topology_devices(req.topology))
  batch = int(req.config.data.batch_size)
  rows = []
  for sizes in meshes or candidate_meshes(n, req, batch):
    min_accum = 1
    for remat in remats:
      fitted = False
      for accum in accums:
        if accum < min_accum or batch % accum or (batch // accum) % (sizes["data"] *
                                                                      sizes["fsdp"]):
          continue
        cand = req.replace(config=with_options(req.config, remat, accum), mesh=sizes)
        r = journal.get(cand)
        reused = r is not None
        if not reused:
          try:
            r = plan_fn(cand)
          except Exception as e:  # a candidate the partitioner or kernels reject: skip, say why
            log(f"  {mesh_spec_str(sizes)} remat={remat} accum={accum}: failed: "
                f"{str(e).splitlines()[0][:200]}")
            break
          journal.add(cand, r)
        log(f"  {mesh_spec_str(sizes)} remat={remat} accum={accum}"
            + (" (from the journal)" if reused else "") + ": "
            + (f"{r['need_bytes'] / GIB:.1f} GiB, {r['step_seconds']:.3f} s, "
               f"MFU {100 * r['mfu']:.1f} %" if r["fits"] else
               f"does not fit ({r['need_bytes'] / GIB:.1f} GiB)"))
        if r["fits"]:
          rows.append(r)
          min_accum, fitted = accum, True
          break
      if not fitted:
        log(f"  {mesh_spec_str(sizes)}: remat={remat} fits at no accumulation in {accums}; "
            f"policies saving less are skipped")
        break
  return sorted(rows, key=lambda r: r["step_seconds"])


def format_sweep(rows: list, config_path: str) -> str:
  if not rows:
    return "no candidate fits"
  lines = [f"{'':2s}{'mesh':38s} {'remat':14s} {'accum':>5s} {'GiB/chip':>9s} {'step s':>8s} "
           f"{'MFU %':>6s} {'tokens/s':>10s}"]
  for i, r in enumerate(rows):
    lines.append(f"{'*' if i == 0 else ' '} {r['mesh']:38s} {r['remat']:14s} "
                 f"{r['accum_steps']:>5d} {r['need_bytes'] / GIB:9.2f} {r['step_seconds']:8.3f} "
                 f"{100 * r['mfu']:6.1f} {r['tokens_per_second']:10.0f}")
  lines.append("* best. Train it with:\n  " + train_command(rows[0], config_path))
  return "\n".join(lines)


def train_command(r: dict, config_path: str) -> str:
  return (f"python -m postcam_jax.train --config {config_path} --workdir WORKDIR "
          f"--config.mesh={r['mesh']} --config.model.remat={r['remat']} "
          f"--config.optim.accum_steps={r['accum_steps']}")


# ----------------------------------------------------------------------------------------------
# Command line.


def video_latent(config) -> tuple[int, int, int]:
  """Wan-VAE latent grid of config.data's video: 4x temporal (first frame alone), 8x spatial."""
  d = config.data
  if (d.num_frames - 1) % 4 or d.height % 16 or d.width % 16:
    raise ValueError(f"video {d.num_frames}x{d.height}x{d.width} has no Wan-VAE latent grid "
                     f"(frames 4k+1, height and width multiples of 16); pass --latent F,H,W")
  return ((d.num_frames - 1) // 4 + 1, d.height // 8, d.width // 8)


def parse_shape(text: str | None):
  if text is None or text.lower() == "none":
    return None
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise ValueError(f"shapes are F,H,W latent sizes like 11,60,104; got {text!r}") from None


def parse_request(argv=None):
  """The command line as (``Request``, the sweep's meshes or None, the parsed arguments)."""
  p = argparse.ArgumentParser(prog="python -m postcam_jax.aot", description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True)
  p.add_argument("--topology", required=True)
  p.add_argument("--mesh", default=None,
                 help="data=1,fsdp=2,sequence=4 (rest goes to fsdp); with --sweep, one or more "
                      "meshes separated by ';' restrict the sweep to them")
  p.add_argument("--step", default="train", choices=STEPS)
  p.add_argument("--stage", default="joint", help="training stage kind: pose | joint | render")
  p.add_argument("--latent", default=None, help="F,H,W (default: from config.data's video)")
  p.add_argument("--render", default=None, help="f,h,w or none (default: latent H/4, W/4)")
  p.add_argument("--batch", type=int, default=None, help="videos per sample/forward call")
  p.add_argument("--sample_steps", type=int, default=50)
  p.add_argument("--sweep", action="store_true")
  p.add_argument("--out", default=None,
                 help="report directory; with --sweep it also keeps every planned candidate "
                      "(sweep_candidates.jsonl), so a rerun resumes an interrupted sweep")
  args, overrides = p.parse_known_args(argv)
  config = load_config(args.config, overrides)
  n = len(topology_devices(args.topology))
  latent = parse_shape(args.latent) if args.latent else video_latent(config)
  render = (parse_shape(args.render) if args.render else
            (latent[0], latent[1] // 4, latent[2] // 4))
  meshes = parse_meshes(args.mesh, n) if args.sweep and args.mesh else None
  if meshes is None and args.mesh and ";" in args.mesh:
    raise SystemExit("several ';'-separated meshes are for --sweep; plan one mesh at a time")
  req = Request(config=config, topology=args.topology,
                mesh=meshes[0] if meshes else parse_mesh(args.mesh or config.get("mesh", None), n),
                step=args.step,
                latent=latent, render=render,
                stage=args.stage, batch=args.batch, sample_steps=args.sample_steps)
  return req, meshes, args


def main(argv=None) -> int:
  req, meshes, args = parse_request(argv)
  if args.sweep:
    if args.step != "train":
      raise SystemExit("--sweep plans training (--step train)")
    journal = Journal(os.path.join(args.out, "sweep_candidates.jsonl") if args.out else None)
    rows = sweep(req, meshes=meshes, journal=journal)
    text = format_sweep(rows, args.config)
    print(text)
    if args.out:
      os.makedirs(args.out, exist_ok=True)
      with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
      with open(os.path.join(args.out, "sweep.txt"), "w") as f:
        f.write(text + "\n")
    return 0 if rows else 2
  report = plan(req, out_dir=args.out)
  print(format_report(report))
  if not report["fits"]:
    print(f"error: does not fit: {report['gap']}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
