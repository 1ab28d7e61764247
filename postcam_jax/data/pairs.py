"""Training pairs: (scene, source camera, target camera, frame window), and their cameras.

A pair's clip is frames ``start, start + stride, ..., start + (clip_frames - 1) * stride`` of both
cameras (the cameras are synchronised). :func:`enumerate_pairs` lists every ordered pair of
distinct cameras and every window; :func:`sample_pairs` draws as ReCamMaster does (a target video
uniformly, then a different camera of the same scene uniformly as the source, then a window),
reproducibly from a seed. :func:`pair_cameras` computes the cameras of a pair with
``postcam_jax.geometry.cameras`` (the one place the relative-camera convention lives).
"""

import dataclasses

import numpy as np

from postcam_jax.data import multicam
from postcam_jax.geometry import cameras


@dataclasses.dataclass(frozen=True, order=True)
class Pair:
  """One training example's identity; ``scene`` indexes the scan's scene list."""
  scene: int
  source: str
  target: str
  start: int


def window_starts(num_frames: int, clip_frames: int, stride: int = 1,
                  window_step: int | None = None) -> list[int]:
  """Start frames of every clip window that fits; ``window_step`` defaults to the clip span.

  The span of a clip is ``(clip_frames - 1) * stride + 1`` frames, so the default windows do not
  overlap. Raises ValueError if not even one window fits.
  """
  if clip_frames < 1 or stride < 1:
    raise ValueError(f"need clip_frames >= 1 and stride >= 1; got {clip_frames}, {stride}")
  span = (clip_frames - 1) * stride + 1
  if span > num_frames:
    raise ValueError(f"a clip of {clip_frames} frames at stride {stride} spans {span} frames; "
                     f"the videos have {num_frames}")
  step = window_step or span
  return list(range(0, num_frames - span + 1, step))


def enumerate_pairs(scenes: list[multicam.MultiCamScene], clip_frames: int, stride: int = 1,
                    window_step: int | None = None) -> list[Pair]:
  """Every (scene, source != target, window), in a fixed order."""
  out = []
  for index, scene in enumerate(scenes):
    starts = window_starts(scene.num_frames, clip_frames, stride, window_step)
    for source in scene.cameras:
      for target in scene.cameras:
        if source != target:
          out.extend(Pair(index, source, target, s) for s in starts)
  return out


def sample_pairs(scenes: list[multicam.MultiCamScene], num_pairs: int, seed: int,
                 clip_frames: int, stride: int = 1,
                 window_step: int | None = None) -> list[Pair]:
  """``num_pairs`` draws (with replacement) of target video, source camera and window."""
  if not scenes:
    raise ValueError("sample_pairs needs at least one scene")
  rng = np.random.default_rng(seed)
  videos = [(i, cam) for i, scene in enumerate(scenes) for cam in scene.cameras]
  out = []
  for _ in range(num_pairs):
    index, target = videos[int(rng.integers(len(videos)))]
    others = [cam for cam in scenes[index].cameras if cam != target]
    if not others:
      raise ValueError(f"{scenes[index].path}: a pair needs two cameras, it has one")
    source = others[int(rng.integers(len(others)))]
    starts = window_starts(scenes[index].num_frames, clip_frames, stride, window_step)
    out.append(Pair(index, source, target, starts[int(rng.integers(len(starts)))]))
  return out


def clip_frame_indices(pair: Pair, clip_frames: int, stride: int = 1) -> np.ndarray:
  return pair.start + stride * np.arange(clip_frames)


def pair_cameras(scene: multicam.MultiCamScene, pair: Pair, clip_frames: int,
                 stride: int = 1) -> dict[str, np.ndarray]:
  """The cameras of a pair, all relative to the source camera at the clip's first frame.

  Returns ``source_w2c`` and ``target_w2c`` float32 [T, 4, 4] (world-to-camera, OpenCV axes,
  metres; ``source_w2c[0]`` is the identity) and ``camera`` float32 [11, 12], the model's input
  (``cameras.camera_tokens`` of ``target_w2c``).
  """
  frames = clip_frame_indices(pair, clip_frames, stride)
  source_c2w = scene.c2w[pair.source][frames]
  target_c2w = scene.c2w[pair.target][frames]
  target_w2c = cameras.relative_target_w2c(source_c2w[0], target_c2w)
  source_w2c = cameras.relative_target_w2c(source_c2w[0], source_c2w)
  return {"source_w2c": source_w2c.astype(np.float32),
          "target_w2c": target_w2c.astype(np.float32),
          "camera": cameras.camera_tokens(target_w2c).astype(np.float32)}
