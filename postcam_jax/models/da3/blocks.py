"""The transformer block DA3 uses (DINOv2's, with optional QK-norm and 2D RoPE), stacked.

``Block`` is pre-norm: ``x + ls1 * attn(norm1(x))`` then ``x + ls2 * ffn(norm2(x))``. Attention
itself is passed in (``attend(q, k, v)`` on [..., L, H, D] tensors), so one parameter set serves
frame-local and cross-view attention. Identical blocks are created stacked with ``nnx.vmap`` (a
leading ``layers`` axis) and run with ``jax.lax.scan`` over any contiguous range of them.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from postcam_jax.models.da3 import layers
from postcam_jax.models.da3.layers import LayerNorm


class Attention(nnx.Module):
  """Fused qkv projection, optional per-head LayerNorm on q and k (eps 1e-5), output proj."""

  def __init__(self, dim: int, num_heads: int, *, qknorm: bool, dtype, rngs: nnx.Rngs):
    self.num_heads = num_heads
    head_dim = dim // num_heads
    self.qkv = layers.linear(dim, 3 * dim, ("embed", "qkv"), dtype=dtype, rngs=rngs)
    self.proj = layers.linear(dim, dim, ("qkv", "embed"), dtype=dtype, rngs=rngs)
    self.q_norm = LayerNorm(head_dim, eps=1e-5) if qknorm else None
    self.k_norm = LayerNorm(head_dim, eps=1e-5) if qknorm else None

  def __call__(self, x, attend: Callable, rope=None):
    *lead, c = x.shape
    qkv = self.qkv(x).reshape(*lead, 3, self.num_heads, c // self.num_heads)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
      cos, sin = rope
      q = _rope(q, cos, sin)
      k = _rope(k, cos, sin)
    o = attend(q, k, v)
    return self.proj(o.reshape(*lead, c))


def _rope(x, cos, sin):
  """RoPE on [..., N, H, D] with tables [N, D]."""
  lead = x.shape[:-3]
  n, h, d = x.shape[-3:]
  flat = x.reshape((-1, n, h, d))
  return layers.apply_rope(flat, cos, sin).reshape(*lead, n, h, d)


class Mlp(nnx.Module):
  def __init__(self, dim: int, hidden: int, out: int | None = None, *, dtype, rngs: nnx.Rngs):
    self.fc1 = layers.linear(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.fc2 = layers.linear(hidden, out or dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.fc2(layers.gelu(self.fc1(x)))


class SwiGLU(nnx.Module):
  """DINOv2-g's FFN: w12 to 2 x hidden, silu(first half) * second half, w3."""

  def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.w12 = layers.linear(dim, 2 * hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.w3 = layers.linear(hidden, dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x):
    a, b = jnp.split(self.w12(x), 2, axis=-1)
    return self.w3(jax.nn.silu(a) * b)


class LayerScale(nnx.Module):
  def __init__(self, dim: int, init: float):
    self.gamma = nnx.Param(jnp.full((dim,), init, jnp.float32), out_sharding=("norm",))

  def __call__(self, x):
    return x * self.gamma[...].astype(x.dtype)


class Block(nnx.Module):
  def __init__(self, dim: int, num_heads: int, hidden: int, *, ffn: str = "mlp",
               qknorm: bool = False, eps: float = 1e-6, ls_init: float = 1.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.norm1 = LayerNorm(dim, eps=eps)
    self.attn = Attention(dim, num_heads, qknorm=qknorm, dtype=dtype, rngs=rngs)
    self.ls1 = LayerScale(dim, ls_init)
    self.norm2 = LayerNorm(dim, eps=eps)
    if ffn == "swiglu":
      self.mlp = SwiGLU(dim, hidden, dtype=dtype, rngs=rngs)
    else:
      self.mlp = Mlp(dim, hidden, dtype=dtype, rngs=rngs)
    self.ls2 = LayerScale(dim, ls_init)

  def __call__(self, x, attend: Callable, rope=None):
    y = self.attn(self.norm1(x), attend, rope)
    x = x + self.ls1(y).astype(x.dtype)
    return x + self.ls2(self.mlp(self.norm2(x))).astype(x.dtype)


def make_stacked(factory: Callable[[nnx.Rngs], nnx.Module], count: int, rngs: nnx.Rngs):
  """``count`` copies of ``factory(rngs)`` stacked on a leading ``layers`` axis."""

  @nnx.split_rngs(splits=count)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return factory(r)

  return create(rngs)


REMAT = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
         "dots": jax.checkpoint_policies.dots_saveable}


def scan_range(stack: nnx.Module, start: int, stop: int, carry, body: Callable,
               remat: str = "none"):
  """``carry = body(block, carry, layer)`` for the stacked blocks ``start..stop-1`` (``layer`` is
  the index within the stack, a traced int32), with ``lax.scan``."""
  if stop <= start:
    return carry
  graphdef, state = nnx.split(stack)
  state = jax.tree.map(lambda a: a[start:stop], state)

  def step(c, xs):
    block_state, layer = xs
    return body(nnx.merge(graphdef, block_state), c, layer), None

  if REMAT[remat] is not None:
    step = jax.checkpoint(step, policy=REMAT[remat], prevent_cse=False)
  carry, _ = jax.lax.scan(step, carry, (state, jnp.arange(start, stop, dtype=jnp.int32)))
  return carry
