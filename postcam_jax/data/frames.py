"""Frame-level operations shared by preprocessing and the Grain transforms (numpy + PIL).

Resizing follows ReCamMaster/PostCam: scale so the frame covers the output size (short side
fits), bilinear with antialiasing, then a centre crop (offsets rounded half-to-even). The
intrinsics follow the pixels exactly, with integer pixel coordinates at pixel centres: a pixel
centre u maps to (u + 0.5) * sx - 0.5 - left.
"""

import numpy as np
from PIL import Image

from postcam_jax import cameras


def cover_size(height: int, width: int, out_height: int, out_width: int) -> tuple[int, int]:
  """The resize target (nh, nw) >= (out_height, out_width) that keeps the aspect ratio."""
  scale = max(out_height / height, out_width / width)
  return max(out_height, int(height * scale)), max(out_width, int(width * scale))


def _resize_stack(stack: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """Bilinear (antialiased when shrinking) resize of [T, H, W] float32 or [T, H, W, 3] uint8."""
  nh, nw = size_hw
  if stack.shape[1:3] == (nh, nw):
    return stack
  if stack.dtype == np.uint8 and stack.ndim == 4 and stack.shape[-1] == 3:
    return np.stack([np.asarray(Image.fromarray(f).resize((nw, nh), Image.BILINEAR))
                     for f in stack])
  if stack.ndim == 3:
    return np.stack([np.asarray(Image.fromarray(f.astype(np.float32), mode="F").resize(
        (nw, nh), Image.BILINEAR)) for f in stack])
  raise ValueError(f"resize expects uint8 [T, H, W, 3] or float [T, H, W]; got {stack.dtype} "
                   f"{stack.shape}")


def resize_and_crop(videos: dict[str, np.ndarray], intrinsics: np.ndarray | None,
                    out_height: int, out_width: int):
  """Resize-to-cover and centre-crop every array in ``videos`` (same H, W) to the output size.

  ``videos`` maps names to uint8 [T, H, W, 3] or float [T, H, W] (depth) arrays. Returns the new
  dict and the adjusted K [3, 3] (float64), or None when ``intrinsics`` is None.
  """
  sizes = {v.shape[1:3] for v in videos.values()}
  if len(sizes) != 1:
    raise ValueError(f"resize_and_crop needs arrays of one frame size; got {sorted(sizes)}")
  height, width = sizes.pop()
  nh, nw = cover_size(height, width, out_height, out_width)
  top, left = int(round((nh - out_height) / 2)), int(round((nw - out_width) / 2))
  out = {k: _resize_stack(v, (nh, nw))[:, top:top + out_height, left:left + out_width]
         for k, v in videos.items()}
  if intrinsics is None:
    return out, None
  sx, sy = nw / width, nh / height
  k = np.array(intrinsics, np.float64)
  k[0, 0], k[1, 1] = k[0, 0] * sx, k[1, 1] * sy
  k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5 - left
  k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5 - top
  return out, k


def resample_frames(num_frames: int, num_out: int) -> np.ndarray:
  """Which of ``num_frames`` frames make ``num_out`` (the release's temporal rule)."""
  return cameras.temporal_indices(num_frames, num_out)
