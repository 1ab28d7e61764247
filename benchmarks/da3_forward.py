"""Depth Anything 3: TPU plan (ahead-of-time compiles on abstract v5p / v6e chips) and CPU time
next to the PyPI release, in one run.

  python benchmarks/da3_forward.py                       # both parts
  python benchmarks/da3_forward.py --skip-cpu            # the TPU plan only
  python benchmarks/da3_forward.py --skip-tpu --frames 4 # the CPU comparison only

TPU plan: da3-large and da3nested-giant-large on one and four chips of v5p and v6e, 81 frames of
480x832 (processed at 294x504: 81 x 757 tokens), views split over the chips (``frames`` mesh axes),
backbone in bf16 (``precision="bfloat16"``; attention through the splash kernel), head and camera
decoder in float32. Memory: ``memory_analysis()`` of the whole forward. Time: XLA's TPU cost model
(``cost_analysis()`` ``optimal_seconds``, splash FLOPs added at bf16 peak, as
``postcam_jax.planning`` does) of one frame-local block, one cross-view block and one head chunk,
each compiled on the same mesh and multiplied by its count (the cost model prices a scanned loop
body once, so the whole forward's own number would count one block per scan).

CPU: the same random da3-small in this port (float32, jitted, compile excluded) and in the
release (``depth-anything-3==0.1.1``, float32 eager, ``torch.set_num_threads`` = the cores).
"""

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from postcam_jax import parallel  # noqa: E402
from postcam_jax.models.da3 import DA3Config, DA3Model, blocks, dpt, frames  # noqa: E402
from postcam_jax.parallel import chips  # noqa: E402
from postcam_jax.planning.cost import cost_of, memory_of  # noqa: E402
from postcam_jax.planning.topology import GIB, topology_devices  # noqa: E402
from tests import da3_reference as ref  # noqa: E402

TOPOLOGIES = ("v5p:1x1x1", "v5p:2x2x1", "v6e:1x1", "v6e:2x2")
PROCESSED = (294, 504)   # 480x832 at process_res 504
FRAMES = 81


def plan_config(name: str) -> DA3Config:
  return DA3Config.from_name(name, precision="bfloat16", attention_chunk_bytes=1 << 62,
                             head_chunk_bytes=4 * GIB)


def sharded_abstract(factory, mesh):
  abstract = nnx.eval_shape(factory)
  graphdef, state = nnx.split(abstract)
  shardings = parallel.param_shardings(state, mesh)
  pure = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                      nnx.to_pure_dict(state), shardings)
  return graphdef, state, pure


def frames_sharding(mesh, ndim):
  axes = frames.frame_axes(mesh)
  entry = (axes if len(axes) > 1 else axes[0]) if axes else None
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, entry,
                                                                     *([None] * (ndim - 2))))


def compile_on(mesh, fn, *args):
  with jax.set_mesh(mesh):
    return jax.jit(fn).lower(*args).compile()


def merged(graphdef, template, pure):
  """A module from its graph, an abstract state (template) and a pure dict of arrays."""
  state = jax.tree.map(lambda v: v, template)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def forward_memory(cfg, mesh, n_frames):
  graphdef, template, params = sharded_abstract(lambda: DA3Model(cfg, rngs=nnx.Rngs(0)), mesh)
  sp = -(-n_frames // frames.frame_devices(mesh)) * frames.frame_devices(mesh)
  x = jax.ShapeDtypeStruct((1, sp) + PROCESSED + (3,), jnp.float32,
                           sharding=frames_sharding(mesh, 5))

  def fwd(p, images):
    return merged(graphdef, template, p)(images, valid=n_frames)

  t0 = time.time()
  compiled = compile_on(mesh, fwd, params, x)
  return memory_of(compiled), time.time() - t0


def part_costs(net_cfg, mesh, sp, dtype):
  """Cost-model seconds and FLOPs of one frame-local block, one cross-view block (if any) and
  one head chunk (``head_frames`` views) of one DA3 net."""
  b = net_cfg.backbone
  n = 1 + (PROCESSED[0] // 14) * (PROCESSED[1] // 14)
  x = jax.ShapeDtypeStruct((1, sp, n, b.embed_dim), jnp.float32, sharding=frames_sharding(mesh, 4))
  out = {}
  for kind in ("local", "global") if b.alt_start != -1 else ("local",):
    qknorm = b.alt_start != -1

    def make(kind=kind, qknorm=qknorm):
      return blocks.Block(b.embed_dim, b.num_heads, b.ffn_hidden, ffn=b.ffn, qknorm=qknorm,
                          dtype=dtype, rngs=nnx.Rngs(0))

    graphdef, state, params = sharded_abstract(make, mesh)

    def run(p, v, kind=kind, graphdef=graphdef, state=state):
      blk = merged(graphdef, state, p)
      if kind == "local":
        attend = lambda q, k, vv: frames.local_attention(q, k, vv, budget=1 << 62)  # noqa: E731
      else:
        attend = lambda q, k, vv: frames.cross_view_attention(  # noqa: E731
            q, k, vv, valid=FRAMES, budget=1 << 62)
      return blk(v, attend)

    out[kind] = cost_of(compile_on(mesh, run, params, x))
  head_frames = frames.frame_devices(mesh)
  graphdef, state, params = sharded_abstract(
      lambda: dpt.make_head(b.feature_dim, net_cfg.head, rngs=nnx.Rngs(0)), mesh)
  grid = (PROCESSED[0] // 14, PROCESSED[1] // 14)
  feats = [jax.ShapeDtypeStruct((head_frames, n - 1, b.feature_dim), jnp.float32,
                                sharding=jax.sharding.NamedSharding(
                                    mesh, jax.sharding.PartitionSpec(
                                        frames_sharding(mesh, 2).spec[1])))] * 4

  def head(p, f):
    return merged(graphdef, state, p)(f, grid, PROCESSED)

  out["head"] = cost_of(compile_on(mesh, head, params, feats))
  out["head_frames"] = head_frames
  return out


def net_seconds(net_cfg, costs, sp):
  b = net_cfg.backbone
  n_global = sum(b.is_global(i) for i in range(b.depth))
  n_local = b.depth - n_global
  secs = n_local * costs["local"]["optimal_seconds"]
  flops = n_local * (costs["local"]["flops"] + costs["local"]["kernel_flops"])
  if n_global:
    secs += n_global * costs["global"]["optimal_seconds"]
    flops += n_global * (costs["global"]["flops"] + costs["global"]["kernel_flops"])
  chunks = math.ceil(sp / costs["head_frames"])
  secs += chunks * costs["head"]["optimal_seconds"]
  flops += chunks * costs["head"]["flops"]
  return secs, flops


def plan(name: str, topology: str) -> dict:
  cfg = plan_config(name)
  devices = topology_devices(topology)
  mesh = parallel.make_mesh(f"fsdp={len(devices)}", devices=devices)
  chip = chips.chip_for_topology(topology)
  sp = -(-FRAMES // len(devices)) * len(devices)
  report = {"model": name, "topology": topology, "chips": len(devices), "chip": chip.name,
            "frames": FRAMES, "padded_views": sp, "processed_hw": PROCESSED,
            "usable_hbm_gib": chip.usable_hbm / GIB}
  try:
    mem, compile_s = forward_memory(cfg, mesh, FRAMES)
    report.update(memory_gib={k: v / GIB for k, v in mem.items()}, fits=mem["total"] <=
                  chip.usable_hbm, compile_seconds=compile_s)
  except Exception as e:  # the compiler's own out-of-memory verdict
    report.update(fits=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
  seconds, flops = 0.0, 0.0
  for net in [cfg.net] + ([cfg.metric] if cfg.metric is not None else []):
    costs = part_costs(net, mesh, sp, jnp.bfloat16)
    s, f = net_seconds(net, costs, sp)
    seconds += s
    flops += f
  report.update(estimated_seconds=seconds, flops_all_chips=flops * len(devices),
                mfu_at_estimate=flops / (seconds * chip.bf16_peak) if seconds else None)
  return report


def cpu_compare(frames_count: int, threads: int) -> dict:
  cfg = DA3Config.from_name("da3-small")
  torch_model, state = ref.build_torch(cfg, seed=0, preset=True)
  torch = ref.da3().torch
  torch.set_num_threads(threads)
  model = ref.jax_model(cfg, state)
  x = np.random.default_rng(0).standard_normal((1, frames_count) + PROCESSED + (3,)).astype(
      np.float32)
  run = nnx.jit(lambda m, v: m(v))
  xj = jnp.asarray(x)
  t0 = time.perf_counter()
  jax.block_until_ready(run(model, xj))
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    jax.block_until_ready(run(model, xj))
    times.append(time.perf_counter() - t0)
  xt = torch.from_numpy(np.moveaxis(x, -1, 2).copy())
  ttimes = []
  for _ in range(2):
    t0 = time.perf_counter()
    with torch.no_grad():
      torch_model.model(xt)
    ttimes.append(time.perf_counter() - t0)
  return {"model": "da3-small (random)", "frames": frames_count, "hw": PROCESSED,
          "jax_seconds": min(times), "jax_compile_seconds": compile_s,
          "torch_seconds": min(ttimes), "torch_threads": threads,
          "speedup": min(ttimes) / min(times)}


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="da3-large,da3nested-giant-large")
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  p.add_argument("--frames", type=int, default=4, help="views of the CPU comparison")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--skip-tpu", action="store_true")
  p.add_argument("--skip-cpu", action="store_true")
  p.add_argument("--out", default=None, help="also write the results as JSON here")
  args = p.parse_args()
  results = {"machine": f"{os.cpu_count()} CPU cores, jax {jax.__version__}"}
  if not args.skip_cpu:
    results["cpu"] = cpu_compare(args.frames, args.threads)
    print(json.dumps(results["cpu"]), flush=True)
  if not args.skip_tpu:
    results["tpu"] = []
    for name in args.models.split(","):
      for topo in args.topologies.split(","):
        t0 = time.time()
        r = plan(name, topo)
        r["plan_seconds"] = time.time() - t0
        results["tpu"].append(r)
        print(json.dumps(r, default=str), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
  main()

