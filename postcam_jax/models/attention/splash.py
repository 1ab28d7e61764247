"""Pallas TPU splash attention behind the project's attention dispatch.

The kernel is ``jax.experimental.pallas.ops.tpu.splash_attention`` (jax 0.10.2 ships both
``flash_attention`` and ``splash_attention``; splash is the one with a fused backward kernel and
block-sparse masks). This module adapts it to the models' [B, L, H, D] contract:

- Splash needs both sequence lengths divisible by its blocks; the PostCam streams are not
  (34320 main tokens, 1001 render tokens, 512 text keys at 480x832). Queries and keys are padded
  up to whole blocks and a static :class:`KeyPrefixMask` hides the padded keys. Only the last key
  block column is partial, so the other blocks run unmasked.
- On a mesh the kernel is wrapped in ``shard_map`` over the batch and head shardings (a Mosaic
  custom call is not partitioned by XLA; without the wrap every device would run the whole
  batch). Inside an outer ``shard_map`` (sequence-parallel Ulysses/all-gather) it runs as is.
- The kernel has no ``cost_estimate``, so XLA's cost model prices it at zero; the planner
  (``postcam_jax.planning``) adds :func:`kernel_flops` for every splash custom call it finds in the
  compiled HLO.

Dispatched as ``implementation="splash"`` (TPU, compiled) and ``"splash_interpret"`` (the same
kernel in Pallas interpret mode, for CPU tests).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel

LANES = 128          # TPU lane width: splash blocks are multiples of it
MAX_BLOCK = 512      # block edge for long sequences (fewer grid steps, fits VMEM at head_dim 128)


@dataclasses.dataclass(frozen=True)
class KeyPrefixMask(splash_lib.Mask):
  """Every query attends to the first ``valid`` keys only (the rest is padding)."""
  q_len: int
  kv_len: int
  valid: int

  @property
  def shape(self) -> tuple[int, int]:
    return (self.q_len, self.kv_len)

  def __getitem__(self, idx) -> np.ndarray:
    if not isinstance(idx, tuple) or len(idx) != 2:
      raise ValueError(f"KeyPrefixMask takes a (rows, cols) slice pair, got {idx!r}")
    rows, cols = (s.indices(n) for s, n in zip(idx, self.shape))
    q = np.arange(*rows)
    k = np.arange(*cols)
    return np.broadcast_to(k[None, :] < self.valid, (q.size, k.size))

  def __eq__(self, other):
    return isinstance(other, KeyPrefixMask) and self.shape == other.shape and (
        self.valid == other.valid)

  def __hash__(self):
    return hash((KeyPrefixMask, self.q_len, self.kv_len, self.valid))


def block_and_padded(length: int) -> tuple[int, int]:
  """(block, padded length): blocks of up to MAX_BLOCK lanes, length rounded up to a block."""
  if length < 1:
    raise ValueError(f"attention needs at least one token, got length {length}")
  block = min(MAX_BLOCK, LANES * math.ceil(length / LANES))
  return block, block * math.ceil(length / block)


@functools.cache
def _kernel(heads: int, q_len: int, kv_len: int, interpret: bool):
  bq, q_pad = block_and_padded(q_len)
  bkv, kv_pad = block_and_padded(kv_len)
  if kv_pad == kv_len:
    head_mask = splash_lib.FullMask((q_pad, kv_pad))
  else:
    head_mask = KeyPrefixMask(q_pad, kv_pad, kv_len)
  blocks = splash_lib.BlockSizes(
      block_q=bq, block_kv=bkv, block_kv_compute=bkv,
      block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
      use_fused_bwd_kernel=True)
  mask = splash_lib.MultiHeadMask([head_mask] * heads)
  kernel = splash_lib.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                      interpret=interpret)
  return kernel, q_pad, kv_pad


def _local_splash(q, k, v, interpret: bool):
  """Splash on unsharded (per-device) [B, L, H, D] blocks."""
  b, lq, h, d = q.shape
  lk = k.shape[1]
  kernel, q_pad, kv_pad = _kernel(h, lq, lk, interpret)
  # Splash does not scale the logits; scale q in float32 before the cast back (as XLA's path
  # scales the float32 logits).
  qs = (q.astype(jnp.float32) * (1.0 / math.sqrt(d))).astype(q.dtype)
  to_hld = lambda x, n: jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n - x.shape[1]),
                                                           (0, 0)))
  out = jax.vmap(kernel)(to_hld(qs, q_pad), to_hld(k, kv_pad), to_hld(v, kv_pad))
  return out[:, :, :lq].transpose(0, 2, 1, 3).astype(q.dtype)


def _outer_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def splash_attention(q, k, v, *, precision=None, interpret: bool = False):
  """softmax(q k^T / sqrt(d)) v by the Pallas splash kernel; q [B,Lq,H,D], k/v [B,Lk,H,D].

  ``precision`` is accepted for the dispatch contract; the kernel's matmuls run at the input
  dtype (bf16 on TPU; float32 in interpret mode). ``interpret`` runs the kernel in Pallas
  interpret mode (any backend, slow): the CPU tests' path.
  """
  del precision
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"splash attention takes q [B, Lq, H, D] and k, v [B, Lk, H, D] of one "
                     f"batch, heads and head_dim; got q {q.shape}, k {k.shape}, v {v.shape}")
  mesh = _outer_mesh()
  if mesh is None:
    return _local_splash(q, k, v, interpret)
  if mesh.are_all_axes_manual:
    return _in_shard_map(q, k, v, interpret)
  # Shard over batch and heads only: the kernel needs whole sequences per device.
  free = mesh.auto_axes + mesh.explicit_axes
  spec = parallel.fit_spec(parallel.logical_to_spec(("batch", None, "act_heads", None)),
                           q.shape, mesh)
  spec = P(*(_keep(entry, free) for entry in spec))
  body = functools.partial(_local_splash, interpret=interpret)
  return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       axis_names=set(free), check_vma=False)(q, k, v)


def _varying_axes(x):
  """Mesh axes a traced value varies over inside shard_map (empty without the check)."""
  mat = getattr(jax.typeof(x), "mat", None)
  return getattr(mat, "varying", ()) or ()


def in_checked_shard_map(*xs) -> bool:
  """Whether ``xs`` are traced inside a ``shard_map`` with ``check_vma=True`` (their types carry
  the mesh axes they vary over)."""
  return any(_varying_axes(x) for x in xs)


def _in_shard_map(q, k, v, interpret):
  """Inside a ``shard_map`` (the project's all pass ``check_vma=False``): the kernel as is. The
  library kernel declares its outputs without a varying-axes type, which ``check_vma=True``
  rejects; ``auto`` then picks another kernel (``local.auto_kernel``), an explicit request fails
  here with the fix."""
  if in_checked_shard_map(q, k, v):
    raise ValueError("the splash kernel cannot run inside a shard_map with check_vma=True (the "
                     "Pallas kernel's outputs carry no varying-axes type); pass check_vma=False to "
                     "that shard_map, as postcam_jax's sequence-parallel schemes do, or use "
                     "implementation='auto'")
  return _local_splash(q, k, v, interpret)


def _keep(entry, allowed):
  axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
  axes = tuple(a for a in axes if a in allowed)
  return None if not axes else axes[0] if len(axes) == 1 else axes


# -- cost ------------------------------------------------------------------------------------
# Matmuls per kernel, in units of 2*H*Lq*Lk*D (one [Lq,D]x[D,Lk] product per head): the
# forward computes S = QK^T and O = PV; the fused backward recomputes S and computes dV = P^T dO,
# dP = dO V^T, dQ = dS K and dK = dS^T Q. Unfused dq/dkv kernels each recompute S.
KERNEL_MATMULS = {"fwd": 2, "bwd_fused": 5, "dq": 3, "dkv": 4}


def kernel_flops(kind: str, heads_times_batch: int, q_len: int, kv_len: int,
                 head_dim: int) -> float:
  """Matmul FLOPs of one splash kernel launch (``kind`` in :data:`KERNEL_MATMULS`)."""
  try:
    matmuls = KERNEL_MATMULS[kind]
  except KeyError:
    raise ValueError(f"unknown splash kernel kind {kind!r}; known: {sorted(KERNEL_MATMULS)}") \
        from None
  return 2.0 * matmuls * heads_times_batch * q_len * kv_len * head_dim

