"""The Wan2.1 text-to-video DiT in Flax NNX, channels-last.

``y = WanModel(cfg, rngs=...)(latents [B,F,H,W,in_dim], timesteps [B], context [B,L,text_dim])``
returns the float32 velocity [B,F,H,W,out_dim]. Facts: ``../shared/spec/wan2.1.md`` sections 1-2.
Blocks are created with ``nnx.vmap`` (stacked on a leading ``layers`` axis) and run with
``jax.lax.scan``, optionally rematerialised with a named checkpoint policy.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postcam_jax import parallel
from postcam_jax.core.config import DictConfig, from_preset
from postcam_jax.models import layers
from postcam_jax.models.attention import attention
from postcam_jax.models.layers import Rope
from postcam_jax.models.precision import Policy, get_policy


@dataclasses.dataclass(frozen=True)
class WanConfig(DictConfig):
  """Architecture and execution options of the Wan2.1 DiT."""
  dim: int = 1536
  ffn_dim: int = 8960
  num_heads: int = 12
  num_layers: int = 30
  in_dim: int = 16
  out_dim: int = 16
  text_dim: int = 4096
  text_len: int = 512
  freq_dim: int = 256
  eps: float = 1e-6
  patch_size: tuple[int, int, int] = (1, 2, 2)
  precision: str = "float32"     # float32 | mixed | release (precision.POLICIES)
  remat: str = "none"            # none | full | dots | dots_no_batch | everything
  attention: str = "sequence"    # self-attention kernel: "sequence" = sequence-parallel on a
                                 # mesh with a sequence axis, the backend's kernel otherwise

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def policy(self) -> Policy:
    return get_policy(self.precision)

  @classmethod
  def t2v_1_3b(cls, **kw):
    return cls(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, **kw)

  @classmethod
  def t2v_14b(cls, **kw):
    return cls(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, **kw)

  @classmethod
  def tiny(cls, **kw):
    base = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=32)
    base.update(kw)
    return cls(**base)

  def __post_init__(self):
    if self.dim % self.num_heads:
      raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
    get_policy(self.precision)
    layers.remat_policy(self.remat)


class Attention(nnx.Module):
  """Wan's attention parameter set: q, k, v, o (with bias) and full-width RMSNorms on q and k."""

  def __init__(self, dim: int, num_heads: int, *, eps: float, policy: Policy, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.policy = policy
    self.q = layers.linear(dim, dim, ("embed", "qkv"), policy=policy, rngs=rngs)
    self.k = layers.linear(dim, dim, ("embed", "qkv"), policy=policy, rngs=rngs)
    self.v = layers.linear(dim, dim, ("embed", "qkv"), policy=policy, rngs=rngs)
    self.o = layers.linear(dim, dim, ("qkv", "embed"), policy=policy, rngs=rngs)
    self.norm_q = layers.RMSNorm(dim, eps=eps, policy=policy)
    self.norm_k = layers.RMSNorm(dim, eps=eps, policy=policy)

  def split_heads(self, x):
    b, l, d = x.shape
    return x.reshape(b, l, self.num_heads, d // self.num_heads)

  def queries(self, x, rope: Rope | None = None):
    q = self.split_heads(self.norm_q(self.q(x)))
    return layers.apply_rope(q, rope) if rope is not None else q

  def keys_values(self, x, rope: Rope | None = None, k_proj=None, v_proj=None):
    k = self.split_heads(self.norm_k((k_proj or self.k)(x)))
    v = self.split_heads((v_proj or self.v)(x))
    return (layers.apply_rope(k, rope) if rope is not None else k), v

  def output(self, o):
    b, l, h, d = o.shape
    return self.o(o.reshape(b, l, h * d))

  def __call__(self, x, context=None, rope: Rope | None = None, implementation="auto"):
    """Self-attention (context None, RoPE on q and k) or cross-attention (no RoPE)."""
    q = self.queries(x, rope if context is None else None)
    k, v = self.keys_values(x if context is None else context, rope if context is None else None)
    o = attention(q, k, v, implementation=implementation if context is None else "auto",
                  precision=self.policy.matmul_precision)
    return self.output(o)


class FeedForward(nnx.Module):
  def __init__(self, dim: int, ffn_dim: int, *, policy: Policy, rngs: nnx.Rngs):
    self.fc1 = layers.linear(dim, ffn_dim, ("embed", "mlp"), policy=policy, rngs=rngs)
    self.fc2 = layers.linear(ffn_dim, dim, ("mlp", "embed"), policy=policy, rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class WanBlock(nnx.Module):
  """One DiT block. Its pieces are methods so PostCam's block can extend it (not copy it)."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    p = cfg.policy
    self.cfg = cfg
    init = nnx.initializers.normal(1.0 / math.sqrt(cfg.dim))
    self.modulation = nnx.Param(init(rngs.params(), (1, 6, cfg.dim), p.param_dtype),
                                out_sharding=("modulation", None, "embed"))
    self.self_attn = Attention(cfg.dim, cfg.num_heads, eps=cfg.eps, policy=p, rngs=rngs)
    self.norm3 = layers.LayerNorm(cfg.dim, eps=cfg.eps, affine=True, policy=p)
    self.cross_attn = Attention(cfg.dim, cfg.num_heads, eps=cfg.eps, policy=p, rngs=rngs)
    self.ffn = FeedForward(cfg.dim, cfg.ffn_dim, policy=p, rngs=rngs)
    self._norm = layers.LayerNorm(cfg.dim, eps=cfg.eps, affine=False, policy=p)

  def modulation_vectors(self, e0):
    """(shift, scale, gate) for self-attention and for the FFN, each [B, 1, D]."""
    m = self.modulation[...].astype(e0.dtype) + e0
    return tuple(m[:, i:i + 1] for i in range(6))

  def modulated(self, x, shift, scale):
    return self._norm(x) * (1 + scale) + shift

  @jax.named_scope("self_attn")
  def self_attention_update(self, x, mod, rope: Rope):
    """x + gate * SelfAttn(LN1(x)(1+scale)+shift); also returns the modulated input."""
    h = self.modulated(x, mod[0], mod[1])
    y = self.self_attn(h, rope=rope, implementation=self.cfg.attention)
    return x + y.astype(x.dtype) * mod[2], h

  @jax.named_scope("text_attn")
  def text_update(self, y, context):
    """Text cross-attention of already-normed tokens ``y`` (LN3 output)."""
    return self.cross_attn(y, context=context)

  @jax.named_scope("ffn")
  def ffn_update(self, x, mod):
    y = self.ffn(self.modulated(x, mod[3], mod[4]))
    return x + y.astype(x.dtype) * mod[5]

  def __call__(self, x, e0, context, rope: Rope):
    mod = self.modulation_vectors(e0)
    x, _ = self.self_attention_update(x, mod, rope)
    x = x + self.text_update(self.norm3(x), context).astype(x.dtype)
    x = self.ffn_update(x, mod)
    return parallel.constrain(x, ("batch", "length", "act_embed"))


class PatchEmbedding(nnx.Module):
  """Conv3d(kernel = stride = patch) as one matmul; odd trailing rows/cols are floored (dropped)."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    pt, ph, pw = cfg.patch_size
    p = cfg.policy
    self.patch_size = cfg.patch_size
    self.policy = p
    init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2, 3),
                                             out_axis=4)
    self.kernel = nnx.Param(init(rngs.params(), (pt, ph, pw, cfg.in_dim, cfg.dim), p.param_dtype),
                            out_sharding=(None, None, None, "patch", "embed"))
    self.bias = nnx.Param(jnp.zeros((cfg.dim,), p.param_dtype), out_sharding=("embed",))

  def __call__(self, x):
    """[B, F, H, W, C] -> tokens [B, F'*H'*W', D] and the grid (F', H', W')."""
    pt, ph, pw = self.patch_size
    b, f, h, w, c = x.shape
    gf, gh, gw = f // pt, h // ph, w // pw
    x = x[:, :gf * pt, :gh * ph, :gw * pw]
    x = x.reshape(b, gf, pt, gh, ph, gw, pw, c)
    cd = self.policy.compute_dtype
    tokens = jnp.einsum("bfthywxc,tyxcd->bfhwd", x.astype(cd), self.kernel[...].astype(cd),
                        precision=self.policy.matmul_precision,
                        preferred_element_type=jnp.float32)
    tokens = tokens + self.bias[...].astype(jnp.float32)
    return tokens.reshape(b, gf * gh * gw, -1), (gf, gh, gw)


class Head(nnx.Module):
  """LN(x)(1+scale)+shift with (shift, scale) = modulation + e, then Linear to the patch volume."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    p = cfg.policy
    out = cfg.out_dim * math.prod(cfg.patch_size)
    init = nnx.initializers.normal(1.0 / math.sqrt(cfg.dim))
    self.modulation = nnx.Param(init(rngs.params(), (1, 2, cfg.dim), p.param_dtype),
                                out_sharding=("modulation", None, "embed"))
    self.head = layers.linear(cfg.dim, out, ("embed", "out_patch"), policy=p, rngs=rngs,
                              dtype=p.residual_dtype, kernel_init=nnx.initializers.zeros_init())
    self._norm = layers.LayerNorm(cfg.dim, eps=cfg.eps, affine=False, policy=p)

  def __call__(self, x, e):
    m = self.modulation[...].astype(e.dtype) + e[:, None, :]
    shift, scale = m[:, 0:1], m[:, 1:2]
    return self.head(self._norm(x) * (1 + scale) + shift)


class MLP2(nnx.Module):
  """Linear -> activation -> Linear (Wan's text and time embeddings)."""

  def __init__(self, din, dout, in_axis, activation, *, policy, dtype, rngs, init=None):
    kw = {} if init is None else {"kernel_init": init}
    self.fc1 = layers.linear(din, dout, (in_axis, "embed"), policy=policy, rngs=rngs, dtype=dtype,
                             **kw)
    self.fc2 = layers.linear(dout, dout, ("embed", "embed"), policy=policy, rngs=rngs, dtype=dtype,
                             **kw)
    self.activation = activation

  def __call__(self, x):
    return self.fc2(self.activation(self.fc1(x)))


def _gelu_tanh(x):
  return jax.nn.gelu(x, approximate=True)


def make_stacked(block_factory, num_layers: int, rngs: nnx.Rngs):
  """``num_layers`` copies of a block, stacked on a leading ``layers`` axis (one compile)."""

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def create(r):
    return block_factory(r)

  return create(rngs)


def scan_blocks(blocks, carry, body, remat: str = "none"):
  """Run ``carry = body(block, carry)`` over the stacked blocks with ``lax.scan``."""
  graphdef, state = nnx.split(blocks)

  def step(c, block_state):
    return body(nnx.merge(graphdef, block_state), c), None

  policy = layers.remat_policy(remat)
  if policy is not None:
    step = jax.checkpoint(step, policy=policy, prevent_cse=False)
  carry, _ = jax.lax.scan(step, carry, state)
  return carry


class WanModel(nnx.Module):
  """The Wan2.1 T2V DiT."""

  def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
    p = cfg.policy
    self.cfg = cfg
    self.patch_embedding = PatchEmbedding(cfg, rngs=rngs)
    std02 = nnx.initializers.normal(0.02)
    self.text_embedding = MLP2(cfg.text_dim, cfg.dim, "text_embed", _gelu_tanh, policy=p,
                               dtype=p.compute_dtype, rngs=rngs, init=std02)
    self.time_embedding = MLP2(cfg.freq_dim, cfg.dim, "freq", jax.nn.silu, policy=p,
                               dtype=p.residual_dtype, rngs=rngs, init=std02)
    self.time_projection = layers.linear(cfg.dim, 6 * cfg.dim, ("embed", "modulation"), policy=p,
                                         rngs=rngs, dtype=p.residual_dtype)
    self.blocks = make_stacked(self.make_block, cfg.num_layers, rngs)
    self.head = Head(cfg, rngs=rngs)

  def make_block(self, rngs):
    return WanBlock(self.cfg, rngs=rngs)

  # -- input checks ---------------------------------------------------------------------------

  def check_latents(self, latents, name="latents"):
    cfg = self.cfg
    if latents.ndim != 5 or latents.shape[-1] != cfg.in_dim:
      raise ValueError(f"{name} must be [B, F, H, W, {cfg.in_dim}] (channels-last); "
                       f"got shape {tuple(latents.shape)}")
    for size, p, axis in zip(latents.shape[1:4], cfg.patch_size, "FHW"):
      if size % p:
        raise ValueError(f"{name}: {axis}={size} is not divisible by the patch size {p} "
                         f"(expected a multiple of {p}, got shape {tuple(latents.shape)})")

  def check_context(self, context, batch):
    cfg = self.cfg
    if context.ndim != 3 or context.shape[-1] != cfg.text_dim or context.shape[0] != batch:
      raise ValueError(f"context must be [B={batch}, L<={cfg.text_len}, {cfg.text_dim}]; got "
                       f"shape {tuple(context.shape)}")
    if context.shape[1] > cfg.text_len:
      raise ValueError(f"context has L={context.shape[1]} tokens, more than text_len="
                       f"{cfg.text_len} (expected [B, L<={cfg.text_len}, {cfg.text_dim}])")

  def check_timesteps(self, timesteps, batch):
    if timesteps.ndim != 1 or timesteps.shape[0] != batch:
      raise ValueError(f"timesteps must be [B={batch}] on the 0..1000 scale; got shape "
                       f"{tuple(timesteps.shape)}")

  # -- embeddings -----------------------------------------------------------------------------

  def embed_time(self, timesteps):
    """e [B, D] (feeds the head) and e0 [B, 6, D] (feeds every block), residual dtype."""
    cfg, p = self.cfg, self.cfg.policy
    if p.bf16_timestep:
      sin = layers.sinusoidal_embedding_bf16(timesteps, cfg.freq_dim)
    else:
      sin = layers.sinusoidal_embedding(timesteps, cfg.freq_dim)
    e = self.time_embedding(sin.astype(p.residual_dtype)).astype(p.residual_dtype)
    e0 = self.time_projection(jax.nn.silu(e)).astype(p.residual_dtype)
    return e, e0.reshape(e.shape[0], 6, cfg.dim)

  def embed_text(self, context):
    """Zero-pad to text_len *before* the MLP (padded rows are attended to, as in Wan)."""
    cfg = self.cfg
    pad = cfg.text_len - context.shape[1]
    context = jnp.pad(context, ((0, 0), (0, pad), (0, 0)))
    return self.text_embedding(context)

  def embed_latents(self, latents):
    tokens, grid = self.patch_embedding(latents)
    tokens = tokens.astype(self.cfg.policy.residual_dtype)
    return parallel.constrain(tokens, ("batch", "length", "act_embed")), grid

  def unpatchify(self, y, grid):
    """[B, L, pt*ph*pw*C] ((pt, ph, pw, c) with c fastest) -> [B, F, H, W, C] float32."""
    pt, ph, pw = self.cfg.patch_size
    gf, gh, gw = grid
    b = y.shape[0]
    c = self.cfg.out_dim
    y = y.reshape(b, gf, gh, gw, pt, ph, pw, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return y.reshape(b, gf * pt, gh * ph, gw * pw, c).astype(jnp.float32)

  def rope_for_grid(self, grid, f_offset=0) -> Rope:
    """RoPE of the (F', H', W') token grid, frames from ``f_offset``, built in the graph."""
    f, h, w = grid
    return layers.rope_grid(jnp.arange(f) + f_offset, jnp.arange(h), jnp.arange(w),
                            self.cfg.head_dim)

  # -- forward --------------------------------------------------------------------------------

  def __call__(self, latents, timesteps, context):
    b = latents.shape[0]
    self.check_latents(latents)
    self.check_timesteps(timesteps, b)
    self.check_context(context, b)
    e, e0 = self.embed_time(timesteps)
    ctx = self.embed_text(context)
    x, grid = self.embed_latents(latents)
    rope = self.rope_for_grid(grid)
    x = scan_blocks(self.blocks, x, lambda blk, x: blk(x, e0, ctx, rope), self.cfg.remat)
    return self.unpatchify(self.head(x, e), grid)


def init_model(cls, cfg, seed: int = 0, mesh=None):
  """Build a model with random weights; with ``mesh``, created sharded under jit."""
  if mesh is None:
    return cls(cfg, rngs=nnx.Rngs(seed))
  abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(seed)))
  shardings = parallel.param_shardings(nnx.state(abstract), mesh)

  @jax.jit
  def create():
    model = cls(cfg, rngs=nnx.Rngs(seed))
    return nnx.state(model)

  with jax.set_mesh(mesh):
    state = jax.jit(lambda: nnx.to_pure_dict(create()), out_shardings=shardings)()
  graphdef, abstract_state = nnx.split(abstract)
  nnx.replace_by_pure_dict(abstract_state, state)
  return nnx.merge(graphdef, abstract_state)


def count_params(module) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


def config_from_dict(model_config, cls=WanConfig):
  """``{'preset': 't2v_1_3b', **overrides}`` (e.g. a ConfigDict's ``model``) -> typed config."""
  return from_preset(cls, dict(model_config))
