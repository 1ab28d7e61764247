"""Depth Anything 3 in Flax NNX: the any-view / mono / metric network and the nested model.

``DA3Model(cfg, rngs=...)(images)`` with ``images`` [B, S, H, W, 3] (ImageNet-normalised float,
H and W multiples of 14) returns a dict of float32 arrays:

- ``depth`` [B, S, H, W] and, for the any-view models, ``depth_conf`` [B, S, H, W], ``ray``
  [B, S, 8h, 8w, 6] and ``ray_conf`` (h, w: the patch grid), ``extrinsics`` [B, S, 3, 4]
  (world-to-camera, OpenCV axes, world = the reference view) and ``intrinsics`` [B, S, 3, 3] in
  pixels (from the camera decoder, or with ``use_ray_pose`` solved from the rays:
  :mod:`.ray_pose`), ``ref_view`` [B] (the chosen reference view);
- ``sky`` [B, S, H, W] for the mono/metric models (their sky pixels already filled);
- for the nested model, the any-view outputs scaled to metric (:mod:`.alignment`) plus
  ``scale_factor`` and ``non_sky_count``.

Views are padded to a multiple of the devices of the mesh's view axes (:mod:`.frames`) and the
outputs cut back. Facts: depth-anything-3 0.1.1 ``model/da3.py``.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from postcam_jax.models.da3 import alignment, camera, dpt, frames, layers, ray_pose
from postcam_jax.models.da3.backbone import Backbone
from postcam_jax.models.da3.config import DA3Config, NetConfig

HEAD_BYTES_PER_PIXEL = 4 * 1024  # a generous bound of the head's live float32 values per pixel


class DA3Net(nnx.Module):
  """One DepthAnything3Net (backbone, head, optional camera encoder/decoder)."""

  def __init__(self, cfg: NetConfig, *, dtype=jnp.float32, remat: str = "none",
               rngs: nnx.Rngs):
    self.cfg = cfg
    self.backbone = Backbone(cfg.backbone, dtype=dtype, remat=remat, rngs=rngs)
    self.head = dpt.make_head(cfg.backbone.feature_dim, cfg.head, rngs=rngs)
    if cfg.camera:
      self.cam_dec = camera.CameraDecoder(cfg.backbone.feature_dim, rngs=rngs)
      self.cam_enc = camera.CameraEncoder(cfg.backbone.embed_dim, cfg.cam_enc_heads,
                                          cfg.cam_enc_depth, rngs=rngs)
    else:
      self.cam_dec = self.cam_enc = None

  def __call__(self, images, *, valid: int, extrinsics=None, intrinsics=None,
               ref_view_strategy: str = "saddle_balanced", attention_budget: int = 1 << 30,
               head_budget: int = 1 << 31, return_features: bool = False):
    """Raw outputs for images [B, S, H, W, 3] whose first ``valid`` views are real (with
    ``return_features``, also the backbone's ``feature{i}`` and ``camera_token{i}``)."""
    b, s, h, w, _ = images.shape
    cam_token = None
    if extrinsics is not None:
      if self.cam_enc is None:
        raise ValueError(f"this DA3 net ({self.cfg.head.kind} head, no camera encoder) takes no "
                         f"input poses")
      tok = self.cam_enc(extrinsics[:, :valid], intrinsics[:, :valid], (h, w))
      cam_token = jnp.pad(tok, ((0, 0), (0, s - valid), (0, 0)))
    bb = self.backbone(images, valid=valid, cam_token=cam_token,
                       ref_view_strategy=ref_view_strategy, budget=attention_budget)
    grid = layers.num_patches(h, w, self.cfg.backbone.patch_size)

    def head(feats):
      n = feats[0].shape[1]
      flat = [f.reshape(b * n, *f.shape[2:]) for f in feats]
      out = self.head(flat, grid, (h, w))
      return {k: v.reshape(b, n, *v.shape[1:]) for k, v in out.items()}

    out = frames.map_frames(head, bb.features, h * w * HEAD_BYTES_PER_PIXEL, head_budget)
    out = {k: frames.constrain_frames(v) for k, v in out.items()}
    if return_features:
      out.update({f"feature{i}": f for i, f in enumerate(bb.features)})
      out.update({f"camera_token{i}": c for i, c in enumerate(bb.camera_tokens)})
    if self.cam_dec is not None:
      enc = self.cam_dec(bb.camera_tokens[-1])
      out["extrinsics"], out["intrinsics"] = camera.pose_encoding_to_cameras(enc, (h, w))
      out["pose_encoding"] = enc
      out["ref_view"] = bb.ref_view
    return out


class DA3Model(nnx.Module):
  """A DA3 preset: one net, or the nested any-view + metric pair."""

  def __init__(self, cfg: DA3Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dtype = jnp.bfloat16 if cfg.precision == "bfloat16" else jnp.float32
    self.net = DA3Net(cfg.net, dtype=dtype, remat=cfg.remat, rngs=rngs)
    self.metric = (DA3Net(cfg.metric, dtype=dtype, remat=cfg.remat, rngs=rngs)
                   if cfg.metric is not None else None)

  def __call__(self, images, *, valid: int | None = None, extrinsics=None, intrinsics=None,
               ref_view_strategy: str = "saddle_balanced", use_ray_pose: bool = False,
               ray_pose_key=None, ray_pose_samples=None, return_features: bool = False):
    """``valid``: the first views that are real (default all; the rest is padding).
    ``use_ray_pose``: cameras solved from the ray head (:mod:`.ray_pose`) instead of the camera
    decoder, with RANSAC draws from ``ray_pose_key`` (default key 0) or given as
    ``ray_pose_samples`` [100, 8]. ``return_features``: also the any-view net's backbone features
    (see :class:`DA3Net`)."""
    if use_ray_pose and self.cfg.net.head.kind != "dualdpt":
      raise ValueError(f"use_ray_pose needs the ray head of an any-view or nested model; "
                       f"{self.cfg.model_name} has a {self.cfg.net.head.kind} head")
    if images.ndim != 5 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, S, H, W, 3]; got {tuple(images.shape)}")
    b, s = images.shape[:2]
    sp = layers.ceil_to(s, frames.frame_devices())
    valid = s if valid is None else valid
    pad = ((0, 0), (0, sp - s))
    images = frames.constrain_frames(jnp.pad(images, pad + ((0, 0),) * 3))
    if extrinsics is not None:
      extrinsics = jnp.pad(extrinsics, pad + ((0, 0),) * 2)
      intrinsics = jnp.pad(intrinsics, pad + ((0, 0),) * 2)
    kw = dict(valid=valid, attention_budget=self.cfg.attention_chunk_bytes,
              head_budget=self.cfg.head_chunk_bytes)
    out = self.net(images, extrinsics=extrinsics, intrinsics=intrinsics,
                   ref_view_strategy=ref_view_strategy, return_features=return_features, **kw)
    out = {k: (v if k == "ref_view" else v[:, :valid]) for k, v in out.items()}
    if use_ray_pose:  # before the metric alignment, which scales these translations
      out["extrinsics"], out["intrinsics"] = _ray_cameras(out, images.shape[2:4], ray_pose_key,
                                                          ray_pose_samples)
    if "sky" in out:
      out["depth"] = alignment.fill_sky(out["depth"], out["sky"], True)
    if self.metric is None:
      return out
    metric = self.metric(images, **kw)
    metric = {k: v[:, :valid] for k, v in metric.items()}
    metric["depth"] = alignment.fill_sky(metric["depth"], metric["sky"], True)
    return alignment.align_to_metric(out, metric, True)


def _ray_cameras(out, image_hw, key, samples):
  ray, conf = out["ray"], out["ray_conf"]
  points = ray.shape[-3] * ray.shape[-2]
  key = jax.random.key(0) if key is None else key
  draw_key, subset_key = jax.random.split(key)
  samples = ray_pose.draw_samples(draw_key, points) if samples is None else samples
  uniform = jax.random.uniform(subset_key, (*ray.shape[:-3], points))
  return ray_pose.cameras_from_rays(ray, conf, tuple(image_hw), jnp.asarray(samples), uniform)


def build(cfg: DA3Config, seed: int = 0) -> DA3Model:
  return DA3Model(cfg, rngs=nnx.Rngs(seed))

