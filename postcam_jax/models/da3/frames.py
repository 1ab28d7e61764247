"""Views (frames) over the mesh: DA3's attention and per-frame work, sharded and memory-bounded.

Activations keep the layout [B, S, N, C] (views, tokens per view) with the view axis under the
logical name ``frames`` (``postcam_jax.parallel.LOGICAL_RULES``). The number of views is padded to
a multiple of the devices that axis spans (:func:`frame_devices`); padded views are computed
frame-locally and never reach a real view: cross-view attention only sees the first
``valid`` views as keys, and the model drops them at the end.

- Frame-local attention is embarrassingly parallel; the views of one device are processed in
  sequential chunks so the logits stay under a byte budget.
- Cross-view attention runs under ``shard_map``: each device all-gathers the keys and values of
  the valid views and attends with its own queries, in query chunks under the same budget. Every
  call goes through the project's one attention entry point.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel
from postcam_jax.models.attention import attention

FRAMES = "frames"


def _mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh


def frame_axes(mesh=None) -> tuple[str, ...]:
  """The mesh axes (of size > 1) that the view axis is split over."""
  mesh = mesh if mesh is not None else _mesh()
  if mesh is None:
    return ()
  entry = parallel.logical_to_spec((FRAMES,))[0]
  axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
  sizes = dict(mesh.shape)
  return tuple(a for a in axes if sizes.get(a, 1) > 1)


def frame_devices(mesh=None) -> int:
  mesh = mesh if mesh is not None else _mesh()
  if mesh is None:
    return 1
  sizes = dict(mesh.shape)
  return math.prod(sizes[a] for a in frame_axes(mesh))


def constrain_frames(x):
  """Constrain [B, S, ...] to the view axis split over the mesh (a no-op without a mesh)."""
  return parallel.constrain(x, (None, FRAMES) + (None,) * (x.ndim - 2))


def _smallest_divisor_at_least(m: int, k: int) -> int:
  """The smallest divisor of ``m`` that is >= ``k`` (``m`` itself at worst)."""
  for d in range(max(1, k), m + 1):
    if m % d == 0:
      return d
  return m


def map_frames(fn, tree, bytes_per_frame: int, budget: int):
  """``fn`` over the views of a pytree of [B, S, ...] arrays in sequential steps of at most
  ``budget`` bytes per device; S must be a multiple of the view devices. Step j takes views
  j, j + k, j + 2k, ... (k steps), so each device's share of every step is its own views: no data
  moves between devices."""
  b, s = jax.tree.leaves(tree)[0].shape[:2]
  per_device = s // frame_devices()
  want = math.ceil(per_device * b * bytes_per_frame / max(budget, 1))
  steps = _smallest_divisor_at_least(per_device, want) if want > 1 else 1
  if steps == 1:
    return fn(tree)

  def split(x):
    return jnp.moveaxis(x.reshape(b, s // steps, steps, *x.shape[2:]), 2, 0)

  def join(y):
    return jnp.moveaxis(y, 0, 2).reshape(b, s, *y.shape[3:])

  ys = jax.lax.map(lambda t: fn(jax.tree.map(constrain_frames, t)), jax.tree.map(split, tree))
  return jax.tree.map(join, ys)


def local_attention(q, k, v, *, budget: int, precision=None):
  """Attention within each view: q, k, v [B, S, N, H, D]."""
  b, s, n, h, d = q.shape

  def attend(qkv):
    qi, ki, vi = (t.reshape(-1, n, h, d) for t in qkv)
    return attention(qi, ki, vi, precision=precision).reshape(b, -1, n, h, d)

  return map_frames(attend, (q, k, v), n * n * h * 4, budget)


def _chunked_queries(q, k, v, budget, precision):
  """q [B, Lq, H, D] against all of k, v [B, Lk, H, D], in query chunks under ``budget``."""
  b, lq, h, d = q.shape
  lk = k.shape[1]
  per_query = max(1, b * h * lk * 4)
  chunk = max(1, min(lq, budget // per_query))
  if chunk >= lq:
    return attention(q, k, v, precision=precision)
  steps = math.ceil(lq / chunk)
  pad = steps * chunk - lq
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  qs = jnp.moveaxis(qp.reshape(b, steps, chunk, h, d), 1, 0)
  out = jax.lax.map(lambda qc: attention(qc, k, v, precision=precision), qs)
  return jnp.moveaxis(out, 0, 1).reshape(b, steps * chunk, h, d)[:, :lq]


def cross_view_attention(q, k, v, *, valid: int, budget: int, precision=None):
  """Attention across all views: q, k, v [B, S, N, H, D]; keys and values of the first ``valid``
  views only (the rest is padding)."""
  b, s, n, h, d = q.shape
  mesh = _mesh()
  axes = frame_axes(mesh)

  def body(ql, kl, vl):
    if axes:
      kl = jax.lax.all_gather(kl, axes, axis=1, tiled=True)
      vl = jax.lax.all_gather(vl, axes, axis=1, tiled=True)
    kf = kl[:, :valid].reshape(b, valid * n, h, d)
    vf = vl[:, :valid].reshape(b, valid * n, h, d)
    sl = ql.shape[1]
    o = _chunked_queries(ql.reshape(b, sl * n, h, d), kf, vf, budget, precision)
    return o.reshape(b, sl, n, h, d)

  if not axes:
    return body(q, k, v)
  spec = P(None, axes if len(axes) > 1 else axes[0], None, None, None)
  return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                       axis_names=set(axes), check_vma=False)(q, k, v)
