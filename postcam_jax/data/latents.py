"""Latent records of one scene: each video encoded once, only the render per pair.

A scene of C cameras gives up to C (C - 1) ordered pairs per clip window (90 for the dataset's 10
cameras). :func:`scene_examples` encodes what the pairs share once and only the render per pair:

- every (camera, window) clip that is a source or a target of a chosen pair: read once (the video
  decoded once per camera, frames picked, resized/cropped to H x W with the sampler's own path
  ``geometry.image_ops.fit_arrays``), **VAE-encoded once** (``Encoders.encode_videos``, batched
  over the scene's clips);
- every distinct caption of a target camera (``metadata.csv``): **umT5-encoded once**;
- every source clip's depth, once: the scene's exact depth where it has one (``depth/camXX.npz``,
  generated data), else Depth Anything 3 on the clip plus one anchor frame of every other camera,
  scaled to the dataset's metres by ``depth_scale`` (a similarity fit of DA3's camera path);
- per pair: the cameras (``pairs.pair_cameras``: RT tokens [11, 12] and the per-frame target
  poses and K that the Plucker input is made from), the release's render of the source clip
  from the target camera (forward warp, 4x down) and its VAE latent.

Which pairs: every ordered pair of every window, or ``pairs_per_scene`` of them drawn without
replacement by a generator seeded with (seed, CRC32 of the scene id): the choice depends on the
scene alone, never on how scenes are split into shards or processes.
"""

import dataclasses
import hashlib
import json
import os
import zlib

import numpy as np

from postcam_jax.data import encoders as encoders_lib
from postcam_jax.data import multicam, pairs, records
from postcam_jax.geometry import cameras, image_ops

ON_ERROR = ("raise", "skip")


class SettingsError(ValueError):
  """Settings of a preparation that cannot work (refused before any work starts)."""


@dataclasses.dataclass(frozen=True)
class LatentConfig:
  """A latent-record preparation (``python -m postcam_jax.data.prepare --latents``)."""
  root: str
  data_dir: str
  vae: str
  text_encoder: str
  depth_model: str | None = None
  name: str = "latents"
  splits: tuple[str, ...] = ("train",)
  clip_frames: int = 17
  stride: int = 1
  window_step: int | None = None
  height: int = 64
  width: int = 96
  pairs_per_scene: int | None = None
  seed: int = 0
  num_cameras: int | None = None
  scenes_per_shard: int = 4
  on_error: str = "raise"
  vae_dtype: str = "float32"
  batch_per_device: int = 1
  depth_process_res: int = 504  # DA3's processing resolution (the release's 504)
  host_threads: int = 0  # threads decoding and resizing videos (0: min(32, CPU count))
  overwrite: bool = False
  progress: bool = True
  barrier_timeout_s: float = 7 * 24 * 3600.0

  def check(self):
    """Every setting that cannot work, as one ValueError, before any work starts."""
    problems = []
    if (self.clip_frames - 1) % cameras.VAE_FRAMES_PER_LATENT or self.clip_frames < 1:
      problems.append(f"--clip_frames {self.clip_frames}: the Wan-VAE needs 4k + 1 frames")
    if self.height % 32 or self.width % 32 or self.height < 32 or self.width < 32:
      problems.append(f"--height/--width {self.height}x{self.width}: need multiples of 32 (the "
                      f"render is 4x down, then the VAE's 8x)")
    if self.stride < 1:
      problems.append(f"--stride {self.stride}: must be >= 1")
    if self.host_threads < 0:
      problems.append(f"--host_threads {self.host_threads}: must be >= 0 (0: automatic)")
    if self.scenes_per_shard < 1:
      problems.append(f"--scenes_per_shard {self.scenes_per_shard}: must be >= 1")
    if self.pairs_per_scene is not None and self.pairs_per_scene < 1:
      problems.append(f"--pairs_per_scene {self.pairs_per_scene}: must be >= 1")
    if self.on_error not in ON_ERROR:
      problems.append(f"--on_error {self.on_error!r}: choose one of {ON_ERROR}")
    if not self.splits or len(set(self.splits)) != len(self.splits):
      problems.append(f"--splits {','.join(self.splits)}: name distinct splits")
    for flag, path in (("--vae", self.vae), ("--text-encoder", self.text_encoder),
                       ("--depth-model", self.depth_model)):
      if path is not None and not os.path.isfile(os.path.join(path, "model.json")):
        problems.append(f"{flag} {path}: not a converted model directory (no model.json)")
    if problems:
      raise SettingsError("; ".join(problems))

  def settings(self) -> dict:
    """What defines the records' content (stored as the prepared directory's marker): the source
    root, splits, clip geometry, pair choice, shard layout, and each model directory with a
    digest of its model.json."""
    def model(path):
      if path is None:
        return None
      with open(os.path.join(path, "model.json"), "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:16]
      return f"{os.path.abspath(path)} (model.json {digest})"

    return {"kind": "latent", "root": os.path.abspath(self.root), "splits": list(self.splits),
            "clip_frames": self.clip_frames, "stride": self.stride,
            "window_step": self.window_step, "height": self.height, "width": self.width,
            "pairs_per_scene": self.pairs_per_scene, "seed": self.seed,
            "num_cameras": self.num_cameras, "scenes_per_shard": self.scenes_per_shard,
            "vae": model(self.vae), "vae_dtype": self.vae_dtype,
            "text_encoder": model(self.text_encoder), "depth_model": model(self.depth_model),
            "depth_process_res": self.depth_process_res if self.depth_model else None}

  @property
  def threads(self) -> int:
    return self.host_threads or min(32, os.cpu_count() or 1)

  @property
  def directory(self) -> str:
    return records.prepared_dir(self.data_dir, self.name)


# ------------------------------------------------------------------------------------------------
# Work units: a few scenes of one split, one record shard each.


@dataclasses.dataclass(frozen=True)
class Unit:
  split: str
  index: int
  count: int
  scenes: tuple[str, ...]

  @property
  def shard(self) -> str:
    return records.shard_name(self.split, self.index, self.count)

  @property
  def label(self) -> str:
    return f"{self.split}-{self.index:05d}-of-{self.count:05d}"


def plan_units(config: LatentConfig) -> list[Unit]:
  """Every split's scene directories (sorted as the readers sort them) in groups of
  ``scenes_per_shard``; the same list whatever the process count."""
  out = []
  for split in config.splits:
    scenes = multicam.list_scene_dirs(config.root, split)
    if not scenes:
      raise multicam.DatasetError(f"{os.path.join(config.root, split)}: no scene directories")
    groups = [tuple(scenes[i:i + config.scenes_per_shard])
              for i in range(0, len(scenes), config.scenes_per_shard)]
    out.extend(Unit(split, i, len(groups), g) for i, g in enumerate(groups))
  return out


def unit_record_path(directory: str, unit: Unit) -> str:
  return os.path.join(directory, "_units", f"{unit.label}.json")


def read_unit_record(directory: str, unit: Unit) -> dict | None:
  """The finished unit's record (written after its shard), or None if it is not finished."""
  path = unit_record_path(directory, unit)
  if not (os.path.isfile(path) and os.path.isfile(os.path.join(directory, unit.shard))):
    return None
  with open(path) as f:
    return json.load(f)


# ------------------------------------------------------------------------------------------------
# One scene.


def scene_pairs(scene: multicam.MultiCamScene, config: LatentConfig) -> list[pairs.Pair]:
  """The scene's chosen ordered pairs (``Pair.scene`` is 0: one scene), in enumeration order."""
  if len(scene.cameras) < 2:
    raise multicam.DatasetError(f"{scene.path}: a pair needs two cameras, it has "
                                f"{len(scene.cameras)}")
  every = pairs.enumerate_pairs([scene], config.clip_frames, config.stride, config.window_step)
  if config.pairs_per_scene is None or config.pairs_per_scene >= len(every):
    return every
  rng = np.random.default_rng([config.seed, zlib.crc32(scene.scene_id.encode())])
  chosen = np.sort(rng.choice(len(every), config.pairs_per_scene, replace=False))
  return [every[i] for i in chosen]


FIT_CHUNK = 8  # frames resized at a time (per-frame work: the same result, cache-sized arrays)


class SceneClips:
  """The scene's clips at H x W, each camera's video decoded once; :meth:`prefetch` decodes and
  resizes the cameras in ``executor``'s threads (numpy and PyAV release the GIL) while the
  devices encode something else."""

  def __init__(self, scene: multicam.MultiCamScene, config: LatentConfig, executor=None):
    self.scene, self.config, self.executor = scene, config, executor
    self.native: dict[str, tuple[int, int]] = {}
    self.clips: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    self.pending: dict[str, object] = {}

  def frames(self, start: int) -> np.ndarray:
    c = self.config
    return start + c.stride * np.arange(c.clip_frames)

  def _load(self, camera: str, starts) -> tuple[tuple[int, int], dict]:
    rgb = self.scene.read_video(camera)
    k = self.scene.intrinsics(rgb.shape[1], rgb.shape[2])
    out = {}
    for start in starts:
      frames = rgb[self.frames(start)]
      parts = [image_ops.fit_arrays({"video": frames[i:i + FIT_CHUNK]}, k,
                                    (self.config.height, self.config.width))
               for i in range(0, len(frames), FIT_CHUNK)]
      out[start] = (np.concatenate([p[0]["video"] for p in parts]), parts[0][1].astype(np.float32))
    return rgb.shape[1:3], out

  def prefetch(self, keys) -> "SceneClips":
    """Start loading the (camera, start) clips of ``keys`` (with an executor; else on use)."""
    starts: dict[str, list[int]] = {}
    for camera, start in sorted(set(keys)):
      starts.setdefault(camera, []).append(start)
    if self.executor is not None:
      for camera, wanted in starts.items():
        if camera not in self.pending:
          self.pending[camera] = self.executor.submit(self._load, camera, wanted)
    return self

  def clip(self, camera: str, start: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [T, H, W, 3], K [3, 3] at H x W) of ``camera``'s clip starting at ``start``."""
    key = (camera, start)
    if key not in self.clips:
      future = self.pending.pop(camera, None)
      native, loaded = future.result() if future is not None else self._load(camera, [start])
      if key not in loaded:
        native, loaded = self._load(camera, [start])
      self.native[camera] = native
      self.clips.update(((camera, s), v) for s, v in loaded.items())
    return self.clips[key]

  def exact_depth(self, camera: str, start: int) -> np.ndarray | None:
    """The scene's own depth of the clip at H x W (generated data), or None."""
    if not self.scene.has_depth(camera):
      return None
    depth = self.scene.read_depth(camera)
    native = self.native.get(camera)
    if native is not None and depth.shape[1:] != native:
      raise multicam.DatasetError(f"{self.scene.depth_path(camera)}: depth {depth.shape} does "
                                  f"not match the video's frames {native}")
    fitted, _ = image_ops.fit_arrays({"depth": depth[self.frames(start)]}, None,
                                     (self.config.height, self.config.width))
    return fitted["depth"]


def needed_clips(scene: multicam.MultiCamScene, chosen: list[pairs.Pair]) -> list[tuple]:
  """Every (camera, start) a scene's pairs read: sources, targets and, for a source without a
  depth file, the anchor frames of the other cameras."""
  keys = {(p.source, p.start) for p in chosen} | {(p.target, p.start) for p in chosen}
  for p in chosen:
    if not scene.has_depth(p.source):
      keys |= {(c, p.start) for c in scene.cameras}
  return sorted(keys)


def _source_depth(clips: SceneClips, enc: encoders_lib.Encoders, camera: str,
                  start: int) -> tuple[np.ndarray, dict]:
  """The source clip's depth at H x W in metres and how it was obtained."""
  exact = clips.exact_depth(camera, start)
  if exact is not None:
    return exact, {"camera": camera, "start": int(start), "depth": "exact"}
  scene, frames = clips.scene, clips.frames(start)
  others = [c for c in scene.cameras if c != camera]
  source, _ = clips.clip(camera, start)
  anchors = [clips.clip(c, start)[0][0] for c in others]
  origin = scene.c2w[camera][start]
  views = np.concatenate([scene.c2w[camera][frames], np.stack([scene.c2w[c][start]
                                                                for c in others])])
  dataset_w2c = cameras.relative_target_w2c(origin, views)
  estimated = enc.metric_depth(np.concatenate([source, np.stack(anchors)]), dataset_w2c,
                               len(frames))
  fit = estimated.fit
  return estimated.depth, {"camera": camera, "start": int(start), "depth": "da3",
                           "scale": fit.scale, "residual_m": fit.residual, "spread_m": fit.spread}


def scene_examples(scene: multicam.MultiCamScene, config: LatentConfig,
                   enc: encoders_lib.Encoders,
                   clips: SceneClips | None = None) -> tuple[list[dict], dict]:
  """The latent records of one scene (in pair order) and a report: pairs, videos, depth.
  ``clips``: the scene's clips, possibly already loading (:meth:`SceneClips.prefetch`)."""
  chosen = scene_pairs(scene, config)
  clips = clips or SceneClips(scene, config)
  videos = sorted({(p.source, p.start) for p in chosen} | {(p.target, p.start) for p in chosen})
  latents = dict(zip(videos, enc.encode_videos([clips.clip(*v)[0] for v in videos])))
  captions = sorted({scene.caption(p.target) for p in chosen})
  texts = dict(zip(captions, enc.encode_captions(captions)))
  sources = sorted({(p.source, p.start) for p in chosen})
  depth, depth_report = {}, []
  for camera, start in sources:
    depth[(camera, start)], report = _source_depth(clips, enc, camera, start)
    depth_report.append(report)
  cams = [pairs.pair_cameras(scene, p, config.clip_frames, config.stride) for p in chosen]
  unit_frames = {v: encoders_lib.to_unit_range(clips.clip(*v)[0]) for v in sources}
  render_latents = enc.render_latents([
      (unit_frames[(p.source, p.start)], depth[(p.source, p.start)], c["source_w2c"],
       c["target_w2c"], clips.clip(p.source, p.start)[1]) for p, c in zip(chosen, cams)])
  examples = []
  for p, c, rl in zip(chosen, cams, render_latents):
    _, k = clips.clip(p.source, p.start)
    caption = scene.caption(p.target)
    arrays = {"target_latent": latents[(p.target, p.start)],
              "source_latent": latents[(p.source, p.start)], "render_latent": rl,
              "text_embedding": texts[caption]}
    bad = [key for key, v in arrays.items() if not np.all(np.isfinite(v))]
    if bad:
      raise ValueError(f"non-finite {', '.join(bad)} for pair {p.source}->{p.target}@{p.start}")
    examples.append({**{key: v.astype(records.BF16) for key, v in arrays.items()}, **c,
                     "intrinsics": k, "caption": caption, "scene": scene.scene_id,
                     "source_camera": p.source, "target_camera": p.target,
                     "start": np.int32(p.start), "stride": np.int32(config.stride)})
  report = {"scene": scene.scene_id, "pairs": len(chosen), "videos": len(videos),
            "captions": len(captions), "depth": depth_report}
  return examples, report
