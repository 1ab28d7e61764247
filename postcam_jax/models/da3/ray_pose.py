"""Cameras from DA3's ray head: ``inference(..., use_ray_pose=True)``.

Instead of the camera decoder, each view's pose and intrinsics are solved from its ray map (the
any-view head's ``ray`` [.., 8h, 8w, 6]: a direction and an origin per point, and ``ray_conf``):

1. the ray map's points on the camera plane z = 1 of a normalised camera (the image spans
   [-1, 1], pixel centres); ray directions with |z| > 1e-4 divided by z, the others weigh 0;
2. RANSAC: 100 hypotheses, each the confidence-weighted least-squares homography (plane ->
   directions) of 8 points drawn from the 30 % most confident; a point is an inlier within 0.2;
   the hypothesis whose inliers weigh most is refitted on them (at most 8,000: over that, 8,000
   drawn from the 95 % most confident of them);
3. the homography, its sign made det > 0, split by a QL decomposition into the rotation and a
   lower-triangular matrix whose diagonal and last row give focal lengths and principal point;
   the translation is the confidence-weighted mean ray origin;
4. that camera-to-world pose inverted to world-to-camera; intrinsics in pixels of the image.

Facts: depth-anything-3 0.1.1 ``utils/ray_utils.py`` (``get_extrinsic_from_camray``) and
``model/da3.py`` (``_process_ray_pose_estimation``), quirks kept: the same 100 draws serve every
view; the mean origin uses the confidence with the |z| <= 1e-4 points zeroed (the release zeroes
them in place before it averages). Randomness: the release draws with ``torch.randperm``; here the
draws come from a JAX key (:func:`draw_samples`), or are given (how the tests replay the
release's own draws). The set sizes vary per view, so every fit is a weighted fit over all points
with weight 0 outside the set: the same least-squares problem (zero rows), static shapes under jit.
"""

import numpy as np

import jax
import jax.numpy as jnp

N_HYPOTHESES = 100
SAMPLE_FRACTION = 0.3
POINTS_PER_HYPOTHESIS = 8
INLIER_DISTANCE = 0.2
MIN_RAY_Z = 1e-4
MAX_INLIERS = 8000
KEEP_FRACTION_PERCENT = 95  # of the inliers, by confidence, when there are more than MAX_INLIERS


def candidate_count(num_points: int) -> int:
  """How many of the most confident points the hypotheses draw from."""
  return max(POINTS_PER_HYPOTHESIS, int(num_points * SAMPLE_FRACTION))


def draw_samples(key, num_points: int) -> jax.Array:
  """[100, 8] int32: per hypothesis, 8 distinct ranks among the candidates (the release's
  ``torch.randperm(n)[:8]``, from a JAX key)."""
  n = candidate_count(num_points)
  keys = jax.random.split(key, N_HYPOTHESES)
  return jax.vmap(lambda k: jax.random.permutation(k, n)[:POINTS_PER_HYPOTHESIS])(keys).astype(
      jnp.int32)


def _linspace32(start: float, end: float, steps: int) -> np.ndarray:
  """``torch.linspace`` in float32, bit for bit: a float32 step, the first half start + step i
  and the second half end - step (steps - 1 - i), each a fused multiply-add (one rounding)."""
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64((end32 - start32) / np.float32(max(steps - 1, 1)))
  i = np.arange(steps, dtype=np.float64)
  return np.where(i < steps // 2, np.float64(start32) + step * i,
                  np.float64(end32) - step * (steps - 1 - i)).astype(np.float32)


def plane_points(grid_h: int, grid_w: int) -> np.ndarray:
  """[grid_h * grid_w, 2] float32: the ray map's points on the normalised camera plane (pixel
  centres of a 2 x 2 image, centred), row-major as the ray map flattens."""
  max_y, max_x = 1 - 1 / grid_h, 1 - 1 / grid_w
  ys = _linspace32(-max_y + 1.0, max_y + 1.0, grid_h) - np.float32(1)
  xs = _linspace32(-max_x + 1.0, max_x + 1.0, grid_w) - np.float32(1)
  y, x = np.meshgrid(ys, xs, indexing="ij")
  return np.stack([x.reshape(-1), y.reshape(-1)], axis=-1).astype(np.float32)


def fit_homography(src, dst, weight):
  """The weighted least-squares homography of points src -> dst ([K, 2] each, weights [K]; zero
  weights drop a point): the right singular vector of the smallest singular value, / H[2, 2]."""
  w = jnp.sqrt(weight)[:, None]
  x, y = src[:, :1], src[:, 1:]
  u, v = dst[:, :1], dst[:, 1:]
  zero = jnp.zeros_like(x)
  rows_u = jnp.concatenate([-x * w, -y * w, -w, zero, zero, zero, x * u * w, y * u * w, u * w], 1)
  rows_v = jnp.concatenate([zero, zero, zero, -x * w, -y * w, -w, x * v * w, y * v * w, v * w], 1)
  _, _, vh = jnp.linalg.svd(jnp.concatenate([rows_u, rows_v], 0), full_matrices=False)
  h = vh[-1].reshape(3, 3)
  return h / h[2, 2]


def ql(a):
  """A = Q L with Q orthogonal and L lower triangular with a positive diagonal (QR of the
  column-reversed matrix, reversed back)."""
  p = jnp.eye(3, dtype=a.dtype)[::-1]
  q_r, r_r = jnp.linalg.qr(a @ p)
  q, low = q_r @ p, p @ r_r @ p
  sign = jnp.sign(jnp.diagonal(low))
  return q * sign[None, :], low * sign[:, None]


def refit_set(inlier, weight, uniform):
  """The points the best hypothesis is refitted on: its inliers, or when there are more than
  MAX_INLIERS, MAX_INLIERS at random (``uniform``: one draw per point) among the 95 % most
  confident of them."""
  if inlier.shape[0] <= MAX_INLIERS:
    return inlier
  count = jnp.sum(inlier)
  order = jnp.argsort(jnp.where(inlier, -weight, jnp.inf), stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
  keep = jnp.maximum(count * KEEP_FRACTION_PERCENT // 100, MAX_INLIERS)
  eligible = inlier & (rank < keep)
  draw = jnp.where(eligible, uniform, 2.0)
  chosen = eligible & (draw <= jnp.sort(draw)[MAX_INLIERS - 1])
  return jnp.where(count > MAX_INLIERS, chosen, inlier)


def _view_camera(ray, conf, uniform, samples, plane):
  """One view: ray [M, 6], conf [M], uniform [M] -> (R [3, 3] camera-to-world rotation,
  T [3], focal [2], principal point [2]) in the normalised camera."""
  direction = ray[:, :3]
  usable = jnp.abs(direction[:, 2]) > MIN_RAY_Z  # the plane's own z is 1
  dst = jnp.where(usable[:, None], direction[:, :2] / direction[:, 2:3], direction[:, :2])
  weight = jnp.where(usable, conf, 0.0)
  candidates = jnp.argsort(-weight, stable=True)[:candidate_count(ray.shape[0])]
  picked = candidates[samples]  # [100, 8]
  hypotheses = jax.vmap(fit_homography)(plane[picked], dst[picked], weight[picked])
  src = jnp.concatenate([plane, jnp.ones_like(plane[:, :1])], axis=1)
  proj = jnp.einsum("mk,ijk->imj", src, hypotheses)  # [100, M, 3]
  error = jnp.sqrt(jnp.sum((proj[..., :2] / proj[..., 2:] - dst) ** 2, axis=-1))
  inliers = error < INLIER_DISTANCE
  best = jnp.argmax(jnp.sum(jnp.where(inliers, weight, 0.0), axis=-1))
  refit = refit_set(inliers[best], weight, uniform)
  h = fit_homography(plane, dst, jnp.where(refit, weight, 0.0))
  h = jnp.where(jnp.linalg.det(h) < 0, -h, h)
  rotation, low = ql(h)
  low = low / low[2, 2]
  translation = jnp.sum(ray[:, 3:] * weight[:, None], axis=0) / jnp.sum(weight)
  focal = 1.0 / jnp.stack([low[0, 0], low[1, 1]])
  principal = jnp.stack([low[2, 0], low[2, 1]]) + 1.0
  return rotation, translation, focal, principal


def cameras_from_rays(ray, ray_conf, image_hw: tuple[int, int], samples, uniform):
  """ray [..., Hr, Wr, 6], ray_conf [..., Hr, Wr], samples [100, 8] (:func:`draw_samples`),
  uniform [..., Hr * Wr] in [0, 1) -> (extrinsics [..., 3, 4] world-to-camera, intrinsics
  [..., 3, 3] in pixels of an ``image_hw`` image)."""
  lead, (gh, gw) = ray.shape[:-3], ray.shape[-3:-1]
  m = gh * gw
  plane = jnp.asarray(plane_points(gh, gw))
  flat = lambda x, *tail: x.reshape(-1, m, *tail).astype(jnp.float32)  # noqa: E731
  rot, trans, focal, principal = jax.lax.map(  # one view at a time: [100, M, 3] projections
      lambda args: _view_camera(*args, samples, plane),
      (flat(ray, 6), flat(ray_conf), flat(uniform)))
  rot_t = jnp.swapaxes(rot, -1, -2)  # world-to-camera = the inverse of [R | T]
  extrinsics = jnp.concatenate([rot_t, -(rot_t @ trans[..., None])], axis=-1)
  h, w = image_hw
  zero, one = jnp.zeros_like(focal[:, 0]), jnp.ones_like(focal[:, 0])
  intrinsics = jnp.stack([
      jnp.stack([focal[:, 0] / 2 * w, zero, principal[:, 0] * w * 0.5], -1),
      jnp.stack([zero, focal[:, 1] / 2 * h, principal[:, 1] * h * 0.5], -1),
      jnp.stack([zero, zero, one], -1)], axis=-2)
  return extrinsics.reshape(*lead, 3, 4), intrinsics.reshape(*lead, 3, 3)
