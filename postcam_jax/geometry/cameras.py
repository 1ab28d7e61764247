"""Camera maths shared by the data pipeline, the model and the sampler.

Conventions (``../shared/spec/postcam.md``, "Cameras"): poses are 4x4 matrices in OpenCV axes
(x right, y down, z forward). The model reads the *target's world-to-camera* pose at 11 frames,
with the world = the source camera at frame 0, as the top 3x4 flattened row-major ([..., 11, 12]).
The Plucker ablations read rays per target token instead ([..., N, 24], ``plucker_tokens``).

Everything here is plain array maths that works on numpy arrays and, where it says so, on jax
arrays inside ``jit``/``grad`` (no Python control flow on values), so it is differentiable-safe.
"""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np

NUM_CAMERA_TOKENS = 11  # the release's camera input: 11 poses, one per latent frame
MODEL_INPUT_FRAMES = 41  # the release resamples every stream to 41 frames
VAE_FRAMES_PER_LATENT = 4  # Wan-VAE: latent frame 0 <- video frame 0, k >= 1 <- frames 4k-3..4k
TOKEN_PIXELS = 16  # one latent token covers 16x16 pixels: VAE stride 8 x patch 2
PLUCKER_WIDTH = 6 * VAE_FRAMES_PER_LATENT  # the Plucker camera input per target token


def temporal_indices(num_frames: int, num_out: int) -> np.ndarray:
  """The release's ``build_temporal_indices(S, N)``: which input frames feed N output frames.

  S == N: identity. S > N: round-half-even of a float32 linspace(0, S-1, N). S < N: 0..S-1 then
  the last frame repeated. The float32 linspace reproduces torch's CPU result, which differs from
  exact rational rounding for a few S (e.g. 85): the value is computed as ``start + i * step`` in
  float32, and for the upper half as ``end - (N-1-i) * step``, as torch's linspace kernel does.
  """
  s, n = int(num_frames), int(num_out)
  if s <= 0 or n <= 0:
    raise ValueError(f"temporal_indices needs positive sizes, got S={s}, N={n}")
  if s == n:
    return np.arange(n, dtype=np.int64)
  if s < n:
    return np.concatenate([np.arange(s), np.full(n - s, s - 1)]).astype(np.int64)
  if n == 1:
    return np.zeros(1, np.int64)
  start, end = np.float32(0.0), np.float32(s - 1)
  step = np.float32((end - start) / np.float32(n - 1))
  i = np.arange(n)
  halfway = n // 2
  lo = start + i.astype(np.float32) * step
  hi = end - (np.float32(n - 1) - i.astype(np.float32)) * step
  vals = np.where(i < halfway, lo, hi).astype(np.float32)
  return np.rint(vals).astype(np.int64)  # rint is round-half-even, as torch.round


def invert_rigid(m):
  """Inverse of rigid 4x4 transforms [..., 4, 4] (R^T, -R^T t); numpy or jax arrays."""
  xp = _xp(m)
  r = m[..., :3, :3]
  t = m[..., :3, 3:]
  rt = xp.swapaxes(r, -1, -2)
  top = xp.concatenate([rt, -rt @ t], axis=-1)
  bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=m.dtype), top.shape[:-2] + (1, 4))
  return xp.concatenate([top, bottom], axis=-2)


def relative_target_w2c(source_c2w0, target_c2w):
  """World-to-camera of each target pose with the world = the source camera at frame 0.

  ``source_c2w0`` [..., 4, 4] is the source camera-to-world at frame 0 and ``target_c2w``
  [..., T, 4, 4] the target camera-to-world poses; returns inv(C_t[k]) @ C_s[0], [..., T, 4, 4]
  (dataset.md: "PostCam's release feeds the inverse, world-to-camera").
  """
  xp = _xp(target_c2w)
  return invert_rigid(target_c2w) @ xp.asarray(source_c2w0)[..., None, :, :]


def camera_tokens(w2c, indices=None):
  """The model's camera input: top 3x4 of 4x4 poses, row-major -> [..., 11, 12].

  ``w2c`` is [..., T, 4, 4] (or [..., T, 3, 4]); ``indices`` picks the 11 frames (default: the
  release's ``temporal_indices(T, 11)``).
  """
  if indices is None:
    indices = temporal_indices(w2c.shape[-3], NUM_CAMERA_TOKENS)
  picked = w2c[..., np.asarray(indices), :3, :4]
  return picked.reshape(picked.shape[:-2] + (12,))


def as_camera_tokens(camera):
  """Accept [B, 11, 12], [B, 11, 3, 4] or [B, 11, 4, 4] and return [B, 11, 12]."""
  shape = tuple(camera.shape)
  if len(shape) == 3 and shape[-1] == 12:
    return camera
  if len(shape) == 4 and shape[-2:] in ((3, 4), (4, 4)):
    return camera[..., :3, :4].reshape(shape[:2] + (12,))
  raise ValueError(
      f"camera must be [B, 11, 12] (world-to-camera top 3x4, row-major), [B, 11, 3, 4] or "
      f"[B, 11, 4, 4]; got shape {shape}")


def _xp(a):
  if isinstance(a, np.ndarray) or np.isscalar(a):
    return np
  return jnp


# ----------------------------------------------------------------------------------------------
# The MultiCamVideo ``camera_extrinsics.json`` schema (dataset.md).


def parse_matrix_string(text: str) -> np.ndarray:
  """"[a b c d] [e f g h] [i j k l] [m n o p]" -> float64 [4, 4] (rows as written)."""
  rows = [r for r in text.strip().strip("[]").split("] [")]
  m = np.array([[float(v) for v in r.replace("[", "").replace("]", "").split()] for r in rows],
               dtype=np.float64)
  if m.shape != (4, 4):
    raise ValueError(f"expected a 4x4 matrix string, got {m.shape} from {text!r}")
  return m


def unreal_to_opencv_c2w(stored: np.ndarray) -> np.ndarray:
  """A stored (row-vector, Unreal, centimetre) matrix -> OpenCV camera-to-world in metres.

  Transpose, then new x = old Y, new y = -old Z, new z = old X, then cm -> m (dataset.md).
  """
  m = np.swapaxes(np.asarray(stored, np.float64), -1, -2).copy()
  m = m[..., :, [1, 2, 0, 3]]
  m[..., :3, 1] *= -1.0
  m[..., :3, 3] /= 100.0
  return m


def opencv_c2w_to_unreal(c2w: np.ndarray) -> np.ndarray:
  """Inverse of :func:`unreal_to_opencv_c2w` (what a dataset writer stores)."""
  m = np.asarray(c2w, np.float64).copy()
  m[..., :3, 3] *= 100.0
  m[..., :3, 1] *= -1.0
  out = np.empty_like(m)
  out[..., :, [1, 2, 0, 3]] = m
  return np.swapaxes(out, -1, -2)


def format_matrix_string(stored: np.ndarray) -> str:
  return " ".join("[" + " ".join(repr(float(v)) for v in row) + "]" for row in stored)


def load_multicam_extrinsics(path: str) -> dict[str, np.ndarray]:
  """``camera_extrinsics.json`` -> {camera name: [T, 4, 4] OpenCV camera-to-world, metres}."""

  with open(path) as f:
    data = json.load(f)
  frames = sorted((k for k in data if k.startswith("frame")), key=lambda k: int(k[5:]))
  if not frames:
    raise ValueError(f"{path}: no 'frameN' keys; not a camera_extrinsics.json")
  if [int(k[5:]) for k in frames] != list(range(len(frames))):
    raise ValueError(f"{path}: frame keys are not frame0..frame{len(frames) - 1}")
  cams = sorted(data[frames[0]])
  out = {}
  for cam in cams:
    try:
      stored = np.stack([parse_matrix_string(data[fr][cam]) for fr in frames])
    except KeyError as e:
      raise ValueError(f"{path}: camera {cam} is missing in {e}") from e
    out[cam] = unreal_to_opencv_c2w(stored)
  return out


def w2c_relative_to_first(c2w: np.ndarray) -> np.ndarray:
  """[T, 4, 4] camera-to-world -> world-to-camera with the world = this camera at frame 0.

  The stored rotations are rounded (not exactly orthonormal), so general inverses are used, in the
  release's order (relative camera-to-world, then inverted), to match it to float64 rounding.
  """
  c2w = np.asarray(c2w, np.float64)
  rel_c2w = np.linalg.inv(c2w[..., :1, :, :]) @ c2w
  return np.linalg.inv(rel_c2w)


# ----------------------------------------------------------------------------------------------
# The release's bf16 camera input and Plucker rays.


def release_bf16(poses: np.ndarray) -> np.ndarray:
  """float64 poses -> bfloat16 the way torch's ``.to(torch.bfloat16)`` does: via float32
  (double rounding), round-to-nearest-even at each step. Returns an ml_dtypes bfloat16 array."""

  return np.asarray(poses, np.float64).astype(np.float32).astype(ml_dtypes.bfloat16)


def pixel_grid(height: int, width: int, stride: float = 1.0, offset: float = 0.0):
  """Pixel coordinates (u [H, W], v [H, W]) = offset + stride * (column, row), float32.

  The release's convention is integer coordinates at pixel centres (offset 0, stride 1). For a
  latent token covering a 16x16 pixel patch (VAE 8 x patch 2) its centre is stride 16, offset 7.5.
  """
  u = offset + stride * np.arange(width, dtype=np.float32)
  v = offset + stride * np.arange(height, dtype=np.float32)
  return (np.broadcast_to(u[None, :], (height, width)).astype(np.float32),
          np.broadcast_to(v[:, None], (height, width)).astype(np.float32))


def plucker_rays(w2c, intrinsics, height: int, width: int, stride: float = 1.0,
                 offset: float = 0.0):
  """Per-pixel Plucker rays (o x d, d) of the cameras ``w2c`` [..., T, 4, 4] -> [..., T, H, W, 6].

  ``intrinsics`` is [..., T, 3, 3] or [3, 3] (pixel units); pixel (u, v) is ``pixel_grid``'s.
  d = R^T K^-1 [u, v, 1] normalised is the ray direction and o = -R^T t the camera centre, both
  in the world frame (the source camera at frame 0). Works on numpy arrays, and on jax arrays
  inside ``jit``/``grad`` (no value-dependent Python control flow; K^-1 in closed form).
  """
  xp = _xp(w2c)
  dtype = w2c.dtype
  k = xp.broadcast_to(xp.asarray(intrinsics, dtype), w2c.shape[:-2] + (3, 3))
  fx, fy, skew = k[..., 0, 0], k[..., 1, 1], k[..., 0, 1]
  cx, cy = k[..., 0, 2], k[..., 1, 2]
  u_np, v_np = pixel_grid(height, width, stride, offset)
  u = xp.asarray(u_np, dtype)
  v = xp.asarray(v_np, dtype)
  expand = lambda a: a[..., None, None]  # per camera -> broadcast over [H, W]
  # K^-1 [u, v, 1] for K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]].
  y_cam = (v - expand(cy)) / expand(fy)
  x_cam = (u - expand(cx) - expand(skew) * y_cam) / expand(fx)
  rot = w2c[..., :3, :3]
  trans = w2c[..., :3, 3]
  rot_t = xp.swapaxes(rot, -1, -2)  # camera-to-world rotation
  # Elementwise 3x3 products: no matmul, so no reduced-precision (TF32) path on any backend.
  centre = -xp.stack([sum(rot_t[..., i, j] * trans[..., j] for j in range(3)) for i in range(3)],
                     axis=-1)
  # d_world[i] = sum_j R^T[i, j] d_cam[j], with d_cam = (x_cam, y_cam, 1).
  d_world = xp.stack([expand(rot_t[..., i, 0]) * x_cam + expand(rot_t[..., i, 1]) * y_cam
                      + expand(rot_t[..., i, 2]) for i in range(3)], axis=-1)
  d_world = d_world / xp.sqrt(xp.sum(d_world * d_world, axis=-1, keepdims=True))
  o = xp.broadcast_to(centre[..., None, None, :], d_world.shape)
  moment = xp.cross(o, d_world)
  return xp.concatenate([moment, d_world], axis=-1)


def latent_frame_groups(num_latent_frames: int) -> np.ndarray:
  """[F, 4]: the model-video frames behind each latent frame, in time order.

  The model's video has ``1 + 4 (F - 1)`` frames. Wan-VAE is causal: latent frame 0 encodes video
  frame 0 alone (its group repeats frame 0 four times, as Wan's camera-conditioned variants pad
  it), and latent frame k >= 1 encodes frames 4k-3 .. 4k.
  """
  f = int(num_latent_frames)
  if f < 1:
    raise ValueError(f"latent_frame_groups needs at least one latent frame, got {f}")
  first = np.zeros((1, VAE_FRAMES_PER_LATENT), np.int64)
  rest = (np.arange(1, f)[:, None] * VAE_FRAMES_PER_LATENT
          + np.arange(1 - VAE_FRAMES_PER_LATENT, 1)[None, :])
  return np.concatenate([first, rest.astype(np.int64)], axis=0)


def plucker_tokens(w2c, intrinsics, latent_shape):
  """The model's Plucker camera input (``camera_input='plucker'``): [..., N, 24].

  Args:
    w2c: [..., T, 4, 4] (or [..., T, 3, 4]) world-to-camera poses of the target at the clip's T
      frames, the project's convention (world = the source camera at frame 0, OpenCV axes).
    intrinsics: K in pixel units of the model's video frames (8 h x 8 w pixels): [3, 3], one per
      clip [..., 3, 3], or one per clip frame [..., T, 3, 3] (``...`` = the poses' leading dims).
    latent_shape: (F, h, w) of the target latent (e.g. (11, 60, 104)).

  Returns:
    [..., N, 24] with N = F * (h // 2) * (w // 2), one row per target token in the order of the
    model's target half ((f, i, j) row-major, j fastest; the patch conv floors odd h, w). Row
    values, frame-major: the 6-D ray (o x d, d) of the token's pixel centre for each of the 4
    frames the latent frame covers, in time order.

  How frames are chosen. The model's video has ``T_m = 1 + 4 (F - 1)`` frames (41 at F = 11),
  taken from the clip's T frames by ``temporal_indices(T, T_m)``, the release's rule for every
  stream (identity when T == T_m). Latent frame k covers model frames ``latent_frame_groups(F)[k]``:
  4k-3 .. 4k for k >= 1, and frame 0 four times for k = 0 (Wan-VAE's first latent frame encodes
  one frame). The last frame of group k is model frame 4k, the frame whose pose is the k-th RT
  camera token, so both camera representations describe the same poses at T = 41 and 81.

  Pixel centres. Integer pixel coordinates are pixel centres (the release's warper, and
  ``pixel_grid``); token (i, j) covers pixels [16 i, 16 i + 16) x [16 j, 16 j + 16), so its centre
  is (u, v) = (16 j + 7.5, 16 i + 7.5). Rays are ``plucker_rays``': d the unit direction of
  R^T K^-1 [u, v, 1] and o = -R^T t the camera centre, both in the world frame.

  Works on numpy arrays (float64 stays float64) and on jax arrays inside ``jit``/``grad``: frame
  selection uses static indices and nothing branches on values.
  """
  shape = tuple(w2c.shape)
  if len(shape) < 3 or shape[-2:] not in ((4, 4), (3, 4)):
    raise ValueError(f"w2c must be [..., T, 4, 4] or [..., T, 3, 4] world-to-camera poses of the "
                     f"clip's frames; got shape {shape}")
  f, h, w = (int(v) for v in latent_shape)
  th, tw = h // 2, w // 2
  if f < 1 or th < 1 or tw < 1:
    raise ValueError(f"latent_shape (F, h, w) must have F >= 1 and h, w >= 2 (one token is a 2x2 "
                     f"patch of latents); got {tuple(latent_shape)}")
  num_frames = shape[-3]
  model_frames = 1 + VAE_FRAMES_PER_LATENT * (f - 1)
  picked = temporal_indices(num_frames, model_frames)[latent_frame_groups(f).reshape(-1)]
  xp = _xp(w2c)
  k = intrinsics if hasattr(intrinsics, "shape") else np.asarray(intrinsics)
  kshape = tuple(k.shape)
  if kshape[-2:] != (3, 3):
    raise ValueError(f"intrinsics must be [3, 3], [..., 3, 3] (one per clip) or [..., T, 3, 3] "
                     f"(one per frame); got shape {kshape}")
  if len(kshape) == len(shape):  # one K per clip frame: resampled like the poses
    if kshape[-3] != num_frames:
      raise ValueError(f"per-frame intrinsics {kshape} must have the poses' T={num_frames} frames")
    k = k[..., picked, :, :]
  elif len(kshape) == len(shape) - 1:  # one K per clip
    k = k[..., None, :, :]
  elif len(kshape) != 2:
    raise ValueError(f"intrinsics {kshape} do not broadcast against poses {shape}: give [3, 3], "
                     f"[..., 3, 3] or [..., T, 3, 3]")
  rays = plucker_rays(w2c[..., picked, :, :], k, th, tw, stride=float(TOKEN_PIXELS),
                      offset=(TOKEN_PIXELS - 1) / 2)
  lead = rays.shape[:-4]
  rays = rays.reshape(lead + (f, VAE_FRAMES_PER_LATENT, th, tw, 6))
  rays = xp.moveaxis(rays, -4, -2)  # [..., F, 4, h', w', 6] -> [..., F, h', w', 4, 6]
  return rays.reshape(lead + (f * th * tw, PLUCKER_WIDTH))
