"""DA3's DINOv2 backbone: patch embedding, position table, the block stacks and their schedule.

Changes to DINOv2 (facts of depth-anything-3 0.1.1, ``model/dinov2/vision_transformer.py``):
from ``alt_start`` on, odd blocks attend across all views (cross-view) and even blocks within each
view; blocks from ``qknorm_start`` have per-head LayerNorms on q and k; blocks from ``rope_start``
apply 2D RoPE (frame-local positions (row+1, col+1), cross-view positions all 1, the token at 0).
Before block ``alt_start - 1`` the reference view is chosen (:mod:`.reference_view`); at block
``alt_start`` every view's class token is replaced by a camera token (the reference view's own,
or the encoded input poses). The features of the ``out_layers`` are ``[frame-local x, norm(x)]``
(``cat_token``) and the camera-token features are ``[frame-local x, x]`` at token 0.

Blocks of one parameter structure are one ``nnx.vmap`` stack (without and with QK-norm); each run
between two schedule events is one ``lax.scan`` over a slice of its stack, with ``lax.cond``
choosing frame-local or cross-view attention per block.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postcam_jax.models.da3 import blocks, frames, layers
from postcam_jax.models.da3.config import BackboneConfig
from postcam_jax.models.da3.layers import LayerNorm
from postcam_jax.models.da3.reference_view import MIN_VIEWS, select_reference_view


@dataclasses.dataclass(frozen=True)
class Segment:
  """Blocks ``start..stop-1`` (global indices) of one stack, between two schedule events."""
  start: int
  stop: int
  qknorm: bool
  rope: bool


def schedule(cfg: BackboneConfig) -> list[Segment]:
  cuts = {0, cfg.depth}
  for v in (cfg.qknorm_start, cfg.rope_start, cfg.alt_start):
    if v > 0:
      cuts.add(v)
  if cfg.alt_start > 0:
    cuts.add(cfg.alt_start - 1)
  cuts.update(i + 1 for i in cfg.out_layers)
  edges = sorted(c for c in cuts if 0 <= c <= cfg.depth)
  return [Segment(a, b, cfg.qknorm(a), cfg.rope(a)) for a, b in zip(edges[:-1], edges[1:])]


@dataclasses.dataclass(frozen=True)
class BackboneOutput:
  features: tuple        # 4 x [B, S, P, feature_dim] (patch tokens)
  camera_tokens: tuple   # 4 x [B, S, feature_dim]
  ref_view: jax.Array    # [B] int32
  ref_cls_tokens: jax.Array | None  # [B, valid, C] the selection's input (None: not selected)


jax.tree_util.register_dataclass(BackboneOutput, data_fields=["features", "camera_tokens",
                                                              "ref_view", "ref_cls_tokens"],
                                 meta_fields=[])


class Backbone(nnx.Module):
  def __init__(self, cfg: BackboneConfig, *, dtype=jnp.float32, remat: str = "none",
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = remat
    d, p = cfg.embed_dim, cfg.patch_size
    init = nnx.initializers.normal(0.02)
    self.patch_kernel = nnx.Param(init(rngs.params(), (p, p, 3, d), jnp.float32),
                                  out_sharding=(None, None, None, "embed"))
    self.patch_bias = nnx.Param(jnp.zeros((d,), jnp.float32), out_sharding=("embed",))
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, d), jnp.float32),
                               out_sharding=(None, None, "embed"))
    self.camera_token = (nnx.Param(init(rngs.params(), (1, 2, d), jnp.float32),
                                   out_sharding=(None, None, "embed"))
                         if cfg.alt_start != -1 else None)
    self.pos_embed = nnx.Param(init(rngs.params(), (1, 1 + cfg.pos_grid ** 2, d), jnp.float32),
                               out_sharding=(None, None, "embed"))
    split = cfg.qknorm_start if cfg.qknorm_start != -1 else cfg.depth

    def factory(qknorm):
      return lambda r: blocks.Block(d, cfg.num_heads, cfg.ffn_hidden, ffn=cfg.ffn, qknorm=qknorm,
                                    eps=1e-6, dtype=dtype, rngs=r)

    self.blocks = blocks.make_stacked(factory(False), split, rngs) if split > 0 else None
    self.qk_blocks = (blocks.make_stacked(factory(True), cfg.depth - split, rngs)
                      if split < cfg.depth else None)
    self.norm = LayerNorm(d, eps=1e-5)

  # -- embedding --------------------------------------------------------------------------------

  def position_table(self, gh: int, gw: int):
    """[1 + gh*gw, D]: the class position and the 37x37 table resized bicubically as the release
    does (scale factors (g + 0.1) / 37; identity at 37x37)."""
    pos = self.pos_embed[...][0].astype(jnp.float32)
    m = self.cfg.pos_grid
    if (gh, gw) == (m, m):
      return pos
    ry = jnp.asarray(layers.bicubic_matrix(m, gh, (gh + 0.1) / m))
    rx = jnp.asarray(layers.bicubic_matrix(m, gw, (gw + 0.1) / m))
    grid = pos[1:].reshape(m, m, -1)
    grid = jnp.einsum("ym,mnd,xn->yxd", ry, grid, rx, precision=layers.HIGHEST)
    return jnp.concatenate([pos[:1], grid.reshape(gh * gw, -1)], axis=0)

  def embed(self, images):
    """images [B, S, H, W, 3] (normalised) -> tokens [B, S, 1 + gh*gw, D] float32."""
    b, s, h, w, _ = images.shape
    p = self.cfg.patch_size
    gh, gw = layers.num_patches(h, w, p)
    x = images.astype(jnp.float32).reshape(b, s, gh, p, gw, p, 3)
    x = jnp.einsum("bsiajcz,aczd->bsijd", x, self.patch_kernel[...], precision=layers.HIGHEST)
    x = x.reshape(b, s, gh * gw, -1) + self.patch_bias[...]
    cls = jnp.broadcast_to(self.cls_token[...], (b, s, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=2) + self.position_table(gh, gw)
    return frames.constrain_frames(x)

  # -- blocks -----------------------------------------------------------------------------------

  def _stack(self, seg: Segment):
    cfg = self.cfg
    split = cfg.qknorm_start if cfg.qknorm_start != -1 else cfg.depth
    return (self.qk_blocks, split) if seg.qknorm else (self.blocks, 0)

  def run(self, x, seg: Segment, local_x, *, valid: int, grid, budget: int):
    """Blocks of one segment; returns (x, local_x)."""
    cfg = self.cfg
    prec = layers.precision_of(self.dtype)
    stack, offset = self._stack(seg)
    gh, gw = grid
    local_rope = global_rope = None
    if seg.rope:
      local_rope = tuple(jnp.asarray(t) for t in layers.rope_tables(
          gh, gw, cfg.head_dim, cfg.rope_freq, False))
      global_rope = tuple(jnp.asarray(t) for t in layers.rope_tables(
          gh, gw, cfg.head_dim, cfg.rope_freq, True))

    def local_attend(q, k, v):
      return frames.local_attention(q, k, v, budget=budget, precision=prec)

    def global_attend(q, k, v):
      return frames.cross_view_attention(q, k, v, valid=valid, budget=budget, precision=prec)

    mixed = any(cfg.is_global(i) for i in range(seg.start, seg.stop))

    def body(block, carry, layer):
      x, lx = carry
      index = layer + offset
      if not mixed:
        y = block(x, local_attend, local_rope)
        return frames.constrain_frames(y), frames.constrain_frames(y)
      is_global = jnp.logical_and(index >= cfg.alt_start, index % 2 == 1)
      y = jax.lax.cond(is_global, lambda: block(x, global_attend, global_rope),
                       lambda: block(x, local_attend, local_rope))
      y = frames.constrain_frames(y)
      return y, jnp.where(is_global, lx, y)

    return blocks.scan_range(stack, seg.start - offset, seg.stop - offset, (x, local_x), body,
                             self.remat)

  def camera_tokens(self, b: int, s: int, ref_view):
    """[B, S, D]: the reference view's camera token for ``ref_view``, the other one elsewhere."""
    tok = self.camera_token[...][0].astype(jnp.float32)
    is_ref = (jnp.arange(s)[None, :] == ref_view[:, None])[..., None]
    return jnp.where(is_ref, tok[0], tok[1])

  def __call__(self, images, *, valid: int | None = None, cam_token=None,
               ref_view_strategy: str = "saddle_balanced",
               budget: int = 1 << 30) -> BackboneOutput:
    """Features of images [B, S, H, W, 3] (S views, the first ``valid`` real, the rest padding).

    ``cam_token`` [B, S, D]: encoded input poses (no reference view is chosen then).
    """
    cfg = self.cfg
    b, s, h, w, _ = images.shape
    valid = s if valid is None else valid
    grid = layers.num_patches(h, w, cfg.patch_size)
    x = self.embed(images)
    local_x = x
    ref_view = jnp.zeros((b,), jnp.int32)
    ref_cls = None
    outputs = []
    for seg in schedule(cfg):
      if seg.start == cfg.alt_start - 1 and valid >= MIN_VIEWS and cam_token is None:
        ref_cls = x[:, :valid, 0]
        ref_view = select_reference_view(ref_cls, ref_view_strategy)
      if seg.start == cfg.alt_start and cfg.alt_start != -1:
        tok = cam_token if cam_token is not None else self.camera_tokens(b, s, ref_view)
        x = x.at[:, :, 0].set(tok.astype(x.dtype))
        # The release writes the token in place into the tensor that its frame-local features
        # alias (block alt_start - 1 is frame-local): they carry it too.
        local_x = local_x.at[:, :, 0].set(tok.astype(x.dtype))
      x, local_x = self.run(x, seg, local_x, valid=valid, grid=grid, budget=budget)
      if seg.stop - 1 in cfg.out_layers:
        outputs.append(jnp.concatenate([local_x, x], axis=-1) if cfg.cat_token else x)
    feats, cams = [], []
    d = cfg.embed_dim
    for out in outputs:
      cams.append(out[:, :, 0])
      if cfg.cat_token:
        f = jnp.concatenate([out[..., 1:, :d], self.norm(out[..., 1:, d:])], axis=-1)
      else:
        f = self.norm(out[..., 1:, :])
      feats.append(frames.constrain_frames(f))
    return BackboneOutput(tuple(feats), tuple(cams), ref_view, ref_cls)


def count(module) -> int:
  return int(sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(module, nnx.Param))))

