"""umT5 encoder (Wan2.1's text encoder, umT5-XXL) in Flax NNX.

Pre-norm T5 blocks with a relative-position bias in *every* layer (umT5: not shared), bidirectional
buckets (32, max distance 128), attention without the 1/sqrt(d) scaling and with an fp32 softmax,
a gated tanh-GELU FFN ``fc2(fc1(x) * gelu_tanh(gate(x)))``, no biases, T5 RMSNorm (fp32 variance,
eps 1e-6) and a final norm. Outputs at padded positions are exactly zero. The blocks are stacked
(``nnx.vmap``) and run with ``lax.scan``. Facts: ``../shared/spec/wan2.1.md`` 4.2, pitfall 14.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postcam_jax.core.config import DictConfig
from postcam_jax.models import precision
from postcam_jax.models.attention import attention


@dataclasses.dataclass(frozen=True)
class UMT5Config(DictConfig):
  """Architecture of a umT5 encoder. ``umt5_xxl()`` is Wan2.1's (5.68e9 parameters)."""
  vocab_size: int = 256384
  dim: int = 4096
  num_heads: int = 64
  head_dim: int = 64
  ffn_dim: int = 10240
  num_layers: int = 24
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  text_len: int = 512

  @classmethod
  def umt5_xxl(cls) -> "UMT5Config":
    return cls()

  @classmethod
  def tiny(cls) -> "UMT5Config":
    return cls(vocab_size=256, dim=32, num_heads=4, head_dim=8, ffn_dim=48, num_layers=2,
               text_len=16)



@functools.cache
def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets [query, key] (int32) for a ``length``-token sequence.

  Half the buckets per direction (keys after the query get the upper half); the first half of
  those are exact distances, the rest log-spaced up to ``max_distance``. The log is taken in
  float32 as the references do, so the boundaries match them exactly.
  """
  pos = np.arange(length)
  rel = pos[None, :] - pos[:, None]  # key - query
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  n = np.abs(rel)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    ratio = (np.log(n.astype(np.float32) / np.float32(max_exact))
             / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = np.minimum(max_exact + np.where(n >= max_exact, ratio, 0).astype(np.int64), half - 1)
  return (buckets + np.where(n < max_exact, n, large)).astype(np.int32)


class T5RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) with the statistics in fp32, then * weight."""

  def __init__(self, dim: int, *, eps: float, param_dtype):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * self.weight[...].astype(x.dtype)


def _dense(cin, cout, names, *, rngs, dtype, param_dtype):
  init = nnx.initializers.normal(stddev=cin ** -0.5)
  return nnx.Linear(cin, cout, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                    precision=precision.uniform(dtype).matmul_precision,
                    kernel_init=nnx.with_partitioning(init, names),
                    rngs=rngs)


class T5Block(nnx.Module):
  """One encoder layer: self-attention (with this layer's position bias) and the gated FFN."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    inner = cfg.num_heads * cfg.head_dim
    self.cfg = cfg
    self.dtype = dtype
    self.policy = precision.uniform(dtype)
    self.norm1 = T5RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=param_dtype)
    self.q = _dense(cfg.dim, inner, ("embed", "qkv"), **kw)
    self.k = _dense(cfg.dim, inner, ("embed", "qkv"), **kw)
    self.v = _dense(cfg.dim, inner, ("embed", "qkv"), **kw)
    self.o = _dense(inner, cfg.dim, ("qkv", "embed"), **kw)
    self.pos_embedding = nnx.Param(
        jax.random.normal(rngs.params(), (cfg.num_buckets, cfg.num_heads), param_dtype),
        out_sharding=(None, None))
    self.norm2 = T5RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=param_dtype)
    self.gate = _dense(cfg.dim, cfg.ffn_dim, ("embed", "mlp"), **kw)
    self.fc1 = _dense(cfg.dim, cfg.ffn_dim, ("embed", "mlp"), **kw)
    self.fc2 = _dense(cfg.ffn_dim, cfg.dim, ("mlp", "embed"), **kw)

  def __call__(self, x, mask, buckets):
    """x [B, L, D]; mask [B, L] (True = real token); buckets [L, L] int32."""
    b, l, _ = x.shape
    heads, hd = self.cfg.num_heads, self.cfg.head_dim
    h = self.norm1(x)
    q = self.q(h).reshape(b, l, heads, hd)
    k = self.k(h).reshape(b, l, heads, hd)
    v = self.v(h).reshape(b, l, heads, hd)
    position = jnp.take(self.pos_embedding[...], buckets, axis=0).transpose(2, 0, 1)  # [H, L, L]
    padding = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)  # [B, 1, 1, L]
    # No 1/sqrt(d) scaling (T5 folds it into the initialisation).
    attn = attention(q, k, v, bias=position[None].astype(jnp.float32) + padding, scale=1.0,
                     precision=self.policy.matmul_precision)
    x = x + self.o(attn.reshape(b, l, heads * hd))
    h = self.norm2(x)
    gated = self.fc1(h) * jax.nn.gelu(self.gate(h), approximate=True)
    return x + self.fc2(gated)


class UMT5Encoder(nnx.Module):
  """Token ids [B, L] + attention mask [B, L] -> hidden states [B, L, D], zero where padded."""

  def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    self.cfg = cfg
    self.dtype = dtype
    self.token_embedding = nnx.Embed(
        cfg.vocab_size, cfg.dim, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ("vocab", "embed")),
        rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(r):
      return T5Block(cfg, rngs=r, dtype=dtype, param_dtype=param_dtype)

    self.blocks = make_blocks(rngs)
    self.norm = T5RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=param_dtype)

  def __call__(self, ids, mask):
    ids = jnp.asarray(ids)
    mask = jnp.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
      raise ValueError(f"ids and mask must both be [B, L], got {ids.shape} and {mask.shape}")
    mask = mask.astype(bool)
    buckets = jnp.asarray(relative_position_buckets(ids.shape[1], self.cfg.num_buckets,
                                                    self.cfg.max_distance))
    x = self.token_embedding(ids)
    graphdef, state = nnx.split(self.blocks)

    def body(h, layer_state):
      return nnx.merge(graphdef, layer_state)(h, mask, buckets), None

    x, _ = jax.lax.scan(body, x, state)
    x = self.norm(x)
    return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))


@nnx.jit
def encode_ids(model: UMT5Encoder, ids, mask):
  """Jitted ``model(ids, mask)``."""
  return model(ids, mask)
