"""The PostCam release's depth step after the network (step 2 of its ``run_pipeline.sh``), exactly.

The release runs Depth Anything 3 (DA3) on every frame of the source video (at most
:data:`MAX_FRAMES`) with ``use_ray_pose=False`` and post-processes the prediction in two scripts:
``depth/depth_predict_da3.py`` writes an intermediate ``<out>_da3_tmp/`` folder, then
``scripts/convert_da3_to_pi3.py`` turns it into the folder its step 3 (``dataset/test_dataset.py``;
here :func:`postcam_jax.inference.inputs.read_depth_folder`) reads. :func:`postprocess` computes
that folder from a DA3 prediction at model resolution and :func:`write_release_folder` writes it::

  OUT/depth/000000.png ...   16-bit grayscale q = trunc((d - min) / (max - min) 65535) in float32,
                             d the prediction resized to 832x480 by cv2 INTER_NEAREST (a stretch)
  OUT/metadata.txt           "min max": the Python reprs of the float32 global min and max
  OUT/extrinsics.txt         per frame one world-to-camera 3x4 (np.array2string, 8 decimals)
  OUT/intrinsics.txt         frame 0's K in 832x480 pixels, the same format
  OUT/images/000000.png ...  the frames centre-cropped to 832:480 and cv2 INTER_AREA-resized to
                             832x480 (a plain copy for an 832x480 video); step 3 does not read them

Poses: DA3's world-to-camera [N, 3, 4] float32 -> camera-to-world (float32 inverse of the 4x4) ->
relative to frame 0 (inv(c2w_0) c2w, float32) -> the release's ``smooth_gaussian`` (scipy: each
raw quaternion component (x, y, z, w, signs as ``Rotation.as_quat`` returns them, no alignment) and
each translation component filtered with ``gaussian_filter1d(sigma=2)``, quaternions renormalised)
-> world-to-camera in float64. After smoothing frame 0 is no longer the identity; step 3
re-normalises with E_i inv(E_0). The ground-plane alignment, segmentation masks and outlier filter
of the release are dormant on this path (no ground mask, no mask.mp4): the identity, as here.
The last bits of the float64 poses depend on the CPU, in the release as here (scipy's
``from_matrix`` orthogonalises by SVD, the inversions go through LAPACK, numpy's reductions
dispatch on SIMD width); the 8-decimal text files that step 3 reads do not.

The intermediate folder: of ``<out>_da3_tmp/`` the converter reads only ``intrinsic.txt``,
``extrinsic.txt`` (``np.savetxt`` text, values then re-read with ``np.loadtxt``) and the float
depth PNGs (the same nearest-neighbour maps); nothing downstream reads ``frame_bboxes.txt``, the
frames, the point clouds or ``depth_half/``. So this module does not write that folder by default:
the two text files are formatted in memory and parsed back (as the converter does) to build the
final files. :func:`write_da3_tmp` writes the three text files of it (``intrinsic.txt``,
``extrinsic.txt``, ``frame_bboxes.txt``) on request (``python -m postcam_jax.depth --da3-tmp DIR``)
to compare with a run of the release; the 65 MB of float PNGs, 164 MB of PLY files and the JPEG
frames are never written.

The resizes are OpenCV's, bit for bit (``postcam_jax.depth.opencv_resize``): INTER_NEAREST for
the depth maps, INTER_AREA for ``images/``.
Writes are atomic (``postcam_jax.core.atomic``): the folder is built beside the target and renamed
into place at the end, and holds a marker file (``.postcam-jax``) besides the release's files, so
that ``overwrite`` replaces only a folder this project wrote.
"""

import dataclasses
import os

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from postcam_jax.core import atomic
from postcam_jax.depth.opencv_resize import resize_area, resize_nearest

RELEASE_HW = (480, 832)  # the release's DA3 config: fix_resize_height, fix_resize_width
MAX_FRAMES = 1000        # the release's DA3 config: num_frames (frames read from the video)
SMOOTH_SIGMA = 2.0       # smooth_gaussian(camera_poses, sigma=2.0)
_Q_MAX = 65535.0


class ReleaseFolderError(ValueError):
  """A prediction or output location that the release's step 2 cannot turn into its folder."""


def crop_to_aspect(frame: np.ndarray, hw=RELEASE_HW) -> np.ndarray:
  """The converter's centre crop to the aspect W/H: crop size ``int()``, offset floored."""
  h, w = frame.shape[:2]
  target = hw[1] / hw[0]
  if w / h > target:
    crop_w = int(h * target)
    x0 = (w - crop_w) // 2
    return frame[:, x0:x0 + crop_w]
  if w / h < target:
    crop_h = int(w / target)
    y0 = (h - crop_h) // 2
    return frame[y0:y0 + crop_h]
  return frame


def release_image(frame: np.ndarray, hw=RELEASE_HW) -> np.ndarray:
  """One frame of the release's ``images/``: centre crop, then INTER_AREA to ``hw``."""
  return resize_area(crop_to_aspect(frame, hw), hw)


# ----------------------------------------------------------------------------------------------
# Poses and intrinsics.


def normalized_c2w(extrinsics: np.ndarray) -> np.ndarray:
  """DA3's world-to-camera [N, 3, 4] -> camera-to-world [N, 4, 4] relative to frame 0, in the
  prediction's dtype (float32) as the release computes it: inv(E), then inv(c2w_0) c2w."""
  extrinsics = np.asarray(extrinsics)
  padded = np.zeros((len(extrinsics), 4, 4), extrinsics.dtype)
  padded[:, :3, :4] = extrinsics
  padded[:, 3, 3] = 1.0
  c2w = np.linalg.inv(padded)
  return np.linalg.inv(c2w[0]) @ c2w


def smooth_poses(c2w: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
  """The release's ``smooth_gaussian``: float64 [N, 4, 4] camera-to-world. Each raw quaternion
  component (scipy's x, y, z, w; no sign alignment) and translation component is filtered with
  ``gaussian_filter1d`` (reflect, truncate 4); the quaternions are renormalised."""
  quats = np.array([Rotation.from_matrix(pose[:3, :3]).as_quat() for pose in c2w])
  translations = np.array([pose[:3, 3] for pose in c2w])
  smooth_quats = np.zeros_like(quats)
  smooth_translations = np.zeros_like(translations)  # the poses' dtype, as the release
  for i in range(4):
    smooth_quats[:, i] = ndimage.gaussian_filter1d(quats[:, i], sigma=sigma)
  for i in range(3):
    smooth_translations[:, i] = ndimage.gaussian_filter1d(translations[:, i], sigma=sigma)
  norms = np.linalg.norm(smooth_quats, axis=1)
  smooth_quats = smooth_quats / norms[:, np.newaxis]
  poses = []
  for q, t in zip(smooth_quats, smooth_translations):
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat(q).as_matrix()
    pose[:3, 3] = t
    poses.append(pose)
  return np.stack(poses)


def release_w2c(c2w: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
  """Normalised camera-to-world [N, 4, 4] -> the release's world-to-camera [N, 4, 4] float64:
  smoothed, the (identity) ground alignment applied, inverted. Poses scipy cannot smooth (a
  non-finite rotation) are used unsmoothed, as the release's ``try``/``except`` does."""
  try:
    poses = smooth_poses(c2w, sigma)
  except ValueError:
    poses = c2w
  ground = np.eye(4)  # align_ground_plane is not reached without a ground mask
  return np.stack([np.linalg.inv(ground @ pose) for pose in poses])


def scale_intrinsics(intrinsics: np.ndarray, processed_hw, hw=RELEASE_HW) -> np.ndarray:
  """K [N, 3, 3] in model pixels -> the release's K in ``hw`` pixels: row 0 times W / w and row 1
  times H / h, in place in float32 as ``mat[0, :] *= ratio_w`` computes it."""
  k = np.array(intrinsics, copy=True)
  k[:, 0, :] *= hw[1] * 1.0 / processed_hw[1]
  k[:, 1, :] *= hw[0] * 1.0 / processed_hw[0]
  return k


def frame_bbox(depth: np.ndarray, k: np.ndarray, c2w: np.ndarray) -> np.ndarray:
  """One line of the release's ``frame_bboxes.txt``: float64 (min xyz, max xyz) of the frame's
  valid (depth > 0) pixels unprojected with the model-resolution K and moved to the world by the
  normalised, unsmoothed camera-to-world, computed as the release does."""
  h, w = depth.shape
  fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
  u, v = np.meshgrid(np.arange(w), np.arange(h))
  u, v, z = u.reshape(-1), v.reshape(-1), depth.reshape(-1)
  points = np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1).reshape(h, w, 3)
  points = points[depth > 0] @ c2w[:3, :3].T + c2w[:3, 3]
  # The release then applies the ground alignment (the identity here) in homogeneous
  # coordinates; 1 x + 0 y + 0 z + 0 changes no value.
  return np.concatenate([points.min(axis=0), points.max(axis=0)])


# ----------------------------------------------------------------------------------------------
# Text as the release writes it.


def savetxt_lines(matrix: np.ndarray) -> list[str]:
  """``np.savetxt(fp, matrix)``'s lines: every value as ``%.18e``, separated by spaces."""
  return [" ".join("%.18e" % float(v) for v in row) for row in np.asarray(matrix)]


def loadtxt_values(lines: list[str]) -> np.ndarray:
  """``np.loadtxt`` of those lines: float64 [rows, cols]."""
  return np.array([[float(v) for v in line.split()] for line in lines], np.float64)


def matrix_line(matrix: np.ndarray) -> str:
  """The converter's one-line matrix: ``np.array2string(m, separator=", ", suppress_small=True)``
  without newlines, under numpy's default print options (given explicitly)."""
  text = np.array2string(np.asarray(matrix, np.float64), max_line_width=75, precision=8,
                         suppress_small=True, separator=", ", threshold=1000, edgeitems=3,
                         sign="-", floatmode="maxprec", legacy=False)
  return text.replace("\n", "")


# ----------------------------------------------------------------------------------------------
# The folder.


@dataclasses.dataclass(frozen=True)
class ReleaseDepth:
  """The release's step 2 output for one video, in memory.

  ``depth`` [N, h, w] float32 the prediction at model resolution (the 832x480 maps are its
  nearest-neighbour resize, :meth:`resized`); ``depth_min``/``depth_max`` the global float32
  extremes of those maps as Python floats; ``w2c`` [N, 4, 4] float64 the smoothed world-to-camera
  poses; ``intrinsics`` [N, 3, 3] float32 in ``hw`` pixels; ``c2w`` [N, 4, 4] float32 the
  normalised, unsmoothed camera-to-world and ``model_intrinsics`` [N, 3, 3] float32 the
  prediction's K (both only for :meth:`frame_bboxes`)."""
  depth: np.ndarray
  depth_min: float
  depth_max: float
  w2c: np.ndarray
  intrinsics: np.ndarray
  c2w: np.ndarray
  model_intrinsics: np.ndarray
  hw: tuple[int, int] = RELEASE_HW

  @property
  def num_frames(self) -> int:
    return len(self.depth)

  def resized(self, i: int) -> np.ndarray:
    """Frame ``i``'s float32 depth at ``hw`` (the release's ``_da3_tmp/depth/NNNN.png``)."""
    return resize_nearest(self.depth[i], self.hw)

  def quantised(self, i: int) -> np.ndarray:
    """Frame ``i``'s uint16 depth PNG: trunc(clip((d - min) / range 65535, 0, 65535)), in
    float32 with the double range (1 when under 1e-8) cast to float32 as numpy does."""
    span = self.depth_max - self.depth_min
    span = 1.0 if span < 1e-8 else span
    normalized = (self.resized(i) - np.float32(self.depth_min)) / np.float32(span)
    return (normalized * np.float32(_Q_MAX)).clip(0, 65535).astype(np.uint16)

  def intrinsic_lines(self) -> list[str]:
    """``_da3_tmp/intrinsic.txt``: 3 ``savetxt`` rows per frame."""
    return [line for k in self.intrinsics for line in savetxt_lines(k)]

  def extrinsic_lines(self) -> list[str]:
    """``_da3_tmp/extrinsic.txt``: the top 3 rows of every world-to-camera."""
    return [line for e in self.w2c for line in savetxt_lines(e[:3, :])]

  def frame_bboxes(self, progress: bool = False) -> np.ndarray:
    """[N, 6] float64: :func:`frame_bbox` of every frame (computed on demand: only the
    intermediate folder holds them, and they cost more than the rest of the step)."""
    frames = tqdm(range(self.num_frames), desc="frame bounding boxes", unit="frame",
                  disable=not progress)
    return np.stack([frame_bbox(self.depth[i], self.model_intrinsics[i], self.c2w[i])
                     for i in frames])

  def bbox_lines(self, progress: bool = False) -> list[str]:
    """``_da3_tmp/frame_bboxes.txt``: six ``str`` of float64 per frame."""
    return [" ".join(f"{v}" for v in box) for box in self.frame_bboxes(progress)]

  def metadata_text(self) -> str:
    return f"{self.depth_min} {self.depth_max}\n"

  def extrinsics_text(self) -> str:
    """``extrinsics.txt``: the converter's lines from ``np.loadtxt`` of ``extrinsic.txt``."""
    values = loadtxt_values(self.extrinsic_lines())
    return "".join(matrix_line(values[3 * i:3 * i + 3]) + "\n" for i in range(self.num_frames))

  def intrinsics_text(self) -> str:
    """``intrinsics.txt``: frame 0's K only, from ``np.loadtxt`` of ``intrinsic.txt``."""
    return matrix_line(loadtxt_values(self.intrinsic_lines()[:3])) + "\n"


def postprocess(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray,
                processed_hw: tuple[int, int] | None = None, *,
                hw=RELEASE_HW) -> ReleaseDepth:
  """A DA3 prediction (``depth`` [N, h, w] float32, world-to-camera ``extrinsics`` [N, 3, 4]
  float32, ``intrinsics`` [N, 3, 3] float32 in model pixels; ``processed_hw`` the model
  resolution, by default the depth's) -> the release's step 2 output (:class:`ReleaseDepth`)."""
  depth = np.asarray(depth)
  extrinsics, intrinsics = np.asarray(extrinsics), np.asarray(intrinsics)
  if depth.ndim != 3 or depth.dtype != np.float32 or len(depth) == 0:
    raise ReleaseFolderError(f"depth must be float32 [N, h, w] with N >= 1, got {depth.dtype} "
                             f"{depth.shape}")
  n = len(depth)
  if extrinsics.shape != (n, 3, 4) or intrinsics.shape != (n, 3, 3):
    raise ReleaseFolderError(f"need extrinsics [{n}, 3, 4] and intrinsics [{n}, 3, 3] for {n} "
                             f"depth maps, got {extrinsics.shape} and {intrinsics.shape}")
  if not (np.all(np.isfinite(depth)) and np.all(np.isfinite(extrinsics))
          and np.all(np.isfinite(intrinsics))):
    raise ReleaseFolderError("the prediction holds non-finite values (depth, poses or K)")
  processed_hw = tuple(processed_hw or depth.shape[1:])
  if not np.all(np.any(depth > 0, axis=(1, 2))):
    empty = int(np.argmin(np.any(depth > 0, axis=(1, 2))))
    raise ReleaseFolderError(f"frame {empty}: no pixel with positive depth")
  lows, highs = [], []
  for i in range(n):
    resized = resize_nearest(depth[i], hw)
    lows.append(float(resized.min()))
    highs.append(float(resized.max()))
  c2w = normalized_c2w(extrinsics)
  return ReleaseDepth(depth=depth, depth_min=min(lows), depth_max=max(highs),
                      w2c=release_w2c(c2w),
                      intrinsics=scale_intrinsics(intrinsics, processed_hw, hw), c2w=c2w,
                      model_intrinsics=intrinsics, hw=tuple(hw))


def check_output_path(out, overwrite: bool = False, inputs=()) -> str:
  """The absolute output folder, or one clear error: it is a file, lies under one, cannot be
  written, or exists (without ``overwrite``; with it, when this project did not make it or it
  holds one of ``inputs``): ``core.atomic.check_output``."""
  try:
    return atomic.check_output(out, overwrite=overwrite, inputs=inputs)
  except atomic.OutputError as e:
    raise ReleaseFolderError(str(e)) from None


def _write_text(path: str, text: str):
  with open(path, "w") as f:
    f.write(text)


def write_release_folder(out, result: ReleaseDepth, frames: np.ndarray | None = None, *,
                         overwrite: bool = False, progress: bool = True, inputs=()) -> str:
  """Write the release's depth folder (module doc) atomically; ``frames`` uint8 [N, H, W, 3] RGB
  (the decoded video) gives ``images/``, None leaves it out. ``inputs``: the paths the run read
  (a replaced folder must not hold them). Returns the folder's path."""
  if frames is not None and len(frames) != result.num_frames:
    raise ReleaseFolderError(f"{len(frames)} frames for {result.num_frames} depth maps; the "
                             f"release writes one image per depth map")
  check_output_path(out, overwrite, inputs)
  with atomic.AtomicDirectory(out, overwrite, inputs=inputs) as tmp:
    os.makedirs(os.path.join(tmp, "depth"))
    if frames is not None:
      os.makedirs(os.path.join(tmp, "images"))
    for i in tqdm(range(result.num_frames), desc="writing the depth folder", unit="frame",
                  disable=not progress):
      Image.fromarray(result.quantised(i)).save(os.path.join(tmp, "depth", f"{i:06d}.png"))
      if frames is not None:
        image = release_image(np.asarray(frames[i]), result.hw)
        Image.fromarray(image).save(os.path.join(tmp, "images", f"{i:06d}.png"))
    _write_text(os.path.join(tmp, "metadata.txt"), result.metadata_text())
    _write_text(os.path.join(tmp, "extrinsics.txt"), result.extrinsics_text())
    _write_text(os.path.join(tmp, "intrinsics.txt"), result.intrinsics_text())
  return os.path.abspath(os.fspath(out))


def write_da3_tmp(out, result: ReleaseDepth, *, overwrite: bool = False,
                  progress: bool = False, inputs=()) -> str:
  """The text files of the release's intermediate ``<out>_da3_tmp/`` (``intrinsic.txt``,
  ``extrinsic.txt``, ``frame_bboxes.txt``), atomically; its depth PNGs, frames and point clouds
  are not written (module doc)."""
  check_output_path(out, overwrite, inputs)
  with atomic.AtomicDirectory(out, overwrite, inputs=inputs) as tmp:
    for name, lines in (("intrinsic.txt", result.intrinsic_lines()),
                        ("extrinsic.txt", result.extrinsic_lines()),
                        ("frame_bboxes.txt", result.bbox_lines(progress))):
      _write_text(os.path.join(tmp, name), "".join(line + "\n" for line in lines))
  return os.path.abspath(os.fspath(out))
