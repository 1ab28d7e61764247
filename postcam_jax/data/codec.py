"""A linear stand-in for the Wan-VAE with its geometry, for CPU demos and experiments.

``PCACodec`` maps a video [T = 1 + 4k, H, W, 3] in [-1, 1] to a latent [1 + k, H/8, W/8, C]
exactly as the Wan-VAE lays it out (frame 0 alone, then groups of 4 frames; 8x8 pixels per
latent cell) and back. Each 4x8x8x3 block is projected on the C leading principal components of
blocks from training videos, whitened so latents are ~N(0, 1) per channel like the Wan-VAE's
normalised latents (or, ``whiten=False``, scaled by one number to a mean variance of 1). It is fitted, not trained, in seconds, and it decodes: the demo can show and
score videos without the 127M-parameter VAE (a random one cannot reconstruct anything).
"""

import numpy as np

BLOCK = (4, 8, 8, 3)


def video_blocks(video: np.ndarray) -> np.ndarray:
  """[T, H, W, 3] -> blocks [1 + (T-1)/4, H/8, W/8, 768]; frame 0 fills its own 4-frame group."""
  video = np.asarray(video, np.float32)
  t, h, w, c = video.shape
  if (t - 1) % 4 or h % 8 or w % 8 or c != 3:
    raise ValueError(f"the codec needs video [T = 1 + 4k, H % 8 == 0, W % 8 == 0, 3]; got "
                     f"{video.shape}")
  first = np.repeat(video[:1], 4, axis=0)
  groups = np.concatenate([first, video[1:]], axis=0).reshape(-1, 4, h // 8, 8, w // 8, 8, 3)
  return groups.transpose(0, 2, 4, 1, 3, 5, 6).reshape(groups.shape[0], h // 8, w // 8, -1)


def blocks_to_video(blocks: np.ndarray) -> np.ndarray:
  """Inverse of :func:`video_blocks`: [F, h, w, 768] -> [1 + 4 (F-1), 8h, 8w, 3]."""
  f, h, w, _ = blocks.shape
  groups = blocks.reshape(f, h, w, 4, 8, 8, 3).transpose(0, 3, 1, 4, 2, 5, 6)
  groups = groups.reshape(f * 4, h * 8, w * 8, 3)
  return np.concatenate([groups[3:4], groups[4:]], axis=0)  # group 0 holds frame 0 four times


class PCACodec:
  """Whitened PCA over 4x8x8x3 video blocks: ``encode``, ``decode``, ``fit``."""

  def __init__(self, mean: np.ndarray, components: np.ndarray, scales: np.ndarray):
    self.mean = np.asarray(mean, np.float32)               # [768]
    self.components = np.asarray(components, np.float32)  # [768, C], orthonormal columns
    self.scales = np.asarray(scales, np.float32)           # [C] std of each component
    self.channels = self.components.shape[1]

  @classmethod
  def fit(cls, videos, channels: int = 16, max_blocks: int = 200_000, seed: int = 0,
          whiten: bool = True):
    """Fitted on the 4x8x8x3 blocks of ``videos``. ``whiten`` (default) scales every component
    to unit variance; False divides all of them by one scale (the root of their mean variance),
    so the latent keeps PCA's variance ratios (the coarse colour components dominate; a
    from-scratch option: the loss and the noise then weigh what the eye sees most)."""
    blocks = np.concatenate([video_blocks(v).reshape(-1, int(np.prod(BLOCK))) for v in videos])
    if len(blocks) > max_blocks:
      blocks = blocks[np.random.default_rng(seed).choice(len(blocks), max_blocks, replace=False)]
    if len(blocks) < channels:
      raise ValueError(f"need at least {channels} blocks to fit {channels} channels, got "
                       f"{len(blocks)}")
    mean = blocks.mean(0)
    _, s, vt = np.linalg.svd((blocks - mean).astype(np.float64), full_matrices=False)
    scales = s[:channels] / np.sqrt(max(len(blocks) - 1, 1))
    if not whiten:
      scales = np.full_like(scales, np.sqrt(np.mean(scales ** 2)))
    return cls(mean, vt[:channels].T, np.maximum(scales, 1e-6))

  def latent_shape(self, t: int, h: int, w: int) -> tuple[int, int, int, int]:
    return (1 + (t - 1) // 4, h // 8, w // 8, self.channels)

  def encode(self, video) -> np.ndarray:
    return ((video_blocks(video) - self.mean) @ self.components) / self.scales

  __call__ = encode

  def decode(self, latent) -> np.ndarray:
    latent = np.asarray(latent, np.float32)
    if latent.ndim != 4 or latent.shape[-1] != self.channels:
      raise ValueError(f"latent must be [F, h, w, {self.channels}]; got {latent.shape}")
    blocks = (latent * self.scales) @ self.components.T + self.mean
    return np.clip(blocks_to_video(blocks), -1.0, 1.0)

  def state(self) -> dict:
    return {"mean": self.mean, "components": self.components, "scales": self.scales}

  @classmethod
  def from_state(cls, state) -> "PCACodec":
    return cls(state["mean"], state["components"], state["scales"])
