"""DA3's dense heads on the backbone features, channels-last: ``DualDPT`` (depth + confidence and
the ray head of the any-view models) and ``DPT`` (depth and sky of the metric/mono models).

Both project the 4 feature levels (1x1 convs), bring them to 4x, 2x, 1x and 1/2x the patch grid
(transposed convs / a stride-2 conv), fuse them top-down with residual conv units and bilinear
(align_corners) upsampling, and upsample to the image. Facts: depth-anything-3 0.1.1
``model/dualdpt.py``, ``model/dpt.py``. The release's ``DualDPT`` computes the ray pre-head on
every pyramid level but returns only the last; only that one is computed here (its 4 conv
layers and the shared LayerNorm; the other levels' weights are dead and are not converted).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from postcam_jax.models.da3 import layers
from postcam_jax.models.da3.config import HeadConfig
from postcam_jax.models.da3.layers import Conv, ConvTranspose, LayerNorm

HEAD_HIDDEN = 32  # head_features_2 of the release


class ResidualConvUnit(nnx.Module):
  def __init__(self, features: int, *, rngs: nnx.Rngs):
    self.conv1 = Conv(features, features, 3, rngs=rngs)
    self.conv2 = Conv(features, features, 3, rngs=rngs)

  def __call__(self, x):
    return self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x)))) + x


class FusionBlock(nnx.Module):
  """(x + rcu1(lateral)) -> rcu2 -> bilinear upsample (to ``size`` or 2x) -> 1x1 conv."""

  def __init__(self, features: int, *, residual: bool = True, rngs: nnx.Rngs):
    self.res1 = ResidualConvUnit(features, rngs=rngs) if residual else None
    self.res2 = ResidualConvUnit(features, rngs=rngs)
    self.out_conv = Conv(features, features, 1, rngs=rngs)

  def __call__(self, x, lateral=None, size=None):
    if self.res1 is not None and lateral is not None:
      x = x + self.res1(lateral)
    x = self.res2(x)
    size = size or (2 * x.shape[1], 2 * x.shape[2])
    return self.out_conv(layers.resize_bilinear(x, size))


class Fusion(nnx.Module):
  """refinenet4 .. refinenet1 of one branch."""

  def __init__(self, features: int, *, rngs: nnx.Rngs):
    self.refine4 = FusionBlock(features, residual=False, rngs=rngs)
    self.refine3 = FusionBlock(features, rngs=rngs)
    self.refine2 = FusionBlock(features, rngs=rngs)
    self.refine1 = FusionBlock(features, rngs=rngs)

  def __call__(self, l1, l2, l3, l4):
    out = self.refine4(l4, size=l3.shape[1:3])
    out = self.refine3(out, l3, size=l2.shape[1:3])
    out = self.refine2(out, l2, size=l1.shape[1:3])
    return self.refine1(out, l1)


class OutputConv(nnx.Module):
  """conv3x3 -> [LayerNorm] -> ReLU -> conv1x1."""

  def __init__(self, cin: int, cout: int, *, norm: LayerNorm | None = None, rngs: nnx.Rngs):
    self.conv1 = Conv(cin, HEAD_HIDDEN, 3, rngs=rngs)
    self.conv2 = Conv(HEAD_HIDDEN, cout, 1, rngs=rngs)
    self.has_norm = norm is not None

  def __call__(self, x, norm: LayerNorm | None = None):
    x = self.conv1(x)
    if norm is not None:
      x = norm(x)
    return self.conv2(jax.nn.relu(x))


class _Pyramid(nnx.Module):
  """Token norm, per-level projection and resizing, and the 3x3 layer adapters."""

  def __init__(self, dim_in: int, cfg: HeadConfig, *, rngs: nnx.Rngs):
    oc = cfg.out_channels
    self.pos_embed = cfg.pos_embed
    self.norm = LayerNorm(dim_in, eps=1e-5) if cfg.norm else None
    self.projects = nnx.List([Conv(dim_in, c, 1, rngs=rngs) for c in oc])
    self.resize0 = ConvTranspose(oc[0], oc[0], 4, rngs=rngs)
    self.resize1 = ConvTranspose(oc[1], oc[1], 2, rngs=rngs)
    self.resize3 = Conv(oc[3], oc[3], 3, stride=2, padding=1, rngs=rngs)
    self.layer_rn = nnx.List([Conv(c, cfg.features, 3, use_bias=False, rngs=rngs) for c in oc])

  def __call__(self, feats, grid, image_hw):
    gh, gw = grid
    levels = []
    for i, f in enumerate(feats):
      n = f.shape[0]
      x = self.norm(f) if self.norm is not None else f
      x = self.projects[i](x.astype(jnp.float32).reshape(n, gh, gw, -1))
      if self.pos_embed:
        x = add_pos_embed(x, image_hw)
      x = (self.resize0, self.resize1, None, self.resize3)[i](x) if i != 2 else x
      levels.append(self.layer_rn[i](x))
    return levels


def add_pos_embed(x, image_hw):
  h, w = image_hw
  return x + jnp.asarray(layers.uv_embedding(x.shape[1], x.shape[2], x.shape[3], w / h))


class DualDPT(nnx.Module):
  """Outputs per frame: depth = exp, depth_conf = exp + 1 (image resolution); ray (6, linear) and
  ray_conf (exp + 1) at 8x the patch grid."""

  def __init__(self, dim_in: int, cfg: HeadConfig, *, rngs: nnx.Rngs):
    f = cfg.features
    self.pyramid = _Pyramid(dim_in, cfg, rngs=rngs)
    self.fusion = Fusion(f, rngs=rngs)
    self.fusion_aux = Fusion(f, rngs=rngs)
    self.output_conv1 = Conv(f, f // 2, 3, rngs=rngs)
    self.output_conv2 = OutputConv(f // 2, cfg.output_dim, rngs=rngs)
    self.aux_conv1 = nnx.List([Conv(c_in, c_out, 3, rngs=rngs) for c_in, c_out in
                               ((f, f // 2), (f // 2, f), (f, f // 2), (f // 2, f),
                                (f, f // 2))])
    self.aux_norm = LayerNorm(HEAD_HIDDEN, eps=1e-5)
    self.aux_conv2 = OutputConv(f // 2, 7, rngs=rngs)

  def __call__(self, feats, grid, image_hw):
    levels = self.pyramid(feats, grid, image_hw)
    main = self.output_conv1(self.fusion(*levels))
    aux = self.fusion_aux(*levels)
    main = layers.resize_bilinear(main, image_hw)
    main = add_pos_embed(main, image_hw)
    logits = self.output_conv2(main)
    for conv in self.aux_conv1:
      aux = conv(aux)
    aux = add_pos_embed(aux, image_hw)
    aux_logits = self.aux_conv2(aux, self.aux_norm)
    return {"depth": jnp.exp(logits[..., 0]), "depth_conf": jnp.exp(logits[..., -1]) + 1,
            "ray": aux_logits[..., :6], "ray_conf": jnp.exp(aux_logits[..., 6]) + 1}


class DPT(nnx.Module):
  """Outputs per frame: depth = exp (and depth_conf when output_dim > 1), sky = relu."""

  def __init__(self, dim_in: int, cfg: HeadConfig, *, rngs: nnx.Rngs):
    f = cfg.features
    self.output_dim = cfg.output_dim
    self.pyramid = _Pyramid(dim_in, cfg, rngs=rngs)
    self.fusion = Fusion(f, rngs=rngs)
    self.output_conv1 = Conv(f, f // 2, 3, rngs=rngs)
    self.output_conv2 = OutputConv(f // 2, cfg.output_dim, rngs=rngs)
    self.sky_conv2 = OutputConv(f // 2, 1, rngs=rngs) if cfg.use_sky_head else None
    self.pos_embed = cfg.pos_embed

  def __call__(self, feats, grid, image_hw):
    levels = self.pyramid(feats, grid, image_hw)
    x = self.output_conv1(self.fusion(*levels))
    x = layers.resize_bilinear(x, image_hw)
    if self.pos_embed:
      x = add_pos_embed(x, image_hw)
    logits = self.output_conv2(x)
    out = {"depth": jnp.exp(logits[..., 0])}
    if self.output_dim > 1:
      out["depth_conf"] = jnp.exp(logits[..., -1]) + 1
    if self.sky_conv2 is not None:
      out["sky"] = jax.nn.relu(self.sky_conv2(x)[..., 0])
    return out


def make_head(dim_in: int, cfg: HeadConfig, *, rngs: nnx.Rngs):
  return (DualDPT if cfg.kind == "dualdpt" else DPT)(dim_in, cfg, rngs=rngs)
