"""DA3's cameras: the 9-D pose encoding ``[t (3), quaternion xyzw (4), fov_h, fov_w]``, the camera
decoder (camera-token features -> pose encoding -> world-to-camera extrinsics and intrinsics) and
the camera encoder (input poses -> camera tokens). Facts: depth-anything-3 0.1.1
``model/cam_dec.py``, ``model/cam_enc.py``, ``model/utils/transform.py``.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from postcam_jax.models.attention import attention
from postcam_jax.models.da3 import blocks, layers
from postcam_jax.models.da3.layers import LayerNorm


def quat_to_mat(q):
  """Quaternions [..., 4] (x, y, z, w; any norm) -> rotation matrices [..., 3, 3]."""
  i, j, k, r = (q[..., n] for n in range(4))
  two_s = 2.0 / jnp.sum(q * q, axis=-1)
  m = jnp.stack([
      1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
      two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
      two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j)], axis=-1)
  return m.reshape(q.shape[:-1] + (3, 3))


def mat_to_quat(m):
  """Rotation matrices [..., 3, 3] -> quaternions [..., 4] (x, y, z, w), w >= 0 (the release's
  best-conditioned-candidate method)."""
  m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
  arg = jnp.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22,
                   1.0 - m00 - m11 + m22], axis=-1)
  q_abs = jnp.where(arg > 0, jnp.sqrt(jnp.where(arg > 0, arg, 1.0)), 0.0)
  cand = jnp.stack([
      jnp.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], axis=-1),
      jnp.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], axis=-1),
      jnp.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], axis=-1),
      jnp.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], axis=-1)], axis=-2)
  cand = cand / (2.0 * jnp.maximum(q_abs[..., None], 0.1))
  best = jnp.argmax(q_abs, axis=-1)
  wxyz = jnp.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
  xyzw = jnp.concatenate([wxyz[..., 1:], wxyz[..., :1]], axis=-1)
  return jnp.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def affine_inverse(a):
  """[R | t] (3x4 or 4x4) -> [R^T | -R^T t] (same shape; a 4x4 keeps its last row)."""
  r = a[..., :3, :3]
  t = a[..., :3, 3:]
  rt = jnp.swapaxes(r, -1, -2)
  top = jnp.concatenate([rt, -jnp.matmul(rt, t, precision=layers.HIGHEST)], axis=-1)
  return jnp.concatenate([top, a[..., 3:, :]], axis=-2)


def pose_encoding_to_cameras(enc, image_hw):
  """Pose encoding [..., 9] -> (world-to-camera [..., 3, 4], intrinsics [..., 3, 3])."""
  h, w = image_hw
  c2w = jnp.concatenate([quat_to_mat(enc[..., 3:7]), enc[..., :3, None]], axis=-1)
  fy = (h / 2.0) / jnp.maximum(jnp.tan(enc[..., 7] / 2.0), 1e-6)
  fx = (w / 2.0) / jnp.maximum(jnp.tan(enc[..., 8] / 2.0), 1e-6)
  zero, one = jnp.zeros_like(fx), jnp.ones_like(fx)
  k = jnp.stack([fx, zero, jnp.full_like(fx, w / 2), zero, fy, jnp.full_like(fx, h / 2),
                 zero, zero, one], axis=-1).reshape(fx.shape + (3, 3))
  return affine_inverse(c2w), k


def cameras_to_pose_encoding(w2c, intrinsics, image_hw):
  """World-to-camera [..., 3|4, 4] and intrinsics [..., 3, 3] -> pose encoding [..., 9]."""
  h, w = image_hw
  c2w = affine_inverse(w2c)
  quat = mat_to_quat(c2w[..., :3, :3])
  fov_h = 2 * jnp.arctan((h / 2) / intrinsics[..., 1, 1])
  fov_w = 2 * jnp.arctan((w / 2) / intrinsics[..., 0, 0])
  return jnp.concatenate([c2w[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], axis=-1)


class CameraDecoder(nnx.Module):
  """Two Linear+ReLU layers, then t (3), quaternion (4) and ReLU'd fovs (2)."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs):
    self.fc1 = layers.linear(dim, dim, ("embed", "mlp"), rngs=rngs)
    self.fc2 = layers.linear(dim, dim, ("mlp", "embed"), rngs=rngs)
    self.fc_t = layers.linear(dim, 3, ("embed", None), rngs=rngs)
    self.fc_qvec = layers.linear(dim, 4, ("embed", None), rngs=rngs)
    self.fc_fov = layers.linear(dim, 2, ("embed", None), rngs=rngs)

  def __call__(self, feat):
    h = jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(feat.astype(jnp.float32)))))
    return jnp.concatenate([self.fc_t(h), self.fc_qvec(h), jax.nn.relu(self.fc_fov(h))], axis=-1)


class CameraEncoder(nnx.Module):
  """Pose encoding -> MLP (9 -> D/2 -> D) -> LayerNorm -> 4 blocks attending across the views
  (LayerScale 0.01, eps 1e-5) -> LayerNorm: one camera token [B, S, D] per view."""

  def __init__(self, dim: int, num_heads: int, depth: int, *, rngs: nnx.Rngs):
    self.pose_branch = blocks.Mlp(9, dim // 2, dim, dtype=jnp.float32, rngs=rngs)
    self.token_norm = LayerNorm(dim, eps=1e-5)
    self.trunk = blocks.make_stacked(
        lambda r: blocks.Block(dim, num_heads, 4 * dim, eps=1e-5, ls_init=0.01, rngs=r), depth,
        rngs)
    self.trunk_norm = LayerNorm(dim, eps=1e-5)
    self.depth = depth

  def __call__(self, w2c, intrinsics, image_hw):

    x = self.token_norm(self.pose_branch(cameras_to_pose_encoding(w2c, intrinsics, image_hw)))

    def attend(q, k, v):
      return attention(q, k, v, precision=layers.HIGHEST)

    x = blocks.scan_range(self.trunk, 0, self.depth, x, lambda blk, c, _: blk(c, attend))
    return self.trunk_norm(x)
