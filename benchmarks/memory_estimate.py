"""Per-device memory estimate of PostCam training (and sampling) for a config and a mesh.

  python benchmarks/memory_estimate.py --model 1.3b --mesh data=1
  python benchmarks/memory_estimate.py --model 1.3b --mesh sequence=8
  python benchmarks/memory_estimate.py --model 14b --mesh fsdp=8,sequence=8

Everything comes from abstract shapes (``nnx.eval_shape``), nothing is allocated, and the mesh is
an ``AbstractMesh`` (no devices needed):

- parameters: every parameter's shard under ``postcam_jax.parallel`` (logical names -> mesh);
- gradients and AdamW (two float32 moments) for the trainable set only
  (``postcam_jax.models.postcam.trainable``), sharded like the parameters;
- activations: the residuals JAX keeps for the backward pass of one block
  (``saved_residuals`` of the block under the config's remat policy) times the number of blocks,
  plus one block's full set while it is recomputed, plus the inputs shared by all blocks. Each
  residual is divided by the mesh axes that split it: batch over data x fsdp, the main token
  axis over sequence (when it divides), FFN width and heads over tensor. Attention is modelled as
  a fused kernel (it keeps q, k, v, the output and the log-sum-exp, never the score matrix), as
  cuDNN/splash do; ``--kernel xla`` shows the unfused XLA attention instead.

In mixed precision the bf16 copies of one block's weights (the gathered copy under fsdp) are
part of the recomputed block. Not counted: XLA's temporary buffers and fragmentation, the
float32 gathered weights under ``precision=float32``, the VAE/T5 (run before training, or
offloaded), the data pipeline.
"""

import argparse
import contextlib
import math
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# The engine behind the public jax.ad_checkpoint.print_saved_residuals (which only prints).
from jax._src.ad_checkpoint import saved_residuals

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from postcam_jax import parallel  # pylint: disable=wrong-import-position
from postcam_jax.models import layers, postcam, precision  # pylint: disable=wrong-import-position
from postcam_jax.models.attention import local  # pylint: disable=wrong-import-position

PostCamBlock, PostCamConfig, PostCamModel = postcam.PostCamBlock, postcam.PostCamConfig, \
    postcam.PostCamModel
trainable = postcam.trainable

GIB = 1024 ** 3
MODELS = {"1.3b": PostCamConfig.release_1_3b, "14b": PostCamConfig.release_14b}


def _kernel_model(q, k, v):
  """(softmax(q k^T / sqrt(d)) v, log-sum-exp) written without dot_general, so that no remat
  policy saving matmul outputs keeps its insides (a fused kernel is one opaque call). Only ever
  traced abstractly here: run for real it would materialise [B, H, Lq, Lk, D]."""
  qf, kf = q.astype(jnp.float32), k.astype(jnp.float32)
  logits = jnp.sum(qf.transpose(0, 2, 1, 3)[:, :, :, None] * kf.transpose(0, 2, 1, 3)[:, :, None],
                   axis=-1) / math.sqrt(q.shape[-1])
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, H, Lq]
  p = jnp.exp(logits - lse[..., None])
  o = jnp.sum(p[..., None] * v.astype(jnp.float32).transpose(0, 2, 1, 3)[:, :, None], axis=-2)
  return o.transpose(0, 2, 1, 3).astype(q.dtype), lse


@jax.custom_vjp
def recompute_attention(q, k, v):
  """Attention that keeps only q, k, v, the output and the log-sum-exp for its backward (what a
  flash kernel keeps) and recomputes the probabilities there."""
  return _kernel_model(q, k, v)[0]


def _recompute_fwd(q, k, v):
  o, lse = _kernel_model(q, k, v)
  return o, (q, k, v, o, lse)


def _recompute_bwd(res, g):
  q, k, v, _, _ = res
  _, vjp = jax.vjp(local.xla_attention, q, k, v)
  return vjp(g)


recompute_attention.defvjp(_recompute_fwd, _recompute_bwd)


def parse_mesh(spec: str) -> dict[str, int]:
  sizes = {a: 1 for a in parallel.MESH_AXES}
  for part in filter(None, spec.split(",")):
    name, _, value = part.partition("=")
    if name.strip() not in sizes:
      raise ValueError(f"unknown mesh axis {name!r} in {spec!r}; axes are {parallel.MESH_AXES}")
    sizes[name.strip()] = int(value)
  return sizes


def shard_bytes(tree, shardings) -> int:
  """Bytes of one device's shards of an abstract Variable tree under matching shardings."""
  leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
  flat_shardings = jax.tree.leaves(shardings)
  total = 0
  for var, sh in zip(leaves, flat_shardings, strict=True):
    total += math.prod(sh.shard_shape(var.shape)) * jnp.dtype(var.dtype).itemsize
  return total


class Splitter:
  """How many ways the mesh splits an activation of a given shape (heuristic by dimension)."""

  def __init__(self, cfg, sizes, batch, token_lengths):
    self.cfg = cfg
    self.batch = batch
    self.batch_ways = self._fit(batch, [sizes["data"], sizes["fsdp"]])
    self.seq = sizes["sequence"]
    self.tensor = sizes["tensor"]
    self.token_lengths = token_lengths

  @staticmethod
  def _fit(dim, ways):
    out = 1
    for w in ways:
      if dim % (out * w) == 0:
        out *= w
    return out

  def ways(self, shape) -> int:
    if not shape:
      return 1
    ways = self.batch_ways if shape[0] == self.batch else 1
    seq_done = tensor_done = False
    for dim in shape[1:]:
      if not seq_done and dim in self.token_lengths and dim % self.seq == 0:
        ways *= self.seq
        seq_done = True
      elif not tensor_done and dim in (self.cfg.ffn_dim, self.cfg.num_heads) and \
          dim % self.tensor == 0:
        ways *= self.tensor
        tensor_done = True
    return ways

  def bytes(self, aval) -> float:
    return math.prod(aval.shape) * jnp.dtype(aval.dtype).itemsize / self.ways(aval.shape)


def block_inputs(cfg, batch, latent, render, text_len):
  """Abstract inputs of one PostCam block at the model's token counts."""
  f, h, w = latent
  pt, ph, pw = cfg.patch_size
  n = (f // pt) * (h // ph) * (w // pw)
  res, cd = cfg.policy.residual_dtype, cfg.policy.compute_dtype
  sds = jax.ShapeDtypeStruct
  half = cfg.head_dim // 2
  x = sds((batch, 2 * n, cfg.dim), res)
  nr = 0
  if render is not None:
    rf, rh, rw = render
    nr = (rf // pt) * (rh // ph) * (rw // pw)
  r = sds((batch, nr, cfg.dim), res) if nr else None
  rope = lambda length: layers.Rope(sds((length, half), jnp.float32), sds((length, half),
                                                                            jnp.float32))
  ropes = {"main": rope(2 * n), "target": rope(n), "camera": rope(11)}
  if nr:
    ropes["render"] = rope(nr)
  shared = dict(e0=sds((batch, 6, cfg.dim), res), context=sds((batch, text_len, cfg.dim), cd),
                camera=sds((batch, 11, cfg.dim), res), ropes=ropes)
  return x, r, shared, {"main": 2 * n, "target": n, "render": nr}


def block_residuals(cfg, x, r, shared, remat: str):
  """(per-layer residuals, residuals of the full block) as lists of avals."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: PostCamBlock(cfg, rngs=nnx.Rngs(0))))

  def run(state, x, r, e0, context, camera, ropes):
    block = nnx.merge(graphdef, state)
    return block((x, r), e0, context, camera, ropes)

  args = (state, x, r, shared["e0"], shared["context"], shared["camera"], shared["ropes"])

  carry = ("from the argument x", "from the argument r")

  def kept(fn):
    out = []
    for aval, where in saved_residuals(fn, *args):
      # Block inputs are the scan carry (x, r: kept per layer) or shared by every layer.
      if where.startswith("from the argument") and where not in carry:
        continue
      out.append(aval)
    return out

  policy = layers.remat_policy(remat)
  per_layer = kept(run if policy is None else jax.checkpoint(run, policy=policy))
  return per_layer, kept(run)


def estimate(model: str, mesh: str, batch: int, latent, render, text_len: int, precision: str,
             remat: str, kernel: str) -> dict:
  """The per-device numbers (bytes) of one configuration."""
  cfg = MODELS[model](precision=precision, remat=remat, attention="auto")
  sizes = parse_mesh(mesh)
  amesh = jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes))
  abstract = nnx.eval_shape(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param)
  train = nnx.state(abstract, trainable)
  param_bytes = shard_bytes(params, parallel.param_shardings(params, amesh))
  train_shardings = parallel.param_shardings(train, amesh)
  grad_bytes = shard_bytes(train, train_shardings)
  f32 = jax.tree.map(lambda v: v.replace(jax.ShapeDtypeStruct(v.shape, jnp.float32)), train,
                     is_leaf=lambda v: isinstance(v, nnx.Variable))
  adam_bytes = 2 * shard_bytes(f32, train_shardings)

  x, r, shared, lengths = block_inputs(cfg, batch, latent, render, text_len)
  tokens = {v for v in lengths.values() if v}
  split = Splitter(cfg, sizes, batch, tokens)
  # A fused kernel keeps no [H, L, L] residuals: model it by an attention that recomputes.
  fused = mock.patch.object(local, "xla_attention",
                            lambda q, k, v, **_: recompute_attention(q, k, v))
  with fused if kernel == "flash" else contextlib.nullcontext():
    per_layer, full_block = block_residuals(cfg, x, r, shared, remat)
  carry = sum(split.bytes(a) for a in (x, r) if a is not None)
  per_layer_bytes = sum(split.bytes(a) for a in per_layer)
  if not any(a.shape == x.shape for a in per_layer):  # the carry is kept even if not reported
    per_layer_bytes += carry
  shared_bytes = sum(split.bytes(a) for a in jax.tree.leaves(shared))
  return {
      "cfg": cfg, "sizes": sizes, "lengths": lengths,
      "seq_divides": lengths["main"] % sizes["sequence"] == 0,
      "params": param_bytes, "param_count": sum(math.prod(v.shape) for v in
                                                jax.tree.leaves(params)),
      "trainable_count": sum(math.prod(v.shape) for v in jax.tree.leaves(train)),
      "grads": grad_bytes, "adam": adam_bytes,
      "saved_activations": cfg.num_layers * per_layer_bytes,
      "per_layer": per_layer_bytes,
      # Without remat everything is already saved: nothing is rebuilt in the backward.
      "recompute_block": (0 if layers.remat_policy(remat) is None else
                          sum(split.bytes(a) for a in full_block)),
      "block_forward": sum(split.bytes(a) for a in full_block),
      "shared_inputs": shared_bytes,
  }


def report(e: dict, args) -> str:
  train_total = (e["params"] + e["grads"] + e["adam"] + e["saved_activations"] +
                 e["recompute_block"] + e["shared_inputs"])
  sample_total = e["params"] + e["block_forward"] + e["shared_inputs"]
  mesh = ",".join(f"{k}={v}" for k, v in e["sizes"].items())
  n_dev = int(np.prod(list(e["sizes"].values())))
  lines = [
      f"PostCam-{args.model} ({e['param_count'] / 1e9:.2f}B params, "
      f"{e['trainable_count'] / 1e9:.2f}B trainable), precision={args.precision}, "
      f"remat={args.remat}, attention kernel={args.kernel}",
      f"mesh {mesh} ({n_dev} devices), batch {args.batch}, latent {args.latent}, render "
      f"{args.render}, text {args.text}: tokens main {e['lengths']['main']}, render "
      f"{e['lengths']['render']}",
      "",
      "| per device | GiB |",
      "|---|---|",
      f"| parameters | {e['params'] / GIB:.2f} |",
      f"| gradients (trainable) | {e['grads'] / GIB:.2f} |",
      f"| AdamW moments (trainable, 2 x fp32) | {e['adam'] / GIB:.2f} |",
      f"| saved activations ({e['cfg'].num_layers} blocks x {e['per_layer'] / GIB:.3f}) | "
      f"{e['saved_activations'] / GIB:.2f} |",
      f"| one block recomputed in the backward | {e['recompute_block'] / GIB:.2f} |",
      f"| inputs shared by all blocks (text, time, camera, RoPE) | "
      f"{e['shared_inputs'] / GIB:.2f} |",
      f"| **training step total** | **{train_total / GIB:.2f}** |",
      f"| sampling forward, upper bound (parameters + one block's activations + inputs) | "
      f"{sample_total / GIB:.2f} |",
  ]
  if not e["seq_divides"]:
    lines.append(f"WARNING: {e['lengths']['main']} main tokens do not divide the sequence axis "
                 f"({e['sizes']['sequence']}); the model would reject this mesh")
  return "\n".join(lines)


def triple(text: str):
  if text.lower() == "none":
    return None
  parts = [int(p) for p in text.replace("x", ",").split(",")]
  if len(parts) != 3:
    raise argparse.ArgumentTypeError(f"expected F,H,W (latent frames, height, width); got {text}")
  return tuple(parts)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", choices=sorted(MODELS), default="1.3b")
  parser.add_argument("--mesh", default="", help="e.g. 'fsdp=8,sequence=8' (others are 1)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--latent", type=triple, default=(11, 60, 104),
                      help="target latent F,H,W (480x832x41 -> 11,60,104)")
  parser.add_argument("--render", type=triple, default=(11, 15, 26),
                      help="render latent F,H,W or none")
  parser.add_argument("--text", type=int, default=512, help="text tokens")
  parser.add_argument("--precision", default="mixed", choices=sorted(precision.POLICIES))
  parser.add_argument("--remat", default="full", help="none, full, dots, dots_no_batch, everything")
  parser.add_argument("--kernel", default="flash", choices=("flash", "xla"))
  args = parser.parse_args(argv)
  e = estimate(args.model, args.mesh, args.batch, args.latent, args.render, args.text,
               args.precision, args.remat, args.kernel)
  print(report(e, args))


if __name__ == "__main__":
  main()
