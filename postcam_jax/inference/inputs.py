"""A real video and its depth in the release's conventions (``postcam-release-inputs.md`` §2, §9).

:func:`load_release_inputs` turns an mp4, a depth source and a trajectory into the arrays the
release feeds its renderer and model: 41 frames resized to cover and centre-cropped to the config's
resolution, the depth resized the same way, K adjusted like the release's ``resize_crop``, source
poses E_i inv(E_0), the target poses and camera tokens (``postcam_jax.geometry.trajectories``) and the
release's scale calibration applied to depth and source translations.

Depth sources:

- a folder in the release's layout (what its depth step writes): ``depth/NNNNNN.png`` 16-bit
  grayscale q, ``metadata.txt`` "min max" (depth = q / 65535 (max - min) + min), ``extrinsics.txt``
  one world-to-camera 3x4 Python literal per line, ``intrinsics.txt`` one 3x3 literal (pixel units
  of the depth maps). The depth maps cover the whole video frame (stretched).
- an ``.npz`` with ``depth`` [N, h, w] (or [N, 1, h, w]) float z-depth along the optical axis,
  ``intrinsics`` [3, 3] (pixel units of the depth maps; [N, 3, 3] is accepted, frame 0 is used as
  the release does) and ``extrinsics`` [N, 3, 4] or [N, 4, 4] world-to-camera source poses in
  OpenCV axes (x right, y down, z forward) and the depth's units, in any world: they are made
  relative to frame 0 (E_i inv(E_0)) as the release does. The synthetic generator's
  ``depth/camXX.npz`` (``postcam_jax.data.synthetic``) is such a file, with exact depth in metres
  and poses already relative to frame 0.

Depth maps must be 480x832 (the release's depth step) or the video's own size, and there must be
exactly one depth map and one pose per video frame, the PNGs numbered 0..T-1 without a gap and
each decodable. (The release reads the first T files of the sorted folder, so a gap would give
every later frame its neighbour's depth and extra maps would pass unnoticed: both are refused.)
"""

import ast
import dataclasses
import os

import numpy as np
from PIL import Image

from postcam_jax.geometry import cameras, image_ops, trajectories
from postcam_jax.io import video

RELEASE_DEPTH_HW = (480, 832)  # the release's depth step always writes 832x480 maps
SAMPLE_HW = image_ops.SAMPLE_HW


class InputError(ValueError):
  """An input (video, depth, poses) that does not fit; the message names expected vs got."""


@dataclasses.dataclass(frozen=True)
class DepthSequence:
  """Per-frame z-depth [N, h, w] float32, K [3, 3] float32 in depth-map pixels, and world-to-
  camera poses [N, 4, 4] float32 as read (not yet relative to frame 0)."""
  depth: np.ndarray
  intrinsics: np.ndarray
  w2c: np.ndarray
  source: str


@dataclasses.dataclass(frozen=True)
class ReleaseInputs:
  """Everything one sample needs, resampled to ``num_frames`` (41) frames.

  ``frames`` [41, H, W, 3] float32 in [-1, 1]; ``depth`` [41, H, W] float32 (x scale);
  ``intrinsics`` [41, 3, 3] float32; ``source_w2c`` and ``target_w2c`` [41, 4, 4] float32;
  ``camera`` [11, 12] float32 tokens and ``camera_poses`` [11, 4, 4] float64 (the release's
  ``cam_emb`` before its bf16 cast); ``d_min`` the frame-0 depth minimum before scaling;
  ``scale`` the calibration; ``num_source_frames`` T of the clip.
  """
  frames: np.ndarray
  depth: np.ndarray
  intrinsics: np.ndarray
  source_w2c: np.ndarray
  target_w2c: np.ndarray
  camera: np.ndarray
  camera_poses: np.ndarray
  d_min: float
  scale: float
  num_source_frames: int
  name: str
  trajectory: str


# ----------------------------------------------------------------------------------------------
# Depth sources.


def _read_literal_lines(path: str, shape: tuple[int, ...], what: str) -> np.ndarray:
  """Non-empty lines of Python literals (the release's ``read_matrix``) -> float32 [N, *shape]."""
  if not os.path.isfile(path):
    raise InputError(f"missing {what}: {path} does not exist")
  with open(path) as f:
    lines = [line.strip() for line in f.read().strip().split("\n") if line.strip()]
  values = []
  for number, line in enumerate(lines, start=1):
    try:
      matrix = np.asarray(ast.literal_eval(line), np.float32)
    except (ValueError, SyntaxError) as e:
      raise InputError(
          f"{path}: line {number} is not a Python literal matrix: {line[:80]!r}") from e
    if matrix.shape != shape:
      raise InputError(f"{path}: line {number} holds a {matrix.shape} matrix, expected {shape}")
    values.append(matrix)
  if not values:
    raise InputError(f"{path}: no matrices; expected one {shape} matrix per line")
  return np.stack(values)


def _with_bottom_row(w2c: np.ndarray) -> np.ndarray:
  if w2c.shape[1:] == (4, 4):
    return w2c.astype(np.float32)
  bottom = np.broadcast_to(np.array([0, 0, 0, 1], np.float32), (len(w2c), 1, 4))
  return np.concatenate([w2c.astype(np.float32), bottom], axis=1)


def _depth_png_files(depth_dir: str) -> list[str]:
  """The folder's depth maps in frame order; one error unless they are numbered 0..N-1."""
  names = [n for n in os.listdir(depth_dir) if n.lower().endswith(".png")]
  numbered = {}
  for n in names:
    stem = os.path.splitext(n)[0]
    if not stem.isdigit():
      raise InputError(f"{depth_dir}: depth file {n} is not named by frame number (NNNNNN.png)")
    if int(stem) in numbered:
      raise InputError(f"{depth_dir}: {numbered[int(stem)]} and {n} are both frame {int(stem)}; "
                       f"keep one")
    numbered[int(stem)] = n
  missing = sorted(set(range(len(numbered))) - set(numbered))
  if missing:
    raise InputError(f"{depth_dir}: no depth map for frame {missing[0]} ({missing[0]:06d}.png) "
                     f"among {len(numbered)} maps numbered up to {max(numbered)}; the maps must "
                     f"be numbered 0..N-1, one per video frame: run the depth step again")
  return [os.path.join(depth_dir, numbered[i]) for i in range(len(numbered))]


def _read_depth_png(path: str) -> np.ndarray:
  try:
    with Image.open(path) as image:
      if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise InputError(f"{path}: expected a 16-bit grayscale PNG, got PIL mode {image.mode}")
      q = np.asarray(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    if isinstance(e, InputError):
      raise
    raise InputError(f"{path}: not a readable PNG ({type(e).__name__}: {e}); run the depth step "
                     f"again for this video") from None
  if q.min() < 0 or q.max() > 65535:
    raise InputError(f"{path}: values outside 0..65535 in a depth PNG")
  return q.astype(np.uint16)


def read_depth_folder(path: str, num_frames: int | None = None) -> DepthSequence:
  """A depth folder in the release's layout (module doc); ``num_frames``: the video's frame
  count, which the number of maps must equal."""
  depth_dir = os.path.join(path, "depth")
  if not os.path.isdir(depth_dir):
    raise InputError(f"missing depth: {path} has no depth/ folder of NNNNNN.png maps "
                     f"(the release's depth layout)")
  files = _depth_png_files(depth_dir)
  if not files:
    raise InputError(f"missing depth: {depth_dir} holds no .png depth maps")
  if num_frames is not None and len(files) != num_frames:
    raise InputError(f"{depth_dir} holds {len(files)} depth maps but the video has {num_frames} "
                     f"frames; expected exactly one map per frame (is it another clip's depth?)")
  metadata = os.path.join(path, "metadata.txt")
  if not os.path.isfile(metadata):
    raise InputError(f"missing depth range: {metadata} does not exist (one line 'min max')")
  with open(metadata) as f:
    fields = f.readline().split()
  try:
    d_lo, d_hi = (float(v) for v in fields)
  except ValueError as e:
    raise InputError(f"{metadata}: expected one line 'min max', got {' '.join(fields)!r}") from e
  quantised = [_read_depth_png(p) for p in files]
  shapes = {q.shape for q in quantised}
  if len(shapes) != 1:
    raise InputError(f"{depth_dir}: depth maps of different sizes {sorted(shapes)}")
  q = np.stack(quantised).astype(np.float32)
  # The release: q / 65535 * (max - min) + min in float32, (max - min) rounded to float32 first.
  depth = q / np.float32(65535.0) * np.float32(d_hi - d_lo) + np.float32(d_lo)
  k = _read_literal_lines(os.path.join(path, "intrinsics.txt"), (3, 3), "intrinsics")[0]
  w2c = _read_literal_lines(os.path.join(path, "extrinsics.txt"), (3, 4), "source poses")
  return DepthSequence(depth=depth, intrinsics=k, w2c=_with_bottom_row(w2c), source=path)


def read_depth_npz(path: str) -> DepthSequence:
  """An ``.npz`` depth source (module doc): ``depth``, ``intrinsics``, ``extrinsics``."""
  if not os.path.isfile(path):
    raise InputError(f"missing depth: {path} does not exist")
  with np.load(path) as data:
    missing = [k for k in ("depth", "intrinsics", "extrinsics") if k not in data]
    if missing:
      raise InputError(f"{path}: missing keys {missing}; expected depth [N, h, w], intrinsics "
                       f"[3, 3] and extrinsics [N, 3, 4] or [N, 4, 4] (world-to-camera, OpenCV "
                       f"axes); a synthetic scene written before its depth files carried the "
                       f"camera needs regenerating (python -m postcam_jax.data.synthetic)")
    depth = np.asarray(data["depth"], np.float32)
    k = np.asarray(data["intrinsics"], np.float32)
    w2c = np.asarray(data["extrinsics"], np.float32)
  if depth.ndim == 4 and depth.shape[1] == 1:
    depth = depth[:, 0]
  if depth.ndim != 3:
    raise InputError(f"{path}: depth must be [N, h, w], got shape {depth.shape}")
  if k.shape not in ((3, 3),) and not (k.ndim == 3 and k.shape[1:] == (3, 3)):
    raise InputError(f"{path}: intrinsics must be [3, 3] or [N, 3, 3], got {k.shape}")
  if w2c.ndim != 3 or w2c.shape[1:] not in ((3, 4), (4, 4)):
    raise InputError(f"{path}: extrinsics must be [N, 3, 4] or [N, 4, 4], got {w2c.shape}")
  k = k if k.ndim == 2 else k[0]  # the release keeps the first frame's K
  return DepthSequence(depth=depth, intrinsics=k, w2c=_with_bottom_row(w2c), source=path)


def read_depth(path: str, num_frames: int | None = None) -> DepthSequence:
  """A depth folder (release layout) or an ``.npz``; see the module doc."""
  if path is None:
    raise InputError("missing depth: pass --depth DIR (the release's depth layout: depth/*.png, "
                     "metadata.txt, extrinsics.txt, intrinsics.txt) or --depth FILE.npz")
  path = os.fspath(path)
  if path.endswith(".npz"):
    return read_depth_npz(path)
  if not os.path.isdir(path):
    raise InputError(f"missing depth: {path} is neither a depth folder nor an .npz file")
  return read_depth_folder(path, num_frames)


def check_depth_matches_video(depth: DepthSequence, num_frames: int, native_hw) -> None:
  """One clear error when the depth's frame count or size disagrees with the video."""
  count, depth_h, depth_w = depth.depth.shape
  if count != num_frames:
    raise InputError(f"{depth.source}: {count} depth maps for a video of {num_frames} frames; "
                     f"expected exactly one per frame (is it another clip's depth?)")
  if len(depth.w2c) != num_frames:
    raise InputError(f"{depth.source}: {len(depth.w2c)} source poses for a video of {num_frames} "
                     f"frames; expected exactly one per frame (is it another clip's poses?)")
  allowed = {tuple(RELEASE_DEPTH_HW), tuple(native_hw)}
  if (depth_h, depth_w) not in allowed:
    raise InputError(f"{depth.source}: depth maps are {depth_h}x{depth_w} (HxW) but the video is "
                     f"{native_hw[0]}x{native_hw[1]}; expected {RELEASE_DEPTH_HW[0]}x"
                     f"{RELEASE_DEPTH_HW[1]} (the release's depth step) or the video's size")
  if not np.all(np.isfinite(depth.depth)):
    raise InputError(f"{depth.source}: depth holds non-finite values")
  if not (np.all(np.isfinite(depth.w2c)) and np.all(np.isfinite(depth.intrinsics))):
    raise InputError(f"{depth.source}: the source poses or the intrinsics hold non-finite values")


def relative_source_poses(w2c: np.ndarray, scale) -> np.ndarray:
  """E_i inv(E_0) in float32, translations x float32(scale): world = source camera at frame 0."""
  w2c = np.asarray(w2c, np.float32)
  rel = (w2c @ np.linalg.inv(w2c[0])).astype(np.float32)
  rel[:, :3, 3] = rel[:, :3, 3] * np.float32(scale)
  return rel


# ----------------------------------------------------------------------------------------------
# Everything together.


def decode_video(path: str) -> np.ndarray:
  """All frames of an mp4 as uint8 [T, H, W, 3] RGB (fps ignored, as the release)."""
  try:
    frames = video.read_video(path)
  except video.VideoReadError as e:
    raise InputError(f"unreadable video: {e}") from e
  if frames.ndim != 4 or len(frames) == 0:
    raise InputError(f"unreadable video: {path} decoded to no frames")
  return frames


def load_release_inputs(video_path: str, depth_path: str | None, trajectory: str, *,
                        sample_hw=SAMPLE_HW, num_frames: int = cameras.MODEL_INPUT_FRAMES,
                        radius_ratio: float = 1.0) -> ReleaseInputs:
  """An mp4 + depth + trajectory -> :class:`ReleaseInputs`, as the release's ``get_data`` and
  ``inference.py`` prepare them. ``trajectory`` is any spec of
  :func:`postcam_jax.geometry.trajectories.load_trajectory`."""
  if depth_path is None:
    read_depth(None)
  raw = decode_video(video_path)
  total, native_h, native_w, _ = raw.shape
  depth = read_depth(depth_path, total)
  check_depth_matches_video(depth, total, (native_h, native_w))
  pick = cameras.temporal_indices(total, num_frames)
  # The resize/crop is per frame, so resampling first gives the release's frames at less cost.
  frames = image_ops.fit_frames(raw[pick].astype(np.float32) / np.float32(255.0), sample_hw)
  frames = (frames - np.float32(0.5)) / np.float32(0.5)
  depth_maps = image_ops.fit_frames(depth.depth[:total][pick][..., None], sample_hw)[..., 0]
  k = image_ops.adjust_intrinsics(depth.intrinsics, (native_h, native_w), depth.depth.shape[1:], sample_hw)
  # d_min: the minimum of frame 0's resized depth (pick[0] is always frame 0).
  d_min = np.float32(depth_maps[0].min())
  if not d_min > 0:
    raise InputError(f"{depth.source}: the frame-0 depth minimum is {d_min}; depth must be > 0")
  target = trajectories.load_trajectory(trajectory, total, d_min, radius_ratio)
  scale = target.scale
  source_w2c = relative_source_poses(depth.w2c[:total], scale)[pick]
  return ReleaseInputs(
      frames=np.asarray(frames, np.float32),
      depth=np.asarray(depth_maps * np.float32(scale), np.float32),
      intrinsics=np.broadcast_to(k, (num_frames, 3, 3)).copy(),
      source_w2c=source_w2c,
      target_w2c=target.model_frame_poses(num_frames),
      camera=target.tokens(),
      camera_poses=target.token_poses(),
      d_min=float(d_min),
      scale=float(scale),
      num_source_frames=int(total),
      name=os.path.splitext(os.path.basename(video_path))[0],
      trajectory=target.name)
