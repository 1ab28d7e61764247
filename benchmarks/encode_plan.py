"""Latent-record preparation on TPU, planned by ahead-of-time compilation: the Wan-VAE encode, the
umT5 encode and the render of ``python -m postcam_jax.data.prepare --latents`` at 41 x 480 x 832,
compiled for one host of v5p and of v6e, per-chip memory and the cost model's time, and the hours
to encode the whole MultiCamVideo dataset.

  python benchmarks/encode_plan.py [--topologies v5p:1x1x1,v6e:1x1] [--per_chip 1] [--bf16]
      [--check_loop] [--steps vae_f32,vae_render_f32,render,t5] [--known STEP=S,...]
      [--out F.json]

``--steps`` compiles only the named steps (the full VAE's compile alone takes half an hour on a
2-core host; ``--steps t5,render`` skips it) and ``--known vae_f32=0.7249`` brings in the per-item
time of a step planned by an earlier run; the dataset hours leave out (and name) what has no time.

Each step is what ``postcam_jax.data.encoders.Encoders`` runs: on a host's chips as one ``data``
mesh (the preparation's ``local_mesh``), ``per_chip`` items per chip, nothing exchanged between
chips, so one chip's time per item is every chip's (the default plans one chip; a host's
topology, e.g. v5p:2x2x1, compiles the same per-chip program through the SPMD partitioner):

- ``vae``: ``WanVAE.encode`` of [B, 41, 480, 832, 3] bf16 frames (full Wan2.1 VAE, float32 as
  Wan runs it, and bfloat16) -> normalised latents [B, 11, 60, 104, 16];
- ``vae_render``: the same on the 4x-down render [B, 41, 120, 208, 3];
- ``render``: ``encoders.render_batch`` (the release's forward warp of 41 frames, 4x down);
- ``t5``: umT5-XXL (bf16, 24 layers) on [B, 512] token ids.

Memory is ``memory_analysis()`` of the whole step. Time is the TPU cost model's
``optimal_seconds`` (``postcam_jax.planning.cost.cost_of``), corrected for its blind spot on
loops (a ``while`` body is priced once): the VAE's chunk scan (1 + 10 chunks) is priced as the
whole encode plus 9 more chunk steps (the chunk step compiled alone), umT5's layer scan as the
1-layer model plus 23 more layers (one layer compiled alone), the render's per-frame map as 41 x
the 1-frame render (with libtpu 0.0.42.1 the cost model gives the render a negative time: it is
reported with its memory only, "time not priced"). The output's last table is the dataset plan:
13,600 scenes x 10 cameras, one 41-frame clip (frames 0, 2, ..., 80) per video, every ordered
pair (90 per scene) rendered; parts without a time are named and left out of the total.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from postcam_jax import parallel  # noqa: E402
from postcam_jax.data import encoders  # noqa: E402
from postcam_jax.models import t5 as t5_lib  # noqa: E402
from postcam_jax.models import vae as vae_lib  # noqa: E402
from postcam_jax.parallel import chips  # noqa: E402
from postcam_jax.planning.cost import cost_of, memory_of  # noqa: E402
from postcam_jax.planning.topology import GIB, topology_devices  # noqa: E402

FRAMES, HEIGHT, WIDTH = 41, 480, 832
TEXT_LEN = 512
SCENES, CAMERAS = 13_600, 10
PAIRS_PER_SCENE = CAMERAS * (CAMERAS - 1)
PODS = {"v5p-8 (4 chips, 1 host)": 4, "v5p-64 (32 chips, 8 hosts)": 32}
STEPS = ("vae_f32", "vae_render_f32", "render", "t5")
BF16 = CHECK_LOOP = False  # set from the command line


def abstract_module(factory, mesh):
  """(graphdef, parameter ShapeDtypeStructs with the project's shardings on ``mesh``)."""
  graphdef, state = nnx.split(nnx.eval_shape(factory))
  shardings = parallel.param_shardings(state, mesh)
  pure = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                      nnx.to_pure_dict(state), shardings)
  return graphdef, state, pure


def merged(graphdef, template, pure):
  state = jax.tree.map(lambda v: v, template)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def batch_sds(mesh, shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P("data")))


def compile_on(mesh, fn, *args):
  with jax.set_mesh(mesh):
    return jax.jit(fn).lower(*args).compile()


def vae_plan(mesh, batch, height, width, dtype) -> dict:
  cfg = vae_lib.WanVAEConfig.full()
  graphdef, template, params = abstract_module(
      lambda: vae_lib.WanVAE(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype), mesh)

  def encode(p, video):
    return merged(graphdef, template, p).encode(video)

  def first(p, video):
    vae = merged(graphdef, template, p)
    return vae.encoder(video[:, :1].astype(vae.dtype))

  def chunk(p, x, cache):
    vae = merged(graphdef, template, p)
    return vae.encoder(x.astype(vae.dtype), cache)

  video = batch_sds(mesh, (batch, FRAMES, height, width, 3), jnp.bfloat16)
  t0 = time.time()
  whole = compile_on(mesh, encode, params, video)
  out = {"memory": memory_of(whole), "whole": cost_of(whole)}
  if CHECK_LOOP:  # the loop's body priced once: the 2-chunk encode costs the same as 10 chunks
    short = batch_sds(mesh, (batch, 9, height, width, 3), jnp.bfloat16)
    out["whole_9_frames"] = cost_of(compile_on(mesh, encode, params, short))
  _, cache = jax.eval_shape(first, params, video)
  cache = jax.tree.map(lambda c: jax.ShapeDtypeStruct(c.shape, c.dtype,
                                                      sharding=NamedSharding(mesh, P("data"))),
                       cache)
  x = batch_sds(mesh, (batch, vae_lib.CHUNK_FRAMES, height, width, 3), jnp.bfloat16)
  out["chunk"] = cost_of(compile_on(mesh, chunk, params, x, cache))
  chunks = (FRAMES - 1) // vae_lib.CHUNK_FRAMES
  out["seconds"] = (out["whole"]["optimal_seconds"]
                    + (chunks - 1) * out["chunk"]["optimal_seconds"])
  out["compile_seconds"] = time.time() - t0
  return out


def render_plan(mesh, batch) -> dict:
  def args(frames):
    return (batch_sds(mesh, (batch, frames, HEIGHT, WIDTH, 3), jnp.float32),
            batch_sds(mesh, (batch, frames, HEIGHT, WIDTH), jnp.float32),
            batch_sds(mesh, (batch, frames, 4, 4), jnp.float32),
            batch_sds(mesh, (batch, frames, 4, 4), jnp.float32),
            batch_sds(mesh, (batch, 3, 3), jnp.float32))

  t0 = time.time()
  whole = compile_on(mesh, encoders.render_batch, *args(FRAMES))
  out = {"memory": memory_of(whole)}
  try:
    out["whole"] = cost_of(whole)
    out["one_frame"] = one = cost_of(compile_on(mesh, encoders.render_batch, *args(1)))
    out["seconds"] = FRAMES * one["optimal_seconds"]
  except ValueError as e:  # a negative time left after the sentinels (none known today)
    out["unpriced"] = str(e)
  out["compile_seconds"] = time.time() - t0
  return out


def t5_plan(mesh, batch) -> dict:
  full = t5_lib.UMT5Config.umt5_xxl()
  dtype = jnp.bfloat16

  def model_parts(cfg):
    return abstract_module(lambda: t5_lib.UMT5Encoder(cfg, rngs=nnx.Rngs(0), dtype=dtype,
                                                      param_dtype=dtype), mesh)

  def encode_with(parts):
    graphdef, template, _ = parts
    return lambda p, ids, mask: merged(graphdef, template, p)(ids, mask)

  ids = batch_sds(mesh, (batch, TEXT_LEN), jnp.int32)
  mask = batch_sds(mesh, (batch, TEXT_LEN), jnp.bool_)
  t0 = time.time()
  parts = model_parts(full)
  whole = compile_on(mesh, encode_with(parts), parts[2], ids, mask)
  one_layer = model_parts(full.replace(num_layers=1))
  c1 = cost_of(compile_on(mesh, encode_with(one_layer), one_layer[2], ids, mask))
  graphdef, template, params = abstract_module(
      lambda: t5_lib.T5Block(full, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype), mesh)
  buckets = jnp.asarray(t5_lib.relative_position_buckets(TEXT_LEN, full.num_buckets,
                                                         full.max_distance))

  def block(p, x, mask):
    return merged(graphdef, template, p)(x, mask, buckets)

  x = batch_sds(mesh, (batch, TEXT_LEN, full.dim), dtype)
  layer = cost_of(compile_on(mesh, block, params, x, mask))
  return {"memory": memory_of(whole), "whole": cost_of(whole), "one_layer_model": c1,
          "layer": layer,
          "seconds": c1["optimal_seconds"] + (full.num_layers - 1) * layer["optimal_seconds"],
          "compile_seconds": time.time() - t0}


def plan_topology(topology: str, per_chip: int, only=STEPS) -> dict:
  devices = topology_devices(topology)
  n = len(devices)
  mesh = parallel.make_mesh({"data": n}, devices=devices)
  chip = chips.chip_for_topology(topology)
  batch = n * per_chip
  out = {"topology": topology, "chips": n, "chip": chip.name, "batch": batch,
         "usable_hbm_gib": chip.usable_hbm / GIB}
  steps = {"vae_f32": lambda: vae_plan(mesh, batch, HEIGHT, WIDTH, jnp.float32),
           "vae_render_f32": lambda: vae_plan(mesh, batch, HEIGHT // 4, WIDTH // 4, jnp.float32),
           "render": lambda: render_plan(mesh, batch),
           "t5": lambda: t5_plan(mesh, batch)}
  if BF16:
    steps["vae_bf16"] = lambda: vae_plan(mesh, batch, HEIGHT, WIDTH, jnp.bfloat16)
  for name, make in steps.items():
    if name not in only and name != "vae_bf16":  # --bf16 adds the bfloat16 VAE
      continue
    try:
      out[name] = make()
    except Exception as e:  # the compiler's out-of-memory verdict, reported as such
      out[name] = {"error": str(e).splitlines()[0][:300]}
    print(f"{topology} {name}: {summary_line(out[name], per_chip)}", flush=True)
  return out


def summary_line(step: dict, per_chip: int) -> str:
  if "error" in step:
    return f"no plan: {step['error']}"
  if "seconds" not in step:
    return (f"{step['memory']['total'] / GIB:.2f} GiB per chip, time not priced ("
            f"{step['unpriced']}), compiled in {step['compile_seconds']:.0f} s")
  return (f"{step['memory']['total'] / GIB:.2f} GiB per chip, {step['seconds']:.4f} s per batch "
          f"({step['seconds'] / per_chip:.4f} s per item per chip), compiled in "
          f"{step['compile_seconds']:.0f} s")


def dataset_hours(plan: dict, per_chip: int, vae_key: str) -> dict:
  """Chip-seconds per item of each step -> hours for the dataset on each v5p pod (data parallel).
  A step without a time (not compiled, or not priced) is listed in ``unpriced`` and left out of
  the total, which is then a lower bound."""
  videos = SCENES * CAMERAS
  pairs = SCENES * PAIRS_PER_SCENE
  parts = {"videos (VAE)": (vae_key, videos), "captions (umT5)": ("t5", videos),
           "renders (warp)": ("render", pairs), "renders (VAE)": ("vae_render_f32", pairs)}
  chip_seconds, unpriced = {}, []
  for part, (key, items) in parts.items():
    if "seconds" in plan.get(key, {}):
      chip_seconds[part] = items * plan[key]["seconds"] / per_chip
    else:
      unpriced.append(part)
  total = sum(chip_seconds.values())
  pods = PODS if plan["topology"].startswith("v5p") else {}
  return {"chip_hours": {k: v / 3600 for k, v in chip_seconds.items()},
          "total_chip_hours": total / 3600, "unpriced": unpriced,
          "pods": {pod: total / chips_ / 3600 for pod, chips_ in pods.items()}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--topologies", default="v5p:1x1x1,v6e:1x1")
  parser.add_argument("--per_chip", type=int, default=1, help="items per chip in one batch")
  parser.add_argument("--bf16", action="store_true", help="also the VAE in bfloat16")
  parser.add_argument("--check_loop", action="store_true",
                      help="also compile the 9-frame encode (its cost equals the 41-frame one's "
                           "when the cost model prices the chunk loop's body once)")
  parser.add_argument("--steps", default=",".join(STEPS),
                      help="comma-separated steps to compile (default: all)")
  parser.add_argument("--known", default="",
                      help="per-item seconds per chip of steps planned by an earlier run, not "
                           "compiled again, for the dataset hours: e.g. vae_f32=0.7249")
  parser.add_argument("--out", default=None, help="write every number here (json)")
  args = parser.parse_args(argv)
  global BF16, CHECK_LOOP
  BF16, CHECK_LOOP = args.bf16, args.check_loop
  only = tuple(s.strip() for s in args.steps.split(",") if s.strip())
  unknown = sorted(set(only) - set(STEPS))
  if unknown:
    parser.error(f"--steps: unknown {', '.join(unknown)}; choose from {', '.join(STEPS)}")
  known = {}
  for item in filter(None, (k.strip() for k in args.known.split(","))):
    name, _, value = item.partition("=")
    if name not in STEPS + ("vae_bf16",) or not value:
      parser.error(f"--known {item!r}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
    known[name] = float(value)
  if known and "," in args.topologies:
    parser.error("--known holds one topology's times: plan one topology with it")
  plans = [plan_topology(t, args.per_chip, only) for t in args.topologies.split(",")]
  for plan in plans:
    for name, seconds in known.items():
      if "seconds" not in plan.get(name, {}):
        plan[name] = {"seconds": seconds * args.per_chip, "from": "--known"}
    for vae_key in ("vae_f32", "vae_bf16"):
      if "seconds" not in plan.get(vae_key, {}):
        continue
      plan[f"dataset_{vae_key}"] = hours = dataset_hours(plan, args.per_chip, vae_key)
      parts = ", ".join(f"{k} {v:.1f}" for k, v in hours["chip_hours"].items())
      pods = "; " + ", ".join(f"{p}: {h:.1f} h" for p, h in hours["pods"].items())
      missing = (f"; not priced, left out (a lower bound): {', '.join(hours['unpriced'])}"
                 if hours["unpriced"] else "")
      print(f"{plan['topology']} dataset with {vae_key}: {hours['total_chip_hours']:.1f} "
            f"chip-hours ({parts}){pods if hours['pods'] else ''}{missing}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(plans, f, indent=1, default=lambda o: float(o) if np.isscalar(o) else str(o))
  return 0


if __name__ == "__main__":
  sys.exit(main())
