"""The one resize / crop / intrinsics path of the project, equal to the release's.

The release (``postcam-release-inputs.md`` section 2) resizes each frame to cover the sample size
with torch's antialiased bilinear interpolation, centre-crops it, and adjusts K with its
``resize_crop`` (principal point forced to the image centre, unrounded crop offset). The sampler
(``postcam_jax.inference.inputs``) and the dataset preparation (``postcam_jax.data``) both call
:func:`fit_frames` / :func:`fit_arrays` and :func:`adjust_intrinsics`, so training and sampling see
identically preprocessed frames and intrinsics.
"""

import numpy as np

SAMPLE_HW = (480, 832)  # inference.yaml's sample_size




def _aa_taps(in_size: int, out_size: int):
  """torch's antialiased bilinear taps along one axis: (first index [out], weights [out, taps]).

  scale = in/out; support = scale (downscale) or 1; output i is centred at scale (i + 0.5);
  taps j from int(centre - support + 0.5) to int(centre + support + 0.5) get the triangle weight
  1 - |(j - centre + 0.5) / max(scale, 1)|, normalised to sum 1. Computed in float32 like torch.
  """
  scale = np.float32(in_size / out_size)
  support = np.float32(scale if scale >= 1.0 else 1.0)
  inv_scale = np.float32(1.0 / scale if scale >= 1.0 else 1.0)
  firsts, rows = [], []
  for i in range(out_size):
    centre = np.float32(scale * np.float32(i + 0.5))
    first = max(int(centre - support + np.float32(0.5)), 0)
    size = min(int(centre + support + np.float32(0.5)), in_size) - first
    offsets = np.arange(size, dtype=np.float32) + np.float32(first) - centre + np.float32(0.5)
    w = np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(offsets * inv_scale))
    total = np.float32(w.sum(dtype=np.float32))
    firsts.append(first)
    rows.append(w / total if total != 0 else w)
  taps = max(len(r) for r in rows)
  weights = np.zeros((out_size, taps), np.float32)  # zero weight past each row's window
  for i, r in enumerate(rows):
    weights[i, :len(r)] = r
  return np.asarray(firsts), weights


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  firsts, weights = _aa_taps(in_size, out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  out = np.zeros(x.shape[:axis] + (out_size,) + x.shape[axis + 1:], np.float32)
  # Gathered along the axis in place (whole rows or pixels; no strided last-axis gather: 3x
  # faster on 1280x1280 frames), the same float32 products summed in the same tap order.
  for tap in range(weights.shape[1]):  # sums taps in order, as torch's kernel
    out += np.take(x, np.minimum(firsts + tap, in_size - 1), axis=axis) * \
        weights[:, tap].reshape(shape)
  return out


def resize_antialias(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """[..., H, W, C] float32 -> [..., height, width, C]: torch/torchvision bilinear resize with
  ``antialias=True``, ``align_corners=False`` (width first, then height); a no-op at equal size."""
  images = np.asarray(images, np.float32)
  out = _resize_axis(images, images.ndim - 2, width)
  return _resize_axis(out, images.ndim - 3, height)


def center_crop(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """torchvision's CenterCrop on [..., H, W, C]: top = round((H - h) / 2), Python's half-to-even
  round; zero padding first where the image is smaller (torchvision's rule)."""
  in_h, in_w = images.shape[-3:-1]
  if in_h < height or in_w < width:
    pad_h, pad_w = max(height - in_h, 0), max(width - in_w, 0)
    pads = [(0, 0)] * (images.ndim - 3) + [(pad_h // 2, (pad_h + 1) // 2),
                                          (pad_w // 2, (pad_w + 1) // 2), (0, 0)]
    images = np.pad(images, pads)
    in_h, in_w = images.shape[-3:-1]
  top = int(round((in_h - height) / 2.0))
  left = int(round((in_w - width) / 2.0))
  return images[..., top:top + height, left:left + width, :]


def cover_size(native_hw, out_hw=SAMPLE_HW) -> tuple[int, int]:
  """The release's resize-to-cover size: s = max(h / H, w / W); (int(H s), int(W s))."""
  (in_h, in_w), (out_h, out_w) = native_hw, out_hw
  scale = max(out_h / in_h, out_w / in_w)
  return int(in_h * scale), int(in_w * scale)


def adjust_intrinsics(k: np.ndarray, native_hw, depth_hw, out_hw=SAMPLE_HW) -> np.ndarray:
  """The release's ``resize_crop`` on K (float32, Python-double factors cast to float32).

  fx, fy scaled from depth-map pixels to the native video; the principal point forced to
  (W/2, H/2); then scaled by s and shifted by the *unrounded* crop offset (quirk Q5).
  """
  (in_h, in_w), (depth_h, depth_w), (out_h, out_w) = native_hw, depth_hw, out_hw
  k = np.array(k, np.float32)
  f32 = np.float32
  k[0, 0] = k[0, 0] * f32(in_w / depth_w)
  k[1, 1] = k[1, 1] * f32(in_h / depth_h)
  k[0, 2] = f32(in_w / 2)
  k[1, 2] = f32(in_h / 2)
  scale = max(out_h / in_h, out_w / in_w)
  new_h, new_w = cover_size(native_hw, out_hw)
  k[0, 0] = k[0, 0] * f32(scale)
  k[1, 1] = k[1, 1] * f32(scale)
  k[0, 2] = k[0, 2] * f32(scale) - f32((new_w - out_w) / 2)
  k[1, 2] = k[1, 2] * f32(scale) - f32((new_h - out_h) / 2)
  return k


def fit_frames(images: np.ndarray, out_hw=SAMPLE_HW) -> np.ndarray:
  """Resize to cover ``out_hw`` and centre-crop: [..., H, W, C] float32 -> [..., h, w, C]."""
  new_h, new_w = cover_size(images.shape[-3:-1], out_hw)
  return center_crop(resize_antialias(images, new_h, new_w), *out_hw)


def fit_arrays(arrays: dict[str, np.ndarray], intrinsics: np.ndarray | None,
               out_hw) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
  """:func:`fit_frames` on every array of one frame size, in their own types, plus K.

  ``arrays`` maps names to uint8 [T, H, W, 3] videos (resized in [0, 1] float32, then rounded
  back to uint8: a record's frame is the rounding of the sampler's) or float [T, H, W] depth.
  ``intrinsics`` is K [3, 3] in the arrays' pixels (:func:`adjust_intrinsics` with the depth at
  the video's size); None gives None.
  """
  sizes = {v.shape[1:3] for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f"fit_arrays needs arrays of one frame size; got {sorted(sizes)}")
  native_hw = sizes.pop()
  out = {}
  for name, value in arrays.items():
    if value.dtype == np.uint8 and value.ndim == 4:
      fitted = fit_frames(value.astype(np.float32) / np.float32(255.0), out_hw)
      out[name] = np.clip(np.rint(fitted * np.float32(255.0)), 0, 255).astype(np.uint8)
    elif value.ndim == 3:
      out[name] = fit_frames(np.asarray(value, np.float32)[..., None], out_hw)[..., 0]
    else:
      raise ValueError(f"fit_arrays takes uint8 [T, H, W, 3] videos or float [T, H, W] maps; "
                       f"{name} is {value.dtype} {value.shape}")
  if intrinsics is None:
    return out, None
  return out, adjust_intrinsics(intrinsics, native_hw, native_hw, out_hw)
