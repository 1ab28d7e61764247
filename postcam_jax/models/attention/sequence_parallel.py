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
- ``ring``: K/V blocks travel around the ring (``ppermute``) and are merged with an online softmax;
  memory per device stays at one K/V block. Any head count.

``sequence`` picks per mesh and shapes: ulysses where the heads divide, else allgather_kv, and
the ordinary local kernel where there is no sequence axis or the stream does not divide it (the
render stream, 1001 tokens at 480p). The explicit names raise a clear error instead.

RoPE needs nothing here: the models build the cos/sin tables for the whole sequence and rotate
q and k before this call, so every token already carries its global position.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel
from postcam_jax.models.attention import local

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


def _ring(q, k, v, plan, mesh, precision):
  spec, seq, seq_size, _ = plan
  axis = _axes(seq)
  scale = 1.0 / float(q.shape[-1]) ** 0.5
  perm = [(i, (i + 1) % seq_size) for i in range(seq_size)]

  def block(ql, kb, vb):
    """Unnormalised attention of the local queries on one K/V block: (max, sum, acc)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", ql, kb, precision=precision,
                        preferred_element_type=jnp.float32) * scale
    m = jnp.max(logits, axis=-1)
    p = jnp.exp(logits - m[..., None])
    acc = jnp.einsum("bhqk,bkhd->bhqd", p.astype(vb.dtype), vb, precision=precision,
                     preferred_element_type=jnp.float32)
    return m, jnp.sum(p, axis=-1), acc

  def merge(state, new):
    m0, l0, a0 = state
    m1, l1, a1 = new
    m = jnp.maximum(m0, m1)
    c0, c1 = jnp.exp(m0 - m), jnp.exp(m1 - m)
    return m, l0 * c0 + l1 * c1, a0 * c0[..., None] + a1 * c1[..., None]

  def body(ql, kl, vl):
    state = block(ql, kl, vl)

    def step(_, carry):
      kb, vb, st = carry
      kb = jax.lax.ppermute(kb, axis, perm)
      vb = jax.lax.ppermute(vb, axis, perm)
      return kb, vb, merge(st, block(ql, kb, vb))

    _, _, (_, denom, acc) = jax.lax.fori_loop(0, seq_size - 1, step, (kl, vl, state))
    out = acc / denom[..., None]
    return out.transpose(0, 2, 1, 3).astype(ql.dtype)

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

