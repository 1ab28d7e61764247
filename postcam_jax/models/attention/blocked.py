"""Memory-efficient attention for backends without a fused kernel (the CPU): flash attention in XLA.

softmax(scale q k^T + bias) v computed over tiles of ``block_q`` queries x ``block_k`` keys with
an online softmax (running row max, row sum and output per query block), so nothing of size
[H, Lq, Lk] is ever materialised: the live memory is one [B, g, block_q, block_k] tile of scores
plus the output, for a group of ``g`` heads (the head groups run one after the other). The
backward is a custom VJP (FlashAttention-2's): it keeps q, k, v, the output and the per-row
log-sum-exp, and recomputes each tile's probabilities from them instead of storing them.

Tiles: a sequence of L tokens is cut into ``n = ceil(L / target)`` blocks of equal size, a
multiple of 8 (one block of exactly L tokens when ``L <= target``), padded at the end; padded keys
get a -inf logit. ``bias`` is any array broadcastable to [B, H, Lq, Lk] (T5's relative positions
plus a large negative padding mask); its broadcast dimensions stay broadcast in every tile, and
its gradient is returned in its own shape.

Dispatched as ``implementation="blocked"`` (any backend) and by ``auto`` on CPU
(``local.auto_kernel``). :func:`forward_with_lse` and :func:`backward_with_lse` are the pieces
ring attention (``sequence_parallel``) runs on each K/V block it receives.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

BLOCK_K = 2048  # keys per tile
# A tile is [B, g, block_q, block_k] float32 scores of g heads, within TILE_BYTES: as many heads
# per tile as fit (g divides H), then as many queries (a power of two in [MIN_BLOCK_Q,
# MAX_BLOCK_Q]). Measured on 2 CPU cores (one attention [1, 8192, 8, 64], 2 threads; torch's
# fused kernel 0.655 s): 8 heads x 1024 x 1024 per tile (32 MiB) 0.95 s, one head x 1024 x 1024
# 0.84 s, one head x 2048 x 2048 (16 MiB) 0.74-0.78 s, one head x 1024 x 512 0.92 s. XLA's CPU
# dots run faster on one head's 2-D matrices than batched over heads, and larger tiles pay the
# loop's per-op overhead and copy each K/V block (once per query block) less often. Many batch
# rows (Depth Anything 3's frames) get one head and shorter query blocks per tile instead.
TILE_BYTES = 16 * 2 ** 20
MIN_BLOCK_Q, MAX_BLOCK_Q = 64, 2048


def default_heads_per_tile(batch: int, heads: int, len_q: int, len_k: int) -> int:
  """The most heads (a divisor of ``heads``) whose [batch, g, block_q, block_k] float32 tile of
  scores, at full-size blocks, stays within TILE_BYTES; 1 when even one head does not."""
  tile = 4 * batch * min(len_q, MAX_BLOCK_Q) * min(len_k, BLOCK_K)
  return max([g for g in range(1, heads + 1) if heads % g == 0 and g * tile <= TILE_BYTES],
             default=1)


def default_block_q(batch: int, heads: int) -> int:
  """Queries per tile for ``batch`` x ``heads`` tiles of BLOCK_K keys (see TILE_BYTES)."""
  fit = TILE_BYTES // (4 * batch * heads * BLOCK_K)
  size = 1 << max(int(fit).bit_length() - 1, 0)
  return min(max(size, MIN_BLOCK_Q), MAX_BLOCK_Q)


@dataclasses.dataclass(frozen=True)
class Tiling:
  """Static facts of one call: the scale, matmul precision, the heads per tile and the
  query/key tiles."""
  scale: float
  precision: object
  heads_per_tile: int
  block_q: int
  num_q: int
  len_q: int
  block_k: int
  num_k: int
  len_k: int

  @property
  def padded_keys(self) -> bool:
    return self.block_k * self.num_k != self.len_k


def blocks(length: int, target: int) -> tuple[int, int]:
  """(block size, block count) for ``length`` tokens in blocks of about ``target``: one block
  when ``length <= target``; else an exact split (no padding) with blocks between target/2 and
  5/4 target when there is one, the size nearest ``target``; else equal blocks rounded up to a
  multiple of 8, the last one padded."""
  if length < 1:
    raise ValueError(f"attention needs at least one token, got length {length}")
  if target < 1:
    raise ValueError(f"attention blocks need at least one token, got {target}")
  if length <= target:
    return length, 1
  exact = [length // n for n in range(math.ceil(length / (1.25 * target)),
                                      math.floor(length / (0.5 * target)) + 1)
           if n > 0 and length % n == 0]
  if exact:
    size = min(exact, key=lambda s: (abs(s - target), s))
    return size, length // size
  count = math.ceil(length / target)
  size = 8 * math.ceil(math.ceil(length / count) / 8)
  return size, math.ceil(length / size)


def tiling(q_shape, k_shape, scale=None, precision=None, block_q=None, block_k=None,
           heads_per_tile=None) -> Tiling:
  """The :class:`Tiling` of q [B, Lq, H, D] on k [B, Lk, H, D]."""
  batch, heads = q_shape[0], q_shape[2]
  g = heads_per_tile or default_heads_per_tile(batch, heads, q_shape[1], k_shape[1])
  if heads % g:
    raise ValueError(f"heads_per_tile {g} does not divide the {heads} heads")
  bq, nq = blocks(q_shape[1], block_q or default_block_q(batch, g))
  bk, nk = blocks(k_shape[1], block_k or BLOCK_K)
  scale = 1.0 / math.sqrt(q_shape[-1]) if scale is None else float(scale)
  return Tiling(scale, precision, g, bq, nq, q_shape[1], bk, nk, k_shape[1])


# -- head groups ------------------------------------------------------------------------------
# Tiles hold ``g`` heads; the H / g groups run one after the other under ``lax.map``.

def _groups(x, g: int, axis: int):
  """Split ``axis`` (H) into [H / g, g] and move the group index to the front."""
  x = x.reshape(*x.shape[:axis], x.shape[axis] // g, g, *x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _ungroup(x, axis: int):
  """The inverse of :func:`_groups`: [H / g, ..., g, ...] -> [..., H, ...]."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])


def _bias_groups(bias, heads: int, g: int):
  """(per-group bias [H / g, b', g, lq', lk'] or None, shared bias or None): a bias with a
  head dimension of H is split with the heads; a broadcast one is the same for every group."""
  if bias is None:
    return None, None
  bias = jnp.asarray(bias)
  full = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  if full.shape[1] == heads:
    return _groups(full, g, 1), None
  return None, bias


# -- layouts ----------------------------------------------------------------------------------

def _to_blocks(x, size: int, count: int):
  """[B, L, H, D] -> [count, B, H, size, D] (zero-padded at the end)."""
  b, length, h, d = x.shape
  x = jnp.pad(x, ((0, 0), (0, size * count - length), (0, 0), (0, 0)))
  return x.reshape(b, count, size, h, d).transpose(1, 0, 3, 2, 4)


def _from_blocks(x, length: int):
  """[count, B, H, size, D] -> [B, length, H, D]."""
  count, b, h, size, d = x.shape
  return x.transpose(1, 0, 3, 2, 4).reshape(b, count * size, h, d)[:, :length]


def _rows_to_blocks(x, size: int, count: int, fill=0.0):
  """Per-row values [B, H, L] -> [count, B, H, size] (padded with ``fill``)."""
  b, h, length = x.shape
  x = jnp.pad(x, ((0, 0), (0, 0), (0, size * count - length)), constant_values=fill)
  return x.reshape(b, h, count, size).transpose(2, 0, 1, 3)


def _rows_from_blocks(x, length: int):
  count, b, h, size = x.shape
  return x.transpose(1, 2, 0, 3).reshape(b, h, count * size)[..., :length]


def _bias_blocks(bias, t: Tiling):
  """bias broadcastable to [B, H, Lq, Lk] -> [nq', nk', b', h', bq', bk'], where a broadcast
  (size-1) query or key dimension keeps one block of size 1."""
  bias = jnp.asarray(bias)
  bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  b, h, lq, lk = bias.shape
  for size, full, name in ((lq, t.len_q, "query"), (lk, t.len_k, "key")):
    if size not in (1, full):
      raise ValueError(f"attention bias {bias.shape}: its {name} dimension is {size}, neither 1 "
                       f"nor the {name} count {full}")
  bq, nq = (t.block_q, t.num_q) if lq > 1 else (1, 1)
  bk, nk = (t.block_k, t.num_k) if lk > 1 else (1, 1)
  bias = jnp.pad(bias, ((0, 0), (0, 0), (0, bq * nq - lq), (0, bk * nk - lk)))
  return bias.reshape(b, h, nq, bq, nk, bk).transpose(2, 4, 0, 1, 3, 5)


def _bias_from_blocks(blocked, shape, t: Tiling):
  """The inverse of :func:`_bias_blocks` (padding dropped), in the bias's own ``shape``."""
  nq, nk, b, h, bq, bk = blocked.shape
  full = blocked.transpose(2, 3, 0, 4, 1, 5).reshape(b, h, nq * bq, nk * bk)
  lq = t.len_q if nq * bq > 1 else 1
  lk = t.len_k if nk * bk > 1 else 1
  return full[:, :, :lq, :lk].reshape(shape)


def _key_mask(t: Tiling):
  """[bk] additive logits of the last key block: 0 for real keys, -inf for the padding; None
  without padding."""
  if not t.padded_keys:
    return None
  index = (t.num_k - 1) * t.block_k + jnp.arange(t.block_k)
  return jnp.where(index < t.len_k, 0.0, -jnp.inf).astype(jnp.float32)


def _key_masks(t: Tiling):
  """[nk, bk]: :func:`_key_mask` for every key block (the backward's scan input)."""
  if not t.padded_keys:
    return None
  index = jnp.arange(t.num_k * t.block_k).reshape(t.num_k, t.block_k)
  return jnp.where(index < t.len_k, 0.0, -jnp.inf).astype(jnp.float32)


# -- one tile ---------------------------------------------------------------------------------

def _logits(qi, kj, bias_ij, mask_j, t: Tiling):
  """(s, factor): one tile's [B, H, bq, bk] float32 logits are ``factor * s``. Without a bias
  the scale stays out of ``s`` (it is applied inside the exponentials, in the same pass), so the
  tile of scores is not written out a second time; with one, s = scale q k^T + bias."""
  s = jnp.einsum("bhqd,bhkd->bhqk", qi, kj, precision=t.precision,
                 preferred_element_type=jnp.float32)
  factor = t.scale
  if bias_ij is not None:
    s = s * t.scale + bias_ij.astype(jnp.float32)
    factor = 1.0
  if mask_j is not None:
    s = s + mask_j
  return s, factor


def _finite_or_zero(m):
  return jnp.where(jnp.isfinite(m), m, 0.0)


# -- forward ----------------------------------------------------------------------------------

def _forward_blocked(qb, kb, vb, bias_b, mask, t: Tiling):
  """Blocked operands -> (unnormalised output [nq, B, H, bq, D] f32, row max, row sum)."""

  def row(qi, bias_i):
    def step(carry, xs):
      m, l, acc = carry
      kj, vj, bias_ij, mask_j = xs
      s, factor = _logits(qi, kj, bias_ij, mask_j, t)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))  # in units of s
      shift = _finite_or_zero(m_new)
      p = jnp.exp((s - shift[..., None]) * factor)
      correction = jnp.exp((m - shift) * factor)
      pv = jnp.einsum("bhqk,bhkd->bhqd", p.astype(vj.dtype), vj, precision=t.precision,
                      preferred_element_type=jnp.float32)
      return (m_new, l * correction + jnp.sum(p, axis=-1),
              acc * correction[..., None] + pv), None

    b, h, bq, d = qi.shape
    init = (jnp.full((b, h, bq), -jnp.inf, jnp.float32), jnp.zeros((b, h, bq), jnp.float32),
            jnp.zeros((b, h, bq, d), jnp.float32))
    xs = (kb, vb, _broadcast_blocks(bias_i, t.num_k))
    if mask is None:
      (m, l, acc), _ = jax.lax.scan(lambda c, x: step(c, (*x, None)), init, xs)
    else:  # only the last key block has padding: it runs after the loop, with the mask
      carry, _ = jax.lax.scan(lambda c, x: step(c, (*x, None)), init,
                              jax.tree.map(lambda a: a[:-1], xs))
      (m, l, acc), _ = step(carry, (*jax.tree.map(lambda a: a[-1], xs), mask))
    return acc, m * (t.scale if bias_i is None else 1.0), l

  if bias_b is not None and bias_b.shape[0] == t.num_q:
    return jax.lax.map(lambda xs: row(*xs), (qb, bias_b))
  shared = None if bias_b is None else bias_b[0]  # one bias row block for every query block
  return jax.lax.map(lambda qi: row(qi, shared), qb)


def _broadcast_blocks(x, count):
  """Blocked operand [n', ...] as ``count`` scan inputs (n' = 1: the one block repeated)."""
  if x is None or x.shape[0] == count:
    return x
  return jnp.broadcast_to(x, (count, *x.shape[1:]))


def _finish(acc, m, l):
  """Normalised output and log-sum-exp of the online softmax's (acc, max, sum)."""
  out = acc / l[..., None]
  return out, _finite_or_zero(m) + jnp.log(l)


def forward_with_lse(q, k, v, *, bias=None, scale=None, precision=None, block_q=None,
                     block_k=None, heads_per_tile=None):
  """(output [B, Lq, H, D] float32, log-sum-exp [B, H, Lq] float32) of the blocked attention
  (no custom gradient: ring attention's building block)."""
  t = tiling(q.shape, k.shape, scale, precision, block_q, block_k, heads_per_tile)
  out, lse = _forward(q, k, v, bias, t)
  return out, lse


def _forward(q, k, v, bias, t: Tiling):
  """(output [B, Lq, H, D] float32, lse [B, H, Lq]), one group of heads at a time."""
  heads, g = q.shape[2], t.heads_per_tile
  if g == heads:
    return _forward_group(q, k, v, bias, t)
  grouped_bias, shared_bias = _bias_groups(bias, heads, g)

  def one(xs):
    qg, kg, vg, bias_g = xs
    return _forward_group(qg, kg, vg, shared_bias if bias_g is None else bias_g, t)

  out, lse = jax.lax.map(one, (*(_groups(x, g, 2) for x in (q, k, v)), grouped_bias))
  return _ungroup(out, 2), _ungroup(lse, 1)


def _forward_group(q, k, v, bias, t: Tiling):
  qb = _to_blocks(q, t.block_q, t.num_q)
  kb = _to_blocks(k, t.block_k, t.num_k)
  vb = _to_blocks(v, t.block_k, t.num_k)
  bias_b = None if bias is None else _bias_blocks(bias, t)
  acc, m, l = _forward_blocked(qb, kb, vb, bias_b, _key_mask(t), t)
  out, lse = _finish(acc, m, l)
  return _from_blocks(out, t.len_q), _rows_from_blocks(lse, t.len_q)


# -- backward ---------------------------------------------------------------------------------

def backward_with_lse(q, k, v, dout, lse, delta, *, bias=None, scale=None, precision=None,
                      block_q=None, block_k=None, heads_per_tile=None):
  """(dq, dk, dv, dbias) of the attention of q on k/v given the rows' final log-sum-exp ``lse``
  [B, H, Lq] and ``delta`` = sum(dout * out, -1) [B, H, Lq] (both possibly over more keys than
  ``k``: then these are the gradients of this block's share). dq/dk/dv float32; dbias in the
  bias's shape and dtype (None without a bias)."""
  t = tiling(q.shape, k.shape, scale, precision, block_q, block_k, heads_per_tile)
  return _backward(q, k, v, bias, dout, lse, delta, t)


def _backward(q, k, v, bias, dout, lse, delta, t: Tiling):
  """(dq, dk, dv, dbias), one group of heads at a time."""
  heads, g = q.shape[2], t.heads_per_tile
  if g == heads:
    return _backward_group(q, k, v, bias, dout, lse, delta, t)
  grouped_bias, shared_bias = _bias_groups(bias, heads, g)

  def one(xs):
    qg, kg, vg, dog, lse_g, delta_g, bias_g = xs
    return _backward_group(qg, kg, vg, shared_bias if bias_g is None else bias_g, dog, lse_g,
                           delta_g, t)

  dq, dk, dv, dbias = jax.lax.map(one, (*(_groups(x, g, 2) for x in (q, k, v, dout)),
                                        _groups(lse, g, 1), _groups(delta, g, 1), grouped_bias))
  if dbias is not None:
    if grouped_bias is None:  # one bias shared by every group: its gradient is their sum
      dbias = jnp.sum(dbias.astype(jnp.float32), axis=0)
    else:
      dbias = _ungroup(dbias, 1)
    dbias = dbias.reshape(jnp.shape(bias)).astype(bias.dtype)
  return _ungroup(dq, 2), _ungroup(dk, 2), _ungroup(dv, 2), dbias


def _backward_group(q, k, v, bias, dout, lse, delta, t: Tiling):
  qb = _to_blocks(q, t.block_q, t.num_q)
  kb = _to_blocks(k, t.block_k, t.num_k)
  vb = _to_blocks(v, t.block_k, t.num_k)
  dob = _to_blocks(dout, t.block_q, t.num_q)
  # A fully masked row (lse -inf) has no probabilities; a padded row gets lse +inf: both p = 0.
  lse_b = _rows_to_blocks(jnp.where(lse == -jnp.inf, jnp.inf, lse), t.block_q, t.num_q,
                          jnp.inf)
  delta_b = _rows_to_blocks(delta, t.block_q, t.num_q)
  bias_b = None if bias is None else _bias_blocks(bias, t)
  mask = _key_masks(t)
  bias_shape = None if bias_b is None else bias_b.shape

  def column(dq, xs):
    """Key block j: its dk, dv, the dq contributions of every query block, its dbias."""
    kj, vj, bias_j, mask_j = xs

    def row(carry, ys):
      dk, dv = carry
      qi, doi, lse_i, delta_i, bias_ij = ys
      s, factor = _logits(qi, kj, bias_ij, mask_j, t)
      p = jnp.exp(s * factor - lse_i[..., None])
      dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p.astype(doi.dtype), doi, precision=t.precision,
                           preferred_element_type=jnp.float32)
      dp = jnp.einsum("bhqd,bhkd->bhqk", doi, vj, precision=t.precision,
                      preferred_element_type=jnp.float32)
      ds = p * (dp - delta_i[..., None])
      dq_i = jnp.einsum("bhqk,bhkd->bhqd", ds.astype(kj.dtype), kj, precision=t.precision,
                        preferred_element_type=jnp.float32) * t.scale
      dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds.astype(qi.dtype), qi, precision=t.precision,
                           preferred_element_type=jnp.float32) * t.scale
      dbias_ij = None if bias_ij is None else _reduce_to(ds, bias_ij.shape)
      return (dk, dv), (dq_i, dbias_ij)

    b, h, bk, d = kj.shape
    zeros = jnp.zeros((b, h, bk, d), jnp.float32)
    (dk, dv), (dq_parts, dbias_j) = jax.lax.scan(
        row, (zeros, zeros), (qb, dob, lse_b, delta_b, _broadcast_blocks(bias_j, t.num_q)))
    if dbias_j is not None and bias_shape[0] == 1:
      dbias_j = jnp.sum(dbias_j, axis=0, keepdims=True)
    return dq + dq_parts, (dk, dv, dbias_j)

  # the bias [nq', nk', ...] as scan inputs over the key blocks: [nk, nq', ...]
  bias_cols = None if bias_b is None else _broadcast_blocks(bias_b.swapaxes(0, 1), t.num_k)
  dq0 = jnp.zeros(qb.shape, jnp.float32)
  dq, (dk, dv, dbias) = jax.lax.scan(column, dq0, (kb, vb, bias_cols, mask))
  dbias_out = None
  if bias is not None:
    if bias_shape[1] == 1:
      dbias = jnp.sum(dbias, axis=0, keepdims=True)
    dbias_out = _bias_from_blocks(dbias.swapaxes(0, 1), jnp.shape(bias), t).astype(bias.dtype)
  return (_from_blocks(dq, t.len_q), _from_blocks(dk, t.len_k), _from_blocks(dv, t.len_k),
          dbias_out)


def _reduce_to(x, shape):
  """Sum ``x`` over the dimensions where ``shape`` is 1 (a broadcast operand's gradient)."""
  axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape)) if b == 1 and a != 1)
  return jnp.sum(x, axis=axes, keepdims=True) if axes else x


# -- the kernel with its custom VJP ---------------------------------------------------------

def _attention_impl(q, k, v, bias, t: Tiling):
  out, _ = _forward(q, k, v, bias, t)
  return out.astype(q.dtype)


def _attention_fwd(q, k, v, bias, t: Tiling):
  out, lse = _forward(q, k, v, bias, t)
  out = out.astype(q.dtype)
  return out, (q, k, v, bias, out, lse)


def _attention_bwd(t: Tiling, residuals, g):
  q, k, v, bias, out, lse = residuals
  delta = jnp.einsum("blhd,blhd->bhl", g.astype(jnp.float32), out.astype(jnp.float32))
  dq, dk, dv, dbias = _backward(q, k, v, bias, g, lse, delta, t)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dbias


_blocked = jax.custom_vjp(_attention_impl, nondiff_argnums=(4,))
_blocked.defvjp(_attention_fwd, _attention_bwd)


def blocked_attention(q, k, v, *, bias=None, scale=None, precision=None, block_q=None,
                      block_k=None, heads_per_tile=None):
  """softmax(scale q k^T + bias) v, q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D] in q's
  dtype, by tiles of ``heads_per_tile`` heads x ``block_q`` x ``block_k`` (defaults
  :func:`default_heads_per_tile`, :func:`default_block_q`, :data:`BLOCK_K`)."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
    raise ValueError(f"blocked attention takes q [B, Lq, H, D] and k, v [B, Lk, H, D] of one "
                     f"batch, heads and head_dim; got q {q.shape}, k {k.shape}, v {v.shape}")
  t = tiling(q.shape, k.shape, scale, precision, block_q, block_k, heads_per_tile)
  return _blocked(q, k, v, bias, t)
