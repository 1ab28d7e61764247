"""Preprocessing to ArrayRecord: a TFDS ``GeneratorBasedBuilder(file_format="array_record")``.

One record per training pair (``pairs.Pair``). Two record kinds, chosen by the builder config:

* **pixel** records (``encoders=None``), every array a TFDS ``Tensor`` feature:
  ``target_video``, ``source_video`` uint8 [T, H, W, 3]; ``source_depth`` float32 [T, H, W]
  (z-depth in metres; zeros and ``has_depth = 0`` for data without depth); ``source_w2c``,
  ``target_w2c`` float32 [T, 4, 4] (world-to-camera relative to the source camera at the clip's
  first frame, OpenCV axes, metres); ``intrinsics`` float32 [3, 3] at (H, W); ``camera`` float32
  [11, 12] (the model's camera input); ``caption`` text; ids ``scene``, ``source_camera``,
  ``target_camera`` (text), ``start``, ``stride`` (int32).
* **latent** records (``encoders=LatentEncoders(...)``, a Python recipe with any callables,
  e.g. the trainer tests' stand-ins): the same cameras, intrinsics, caption and ids, plus
  ``target_latent``, ``source_latent`` [F, h, w, C] from ``encoders.encoder`` (video in [-1, 1] ->
  latent), ``text_embedding`` [L, D] from ``encoders.text_encoder`` and, when a ``renderer`` is
  given, ``render_latent``; no pixels. Shapes are declared by the encoders. The latent records of
  the real models, on several processes and resumable, are ``python -m postcam_jax.data.prepare
  --latents`` (``postcam_jax.data.latents``; same keys, bf16, text without padding).

Both kinds keep the per-frame ``target_w2c`` and the ``intrinsics`` (at H x W = 8 h x 8 w of the
latents), so the same records serve either camera input of the model: the stored RT ``camera``, or
the Plucker rays per target token that the pipeline makes from them (``pipeline.PluckerCamera``).

Frames are resized/cropped to (H, W) at preparation time with the sampler's own path
(``postcam_jax.geometry.image_ops.fit_arrays``), so a
1280x1280 source becomes records of the training resolution. One preparation writes every split of
``PairsConfig.splits`` (each from ``<root>/<split>/``, e.g. ``("train", "test")`` for the trainer's
``data.split`` and ``data.eval_split``). Read the result without TensorFlow with
:func:`data_source` (``tfds.builder_from_directory(...).as_data_source``). A directory prepared
before is reused only if it was made with the same settings (:func:`settings`, compared with its
``records.MARKER``); otherwise :func:`prepare` names what differs, or rebuilds with ``overwrite``.
"""

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from postcam_jax.data import multicam, pairs, records
from postcam_jax.geometry import cameras, image_ops

BUILDER_NAME = records.BUILDER_NAME
VERSION = records.VERSION


@dataclasses.dataclass(frozen=True)
class LatentEncoders:
  """What turns a pixel pair into a latent record; shapes are those of one example."""
  encoder: Callable[[np.ndarray], np.ndarray]  # [T, H, W, 3] float32 in [-1, 1] -> [F, h, w, C]
  latent_shape: tuple[int, ...]
  text_encoder: Callable[[str], np.ndarray]  # caption -> [L, D]
  text_shape: tuple[int, ...]
  # A pixel example (videos float32 in [-1, 1]) -> the render [T, h', w', 3] in [-1, 1].
  renderer: Callable[[dict], np.ndarray] | None = None
  render_latent_shape: tuple[int, ...] | None = None
  dtype: type = np.float32


@dataclasses.dataclass(eq=False)
class PairsConfig(tfds.core.BuilderConfig):
  """Which scenes, pairs and clip geometry go into the records (``name`` names the config)."""
  root: str = ""
  splits: tuple[str, ...] = ("train",)  # source splits <root>/<split>/, one TFDS split each
  clip_frames: int = 17
  stride: int = 1
  window_step: int | None = None
  height: int = 64
  width: int = 96
  pairs_per_scene: int | None = None  # None: every ordered camera pair and window
  seed: int = 0
  on_error: str = "raise"
  num_cameras: int | None = None
  encoders: LatentEncoders | None = None


_tensor = records.tensor_feature  # raw bytes: TFDS's default (int64/float lists) is ~100x slower


def _pixel_features(t: int, h: int, w: int) -> dict:
  tensor = _tensor
  return {
      "target_video": tensor(shape=(t, h, w, 3), dtype=np.uint8),
      "source_video": tensor(shape=(t, h, w, 3), dtype=np.uint8),
      "source_depth": tensor(shape=(t, h, w), dtype=np.float32),
      "has_depth": tensor(shape=(), dtype=np.int32),
  }


def _latent_features(enc: LatentEncoders) -> dict:
  tensor = _tensor
  out = {"target_latent": tensor(shape=enc.latent_shape, dtype=enc.dtype),
         "source_latent": tensor(shape=enc.latent_shape, dtype=enc.dtype),
         "text_embedding": tensor(shape=enc.text_shape, dtype=enc.dtype)}
  if enc.renderer is not None:
    if enc.render_latent_shape is None:
      raise ValueError("LatentEncoders with a renderer needs render_latent_shape")
    out["render_latent"] = tensor(shape=enc.render_latent_shape, dtype=enc.dtype)
  return out


class MultiCamPairs(tfds.core.GeneratorBasedBuilder):
  """Paired multi-camera clips from a MultiCamVideo-layout directory (see module docstring)."""

  VERSION = tfds.core.Version(VERSION)
  BUILDER_CONFIGS = [PairsConfig(name="default")]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's default probes importlib_resources (not installed, not needed): name the file here.
    return epath.Path(__file__)

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(*args, **kwargs)
    self.skipped: list[tuple[str, str]] = []

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    tensor = _tensor
    t = c.clip_frames
    features = {
        "source_w2c": tensor(shape=(t, 4, 4), dtype=np.float32),
        "target_w2c": tensor(shape=(t, 4, 4), dtype=np.float32),
        "intrinsics": tensor(shape=(3, 3), dtype=np.float32),
        "camera": tensor(shape=(cameras.NUM_CAMERA_TOKENS, 12), dtype=np.float32),
        "caption": tfds.features.Text(),
        "scene": tfds.features.Text(),
        "source_camera": tfds.features.Text(),
        "target_camera": tfds.features.Text(),
        "start": tensor(shape=(), dtype=np.int32),
        "stride": tensor(shape=(), dtype=np.int32),
    }
    if c.encoders is None:
      features.update(_pixel_features(t, c.height, c.width))
    else:
      features.update(_latent_features(c.encoders))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        description=f"MultiCamVideo pairs from {c.root} ({', '.join(c.splits)}), "
                    f"{'latent' if c.encoders else 'pixel'} records")

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = tuple(self.builder_config.splits)
    if not splits or len(set(splits)) != len(splits):
      raise ValueError(f"PairsConfig.splits must name distinct splits, got {splits}")
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split: str):
    c = self.builder_config
    scan = multicam.scan_dataset(c.root, split, on_error=c.on_error,
                                 num_cameras=c.num_cameras)
    self.skipped.extend(scan.skipped)
    if c.pairs_per_scene is None:
      chosen = pairs.enumerate_pairs(scan.scenes, c.clip_frames, c.stride, c.window_step)
    else:
      chosen = sorted(pairs.sample_pairs(scan.scenes, c.pairs_per_scene * len(scan.scenes),
                                         c.seed, c.clip_frames, c.stride, c.window_step))
    cache = _SceneCache(c.height, c.width)
    for key, pair in enumerate(chosen):
      scene = scan.scenes[pair.scene]
      try:
        example = make_pixel_example(scene, pair, c, cache)
      except ValueError as e:  # DatasetError, VideoReadError: never a silent wrong sample
        if c.on_error == "raise":
          raise
        logging.warning("skipping pair %s of %s: %s", pair, scene.path, e)
        self.skipped.append((f"{scene.path}:{pair.source}->{pair.target}@{pair.start}", str(e)))
        continue
      if c.encoders is not None:
        example = to_latent_example(example, c.encoders)
      yield key, example
    if self.skipped:
      logging.warning("%s: skipped %d bad input(s)", c.root, len(self.skipped))


class _SceneCache:
  """Full-length resized videos/depth of the current scene, so each camera decodes once."""

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width
    self.scene_path = None
    self.items: dict[str, tuple] = {}

  def get(self, scene: multicam.MultiCamScene, camera: str):
    if scene.path != self.scene_path:
      self.scene_path, self.items = scene.path, {}
    if camera not in self.items:
      rgb = scene.read_video(camera)
      arrays = {"video": rgb}
      if scene.has_depth(camera):
        arrays["depth"] = scene.read_depth(camera)
        if arrays["depth"].shape != rgb.shape[:3]:
          raise multicam.DatasetError(f"{scene.depth_path(camera)}: depth {arrays['depth'].shape}"
                                      f" does not match the video's {rgb.shape[:3]}")
      k = scene.intrinsics(rgb.shape[1], rgb.shape[2])
      arrays, k = image_ops.fit_arrays(arrays, k, (self.height, self.width))
      self.items[camera] = (arrays, k)
    return self.items[camera]


def make_pixel_example(scene: multicam.MultiCamScene, pair: pairs.Pair, config: PairsConfig,
                       cache: _SceneCache | None = None) -> dict:
  """The pixel record of one pair (numpy arrays, at the config's clip length and size)."""
  cache = cache or _SceneCache(config.height, config.width)
  index = pairs.clip_frame_indices(pair, config.clip_frames, config.stride)
  source, k = cache.get(scene, pair.source)
  target, _ = cache.get(scene, pair.target)
  has_depth = "depth" in source
  depth = source["depth"][index] if has_depth else np.zeros(
      (config.clip_frames, config.height, config.width), np.float32)
  example = {
      "target_video": target["video"][index],
      "source_video": source["video"][index],
      "source_depth": depth.astype(np.float32),
      "has_depth": np.int32(has_depth),
      "intrinsics": k.astype(np.float32),
      "caption": scene.caption(pair.target),
      "scene": scene.scene_id,
      "source_camera": pair.source,
      "target_camera": pair.target,
      "start": np.int32(pair.start),
      "stride": np.int32(config.stride),
  }
  example.update(pairs.pair_cameras(scene, pair, config.clip_frames, config.stride))
  return example


def to_latent_example(example: dict, enc: LatentEncoders) -> dict:
  """A pixel example -> its latent record: encode both videos (and the render) and the text."""
  out = {k: v for k, v in example.items()
         if k not in ("target_video", "source_video", "source_depth", "has_depth")}
  as_float = {k: example[k].astype(np.float32) / 127.5 - 1.0
              for k in ("target_video", "source_video")}
  out["target_latent"] = np.asarray(enc.encoder(as_float["target_video"]), enc.dtype)
  out["source_latent"] = np.asarray(enc.encoder(as_float["source_video"]), enc.dtype)
  out["text_embedding"] = np.asarray(enc.text_encoder(example["caption"]), enc.dtype)
  if enc.renderer is not None:
    render = enc.renderer(dict(example, **as_float))
    out["render_latent"] = np.asarray(enc.encoder(np.asarray(render, np.float32)), enc.dtype)
  return out


def prepared_dir(data_dir: str, name: str) -> str:
  """Where ``prepare`` puts config ``name``'s files under ``data_dir``."""
  return records.prepared_dir(data_dir, name)


def _callable_name(fn) -> str | None:
  if fn is None:
    return None
  return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def settings(config: PairsConfig) -> dict:
  """What defines a pixel (or Python-recipe latent) preparation's content: the prepared
  directory's marker (``records.claim``)."""
  enc = config.encoders
  return {"kind": "pixel" if enc is None else "latent-python", "root": os.path.abspath(config.root),
          "splits": list(config.splits), "clip_frames": config.clip_frames,
          "stride": config.stride, "window_step": config.window_step, "height": config.height,
          "width": config.width, "pairs_per_scene": config.pairs_per_scene, "seed": config.seed,
          "num_cameras": config.num_cameras,
          "encoders": None if enc is None else {
              "encoder": _callable_name(enc.encoder), "latent_shape": list(enc.latent_shape),
              "text_encoder": _callable_name(enc.text_encoder),
              "text_shape": list(enc.text_shape), "renderer": _callable_name(enc.renderer),
              "render_latent_shape": None if enc.render_latent_shape is None
              else list(enc.render_latent_shape), "dtype": np.dtype(enc.dtype).name}}


def prepare(config: PairsConfig, data_dir: str, num_shards: int | None = None,
            overwrite: bool = False) -> MultiCamPairs:
  """Build the ArrayRecord files of ``config`` (every split of ``config.splits``) under
  ``data_dir``; returns the builder. A directory prepared before with the same settings is reused
  as is; one prepared from another root or with other settings (``settings``) is refused with a
  ``records.PreparedDirError`` naming every difference, or rebuilt with ``overwrite``."""
  directory = prepared_dir(data_dir, config.name)
  wanted = settings(config)
  state = records.claim(directory, wanted, overwrite)
  if state == "new" and os.path.isdir(directory):
    os.rmdir(directory)  # empty (claim says so): TFDS would take it for a prepared dataset
  builder = MultiCamPairs(config=config, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      num_shards=num_shards, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  if state == "new":
    records.write_marker(directory, wanted)
  return builder


def data_source(path: str, split: str = "train"):
  """A random-access source (``ArrayRecordDataSource``) of a prepared directory, TF-free."""
  return tfds.builder_from_directory(path).as_data_source(split=split)
