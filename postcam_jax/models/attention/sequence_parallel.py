"""Exact sequence-parallel self-attention with ``jax.shard_map`` (Wan's USP, wan2.1.md 5.2).

The main token sequence is split over the mesh axis that the logical name ``length`` maps to
(``sequence`` in :data:`postcam_jax.parallel.LOGICAL_RULES`); batch and heads keep their own
shardings (``batch``, ``act_heads``). Three exact schemes, dispatched by
:func:`postcam_jax.models.attention.attention`:

- ``ulysses``: all-to-all trades the sequence split for a head split, every device attends over the
  whole sequence for ``H / S`` heads, and a second all-to-all trades back. Needs the (per tensor
  shard) head count divisible by the sequence axis size ``S``.
- ``allgather_kv``: keys and values are all-gathered along the sequence; each device attends with
  its own query slice. Works for any head count (1.3B: 12 heads on an 8-way axis) and keeps the
  fused local kernel; costs the full K/V per device.
- ``ring``: K/V blocks travel around the ring (``ppermute``); each device attends to the block in
  hand with the blocked kernel and merges by log-sum-exp. Its custom VJP sends the blocks round
  once more with their dk/dv and recomputes the probabilities from the saved log-sum-exp, so
  the backward holds one K/V block (plus its gradients) beside the saved q, k, v, output and
  log-sum-exp, not each step's probabilities. Any head count.

``sequence`` picks per mesh and shapes: ulysses where the heads divide, else allgather_kv, and
the ordinary local kernel where there is no sequence axis or the stream does not divide it (the
render stream, 1001 tokens at 480p). The explicit names raise a clear error instead.

RoPE needs nothing here: the models build the cos/sin tables for the whole sequence and rotate
q and k before this call, so every token already carries its global position.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel
from postcam_jax.models.attention import blocked, local

# The kernel run on each device's block (``local.KERNELS``; auto: cuDNN/splash/XLA by platform).
LOCAL_KERNEL = "auto"


def _context_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def _axes(entry) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _size(mesh, entry) -> int:
  sizes = dict(mesh.shape)
  out = 1
  for a in _axes(entry):
    out *= sizes[a]
  return out


def sequence_axis_size(mesh=None) -> int:
  """Size of the mesh axis (axes) the token sequence is split over; 1 without a mesh."""
  mesh = mesh if mesh is not None else _context_mesh()
  if mesh is None:
    return 1
  return _size(mesh, parallel.logical_to_spec(("length",))[0])


def _plan(q, k, v, mesh):
  """(spec [B, L, H, D], sequence axes, sequence size, per-shard heads) or a reason string."""
  if q.shape != k.shape or k.shape != v.shape:
    return (f"sequence-parallel attention is for self-attention (q, k, v of one shape); got "
            f"q {q.shape}, k {k.shape}, v {v.shape}")
  wanted = parallel.logical_to_spec(("batch", "length", "act_heads", None))
  seq = wanted[1]
  seq_size = _size(mesh, seq)
  length = q.shape[1]
  if length % seq_size:
    axes = "x".join(_axes(seq))
    return (f"sequence-parallel attention needs the token count divisible by the '{axes}' mesh "
            f"axis size {seq_size}; got L={length} tokens (q {q.shape}). Pick latent shapes "
            f"whose token grid F'*H'*W' is a multiple of {seq_size}")
  fitted = parallel.fit_spec(wanted, q.shape, mesh)
  # The sequence entry stays even at size 1, so the collectives' axis is always a manual one.
  spec = P(fitted[0], seq, fitted[2], None)
  heads = q.shape[2] // _size(mesh, spec[2])
  return spec, seq, seq_size, heads


def _shard_mapped(body, spec, mesh):
  # check_vma off: kernels called inside (Pallas splash on TPU) declare outputs without a
  # varying-axes type, which the check rejects in the backward pass.
  return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)


def _local(q, k, v, precision):
  return local.local_attention(q, k, v, kernel=LOCAL_KERNEL, precision=precision)


def _ulysses(q, k, v, plan, mesh, precision):
  spec, seq, seq_size, heads = plan
  if heads % seq_size:
    raise ValueError(
        f"ulysses attention needs the heads per tensor shard ({heads} of {q.shape[2]}) divisible "
        f"by the sequence axis size {seq_size}; use 'allgather_kv' or 'ring' (or 'sequence', "
        f"which picks)")
  axis = _axes(seq)

  def body(ql, kl, vl):
    to_heads = functools.partial(jax.lax.all_to_all, axis_name=axis, split_axis=2, concat_axis=1,
                                 tiled=True)
    o = _local(to_heads(ql), to_heads(kl), to_heads(vl), precision)
    return jax.lax.all_to_all(o, axis, split_axis=1, concat_axis=2, tiled=True)

  return _shard_mapped(body, spec, mesh)(q, k, v)


def _allgather_kv(q, k, v, plan, mesh, precision):
  spec, seq, _, _ = plan
  axis = _axes(seq)

  def body(ql, kl, vl):
    gather = functools.partial(jax.lax.all_gather, axis_name=axis, axis=1, tiled=True)
    return _local(ql, gather(kl), gather(vl), precision)

  return _shard_mapped(body, spec, mesh)(q, k, v)


@dataclasses.dataclass(frozen=True)
class _RingSpec:
  """Static facts of a ring attention: the ring's mesh axes and size, the matmul precision."""
  axis: tuple
  size: int
  precision: object

  @property
  def perm(self):
    return [(i, (i + 1) % self.size) for i in range(self.size)]

  def rotate(self, *xs):
    return tuple(jax.lax.ppermute(x, self.axis, self.perm) for x in xs)


def _ring_forward(ql, kl, vl, spec: _RingSpec):
  """(output float32 [B, L, H, D], log-sum-exp [B, H, L]) of the local queries over every K/V
  block of the ring: each step attends to the block in hand (the blocked kernel's tiles) and
  passes it on; the partial results merge by their log-sum-exps."""

  def attend(kb, vb):
    return blocked.forward_with_lse(ql, kb, vb, precision=spec.precision)

  def merge(out, lse, new_out, new_lse):
    total = jnp.logaddexp(lse, new_lse)
    weight = lambda a: jnp.exp(a - total).transpose(0, 2, 1)[..., None]  # noqa: E731
    return out * weight(lse) + new_out * weight(new_lse), total

  def step(_, carry):
    kb, vb, out, lse = carry
    kb, vb = spec.rotate(kb, vb)
    return (kb, vb, *merge(out, lse, *attend(kb, vb)))

  out, lse = attend(kl, vl)
  _, _, out, lse = jax.lax.fori_loop(0, spec.size - 1, step, (kl, vl, out, lse))
  return out, lse


def _ring_attention(ql, kl, vl, spec: _RingSpec):
  out, _ = _ring_forward(ql, kl, vl, spec)
  return out.astype(ql.dtype)


def _ring_attention_fwd(ql, kl, vl, spec: _RingSpec):
  out, lse = _ring_forward(ql, kl, vl, spec)
  out = out.astype(ql.dtype)
  return out, (ql, kl, vl, out, lse)


def _ring_attention_bwd(spec: _RingSpec, residuals, dout):
  """The K/V blocks go round the ring once more, each with the dk/dv it has collected: every
  device adds its queries' share (probabilities recomputed from the saved log-sum-exp) and
  passes block and gradients on; after the last pass the gradients are back at their owner. Live
  memory: the saved q, k, v, output and log-sum-exp, one K/V block and its dk/dv in flight."""
  ql, kl, vl, out, lse = residuals
  delta = jnp.einsum("blhd,blhd->bhl", dout.astype(jnp.float32), out.astype(jnp.float32))

  def share(kb, vb):
    dq, dk, dv, _ = blocked.backward_with_lse(ql, kb, vb, dout, lse, delta,
                                              precision=spec.precision)
    return dq, dk, dv

  def step(_, carry):
    kb, vb, dkb, dvb, dq = carry
    dq_j, dk_j, dv_j = share(kb, vb)
    return (*spec.rotate(kb, vb, dkb + dk_j, dvb + dv_j), dq + dq_j)

  zeros = jnp.zeros(kl.shape, jnp.float32)
  dq = jnp.zeros(ql.shape, jnp.float32)
  kb, vb, dkb, dvb, dq = jax.lax.fori_loop(0, spec.size - 1, step, (kl, vl, zeros, zeros, dq))
  dq_j, dk_j, dv_j = share(kb, vb)  # the last block in hand: no K/V to pass on, only dk/dv
  dk, dv = spec.rotate(dkb + dk_j, dvb + dv_j)
  return (dq + dq_j).astype(ql.dtype), dk.astype(kl.dtype), dv.astype(vl.dtype)


_ring_local = jax.custom_vjp(_ring_attention, nondiff_argnums=(3,))
_ring_local.defvjp(_ring_attention_fwd, _ring_attention_bwd)


def _ring(q, k, v, plan, mesh, precision):
  spec, seq, seq_size, _ = plan
  ring = _RingSpec(_axes(seq), seq_size, precision)

  def body(ql, kl, vl):
    return _ring_local(ql, kl, vl, ring)

  return _shard_mapped(body, spec, mesh)(q, k, v)


SCHEMES = {"ulysses": _ulysses, "allgather_kv": _allgather_kv, "ring": _ring}


def choose_scheme(q_shape, mesh=None) -> str:
  """The scheme ``sequence`` runs for q of ``q_shape`` on ``mesh`` (default: the context mesh):
  'local', 'ulysses' or 'allgather_kv'."""
  mesh = mesh if mesh is not None else _context_mesh()
  if mesh is None or sequence_axis_size(mesh) == 1:
    return "local"
  dummy = jax.ShapeDtypeStruct(tuple(q_shape), jnp.float32)
  plan = _plan(dummy, dummy, dummy, mesh)
  if isinstance(plan, str):
    return "local"
  _, _, seq_size, heads = plan
  return "ulysses" if heads % seq_size == 0 else "allgather_kv"


def sequence_parallel_attention(q, k, v, *, scheme: str = "sequence", precision=None):
  """Self-attention [B, L, H, D] with the token axis split over the mesh's sequence axis.

  ``scheme``: 'ulysses', 'allgather_kv', 'ring', or 'sequence' (pick per mesh, falling back to
  the local kernel where there is nothing to split). Uses the mesh of the context
  (``jax.set_mesh``); equal to the local kernel up to float rounding.
  """
  mesh = _context_mesh()
  if scheme == "sequence":
    scheme = choose_scheme(q.shape, mesh) if q.shape == k.shape == v.shape else "local"
    if scheme == "local":
      return _local(q, k, v, precision)
  if scheme not in SCHEMES:
    raise ValueError(f"unknown sequence-parallel scheme {scheme!r}; choose 'sequence' or one of "
                     f"{sorted(SCHEMES)}")
  if mesh is None:
    raise ValueError(f"'{scheme}' attention needs a mesh in context (with jax.set_mesh(mesh)); "
                     f"got none. Use 'sequence' to fall back to the local kernel")
  plan = _plan(q, k, v, mesh)
  if isinstance(plan, str):
    raise ValueError(f"'{scheme}' attention: {plan}")
  return SCHEMES[scheme](q, k, v, plan, mesh, precision)

