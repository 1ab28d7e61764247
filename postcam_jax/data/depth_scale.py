"""Metric depth for the render of a video without depth: Depth Anything 3, scaled to the dataset's
poses.

The MultiCamVideo poses are metric (metres); a DA3 prediction is up to an unknown scale (the
any-view models) or metric by its own estimate (the nested model). The render warps the source
clip with the dataset's poses, so DA3's depth must be in the dataset's metres. Method:

1. DA3 runs on the source clip's frames **plus one anchor frame of every other camera of the
   scene** (the clip's first frame instant): a static source camera alone says nothing about
   scale, while the scene's cameras stand metres apart, so the anchors make the fit well posed
   for every source trajectory.
2. The camera centres DA3 estimates for those views, ``c = -R^T t`` of its world-to-camera
   extrinsics, are aligned to the dataset's centres of the same views by a **similarity**
   (Umeyama 1991: least squares over scale s, rotation R, translation t of
   ``y = s R x + t``). The dataset's views are expressed relative to the source camera at the
   clip's first frame, a proper (right-handed) frame like DA3's, so R is a rotation.
3. Depth is z-depth along each camera's axis, which a similarity scales by s and leaves otherwise
   unchanged: the source frames' metric depth is ``s`` x DA3's depth, resized from DA3's
   processed resolution to the clip's (nearest neighbour, as the release resizes DA3's depth).

The fit is refused (a ``ValueError`` naming the scene's numbers) when the dataset's centres do not
spread (all views at one point: no scale to recover) or DA3's do not. Its residual, relative to
the spread of the dataset's centres, is returned with the scale so a preparation can report how
well DA3's camera path matched.
"""

import dataclasses

import numpy as np

from postcam_jax.depth import estimate, opencv_resize

MIN_SPREAD_M = 1e-3  # RMS distance of the views' centres to their mean below which s is unknown


@dataclasses.dataclass(frozen=True)
class Similarity:
  """``y = scale * rotation @ x + translation``; ``residual`` the RMS distance after alignment,
  ``spread`` the RMS distance of the targets to their mean (both in the targets' units)."""
  scale: float
  rotation: np.ndarray
  translation: np.ndarray
  residual: float
  spread: float

  def apply(self, x: np.ndarray) -> np.ndarray:
    return self.scale * np.asarray(x, np.float64) @ self.rotation.T + self.translation


def camera_centres(w2c: np.ndarray) -> np.ndarray:
  """Centres [N, 3] of world-to-camera poses [N, 3 or 4, 4] ([N, 3, 4] also): ``-R^T t``."""
  w2c = np.asarray(w2c, np.float64)
  rot, t = w2c[:, :3, :3], w2c[:, :3, 3]
  return -np.einsum("nji,nj->ni", rot, t)


def similarity_fit(x: np.ndarray, y: np.ndarray) -> Similarity:
  """Umeyama's least-squares similarity taking points ``x`` [N, 3] to ``y`` [N, 3] (a rotation,
  never a reflection). Raises ValueError when either point set has no spread."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 3 or len(x) < 2:
    raise ValueError(f"similarity_fit needs two [N >= 2, 3] point sets; got {x.shape}, {y.shape}")
  mx, my = x.mean(0), y.mean(0)
  xc, yc = x - mx, y - my
  var_x = float(np.mean(np.sum(xc ** 2, axis=1)))
  spread = float(np.sqrt(np.mean(np.sum(yc ** 2, axis=1))))
  if spread < MIN_SPREAD_M:
    raise ValueError(f"the views' dataset camera centres lie within {spread:.2g} m of each other: "
                     f"no baseline to fix the depth scale")
  if var_x < (MIN_SPREAD_M * 1e-3) ** 2:
    raise ValueError(f"the estimated camera centres do not move (RMS spread "
                     f"{np.sqrt(var_x):.2g}): no baseline to fix the depth scale")
  cov = yc.T @ xc / len(x)
  u, d, vt = np.linalg.svd(cov)
  sign = np.ones(3)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[2] = -1.0
  rotation = (u * sign) @ vt
  scale = float(np.sum(d * sign) / var_x)
  if not np.isfinite(scale) or scale <= 0:
    raise ValueError(f"the similarity fit of the estimated camera path gives scale {scale}")
  translation = my - scale * rotation @ mx
  fitted = scale * xc @ rotation.T + my
  residual = float(np.sqrt(np.mean(np.sum((fitted - y) ** 2, axis=1))))
  return Similarity(scale, rotation, translation, residual, spread)


@dataclasses.dataclass(frozen=True)
class MetricDepth:
  depth: np.ndarray  # [T, H, W] float32 metres, the source clip's frames
  fit: Similarity


def align_prediction(depth: np.ndarray, extrinsics: np.ndarray, dataset_w2c: np.ndarray,
                     num_source: int, hw: tuple[int, int]) -> MetricDepth:
  """DA3's ``depth`` [N, h, w] and world-to-camera ``extrinsics`` [N, 3, 4] of N views (the first
  ``num_source`` the source clip's frames) -> the source frames' depth in the dataset's units at
  ``hw``, by the similarity of the estimated centres to those of ``dataset_w2c`` [N, 4, 4]."""
  depth = np.asarray(depth, np.float32)
  if len(depth) != len(extrinsics) or len(depth) != len(dataset_w2c):
    raise ValueError(f"need one depth map, estimated pose and dataset pose per view; got "
                     f"{len(depth)}, {len(extrinsics)}, {len(dataset_w2c)}")
  fit = similarity_fit(camera_centres(extrinsics), camera_centres(dataset_w2c))
  source = depth[:num_source] * np.float32(fit.scale)
  return MetricDepth(opencv_resize.resize_nearest(source, tuple(hw)).astype(np.float32), fit)


def metric_depth(model, frames: np.ndarray, dataset_w2c: np.ndarray, num_source: int, *,
                 process_res: int = 504, mesh=None) -> MetricDepth:
  """:func:`align_prediction` of DA3 (``postcam_jax.depth.estimate``, the release's settings but
  ``process_res``, 504 in the release) on uint8 ``frames`` [N, H, W, 3]: the source clip's
  ``num_source`` frames, then the anchors."""
  frames = np.asarray(frames)
  prediction = estimate.estimate(model, frames, process_res=process_res, mesh=mesh)
  if not (np.all(np.isfinite(prediction.depth)) and np.all(np.isfinite(prediction.extrinsics))):
    raise ValueError("Depth Anything 3 returned non-finite depth or poses")
  return align_prediction(prediction.depth, prediction.extrinsics, dataset_w2c, num_source,
                          frames.shape[1:3])
