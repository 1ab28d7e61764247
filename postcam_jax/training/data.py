"""The trainer's input: latent batches from prepared ArrayRecords or from generated scenes.

Batches are dicts of numpy arrays (per process) with the keys of ``BATCH_KEYS``:

=================  =============================  =========================================
key                shape, dtype                   meaning
=================  =============================  =========================================
target_latent      [B, F, h, w, C] float32        x0 of the flow-matching loss
source_latent      [B, F, h, w, C] float32        the source video's latent (kept clean)
render_latent      [B, F, h/4, w/4, C] float32    the render's latent (only if available)
text_embedding     [B, L, D] float32              text-encoder states of the target's caption
camera             [B, 11, 12] float32            the model's camera input (RT), or
                   [B, N, 24] float32             Plucker rays per target token
=================  =============================  =========================================

The camera's representation is the model's (``camera_input(config)``, from ``config.model``):
``"rt"``, the 11 world-to-camera 3x4 tokens, or ``"plucker"`` (``camera_input='plucker'`` or the
``plucker_add`` variant), ``cameras.plucker_tokens(target_w2c, intrinsics, (F, h, w))`` with
N = F (h // 2) (w // 2), built per example from the pair's target poses (world = the source camera
at frame 0) and intrinsics at the video's 8 h x 8 w pixels (``pipeline.PluckerCamera``), before
the poses are dropped.

``config.data.source`` picks where they come from:

- ``"arrayrecord"``: latent records (``python -m postcam_jax.data.prepare --latents``: Wan-VAE
  and umT5 outputs, or ``arrayrecord.PairsConfig(encoders=...)`` from Python) in one directory
  with the ``data.split`` and ``data.eval_split`` splits, of clips of ``data.num_frames`` frames;
  training reads through ``postcam_jax.data.pipeline.make_dataset``, evaluation only the records
  of its batches. Text stored without the padding is padded to ``data.text_len`` at load
  (``pipeline.PadText``); bf16 records become float32 batches.
- ``"synthetic"``: scenes made by ``postcam_jax.data.synthetic`` at the config's size, paired
  (held out: ``num_eval_scenes`` other scenes, or with 0 every 4th pair of the same scenes),
  rendered with the release's forward warp (``postcam_jax.geometry.render``; 4x down, or at full
  size with ``data.render_scale = 1``) and encoded in memory by the stand-in encoders below
  (the CPU tests and demo; no weights needed). Examples are cached as one ``.npz`` per split
  under ``data.cache_dir`` so restarts do not regenerate them. The held-out scenes come from
  generator seed ``data.seed + 1000``, or ``data.eval_seed`` where set.

Both paths end in a Grain ``IterDataset`` whose iterator state Orbax checkpoints (``grain
.checkpoint``), so a resumed run sees exactly the batches an uninterrupted one would.
"""

import dataclasses
import functools
import hashlib
import os
import zlib

import grain
import numpy as np
from absl import logging

from postcam_jax.core.atomic import atomic_file
from postcam_jax.data import arrayrecord, codec, multicam, pairs, pipeline, synthetic
from postcam_jax.geometry import render

BATCH_KEYS = ("target_latent", "source_latent", "render_latent", "text_embedding", "camera")


def camera_input(config) -> str:
  """The camera representation ``config.model`` reads (``PostCamConfig.plucker``): "plucker" with
  ``camera_input='plucker'`` or the ``plucker_add`` variant, else "rt" (also without a model)."""
  model = config.get("model") or {}
  kind = model.get("camera_input") or "rt"
  if kind not in ("rt", "plucker"):
    raise ValueError(f"config.model.camera_input must be 'rt' or 'plucker', got {kind!r}")
  return "plucker" if kind == "plucker" or model.get("variant") == "plucker_add" else "rt"


class PatchEncoder:
  """A fixed stand-in for the Wan-VAE with its shapes: [T, H, W, 3] -> [1 + (T-1)/4, H/8, W/8, C].

  Frame 0 alone, then groups of 4 frames (Wan's causal layout); each 4x8x8x3 block is projected
  by one fixed random matrix (seeded) to C channels. Linear and deterministic, so latents keep the
  videos' content and geometry, which is all the CPU tests need.
  """

  def __init__(self, channels: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.channels = channels
    # ~unit-variance latents (like Wan's normalised ones) for pixels of variance ~0.25.
    self.matrix = (rng.standard_normal((4 * 8 * 8 * 3, channels)) /
                   np.sqrt(4 * 8 * 8 * 3 * 0.25)).astype(np.float32)

  def latent_shape(self, t: int, h: int, w: int) -> tuple[int, ...]:
    return (1 + (t - 1) // 4, h // 8, w // 8, self.channels)

  def __call__(self, video: np.ndarray) -> np.ndarray:
    video = np.asarray(video, np.float32)
    t, h, w, c = video.shape
    if (t - 1) % 4 or h % 8 or w % 8 or c != 3:
      raise ValueError(f"PatchEncoder needs [T = 1 + 4k, H % 8 == 0, W % 8 == 0, 3]; got "
                       f"{video.shape}")
    first = np.repeat(video[:1], 4, axis=0)  # frame 0 fills its own 4-frame group
    groups = np.concatenate([first, video[1:]], axis=0).reshape(-1, 4, h // 8, 8, w // 8, 8, 3)
    blocks = groups.transpose(0, 2, 4, 1, 3, 5, 6).reshape(groups.shape[0], h // 8, w // 8, -1)
    return blocks @ self.matrix


class HashTextEncoder:
  """A stand-in text encoder: caption -> [length, width], one fixed random vector per word
  (seeded by the word's CRC32), zero rows past the caption like the umT5 states."""

  def __init__(self, length: int, width: int, seed: int = 0):
    self.length, self.width, self.seed = length, width, seed

  def __call__(self, caption: str) -> np.ndarray:
    out = np.zeros((self.length, self.width), np.float32)
    for i, word in enumerate(caption.lower().split()[:self.length]):
      rng = np.random.default_rng([self.seed, zlib.crc32(word.encode())])
      out[i] = rng.standard_normal(self.width).astype(np.float32)
    return out


RELEASE_RENDER_SCALE = 4  # the release's render: the warp, then a 4x bilinear downsample


def release_render(example: dict, scale: int = RELEASE_RENDER_SCALE, *, with_holes: bool = False):
  """The release's render condition of a pixel example: forward warp, then 4x down.

  ``scale`` 1 keeps the warp at the video's size (``data.render_scale``, a from-scratch option:
  its latent has the target's grid, for ``render_rope='aligned'``); 4 is the release's.
  ``with_holes``: also return the warp's holes [T, H, W] (bool, at the video's size), the pixels
  no source pixel lands on.
  """
  frames, holes = render.forward_warp(example["source_video"], example["source_depth"],
                                      example["source_w2c"], example["target_w2c"],
                                      example["intrinsics"])
  if scale == 1:
    out = np.asarray(frames)
  elif scale == RELEASE_RENDER_SCALE:
    out = np.asarray(render.downsample4x(frames))
  else:
    raise ValueError(f"render scale must be {RELEASE_RENDER_SCALE} (the release's) or 1 (full "
                     f"size), got {scale}")
  return (out, np.asarray(holes)) if with_holes else out


def render_scale(data) -> int:
  """``data.render_scale`` (absent: the release's 4)."""
  return int(data.get("render_scale") or RELEASE_RENDER_SCALE)


def camera_layout(data) -> dict:
  """The generator's camera placement knobs set in ``data`` (``camera_spread_deg``,
  ``camera_distance_m`` of ``synthetic.GeneratorConfig``) that differ from the dataset's way
  (all around, 3/5/7/10 m): ``{}`` for the default layout."""
  return {k: float(data[k]) for k in ("camera_spread_deg", "camera_distance_m")
          if k in data and float(data[k]) != getattr(synthetic.GeneratorConfig, k)}


def _cache_path(data, split: str, camera: str = "rt") -> str:
  """The cache file of ``split``'s examples with ``camera``'s representation (the RT key is the
  one caches always had, so they stay valid)."""
  key = "|".join(str(data.get(k)) for k in (
      "num_scenes", "num_eval_scenes", "num_cameras", "num_frames", "height", "width", "seed",
      "latent_channels", "text_len", "text_dim", "pairs_per_scene", "encoder"))
  if camera != "rt":
    key += f"|camera={camera}"
  if render_scale(data) != RELEASE_RENDER_SCALE:  # the release's key is the one caches had
    key += f"|render_scale={render_scale(data)}"
  if not data.get("codec_whiten", True):
    key += "|codec_whiten=False"
  if camera_layout(data) != {}:
    key += f"|camera_layout={sorted(camera_layout(data).items())}"
  if data.get("eval_seed") is not None:
    key += f"|eval_seed={held_out_seed(data)}"
  digest = hashlib.sha1(key.encode()).hexdigest()[:12]
  return os.path.join(data.cache_dir, f"synthetic_{split}_{digest}.npz")


def stand_in_codec(data):
  """The stand-in encoder of ``data.encoder``: ``"patch"`` (a fixed random projection, the
  default) or ``"pca"`` (``postcam_jax.data.codec.PCACodec`` fitted on the training split's
  videos; it also decodes, so the demo can show and score pixels; ``data.codec_whiten`` False:
  unwhitened, see ``PCACodec.fit``). The PCA fit is cached beside the examples and made on first
  use."""
  kind = data.get("encoder", "patch")
  if kind == "patch":
    return PatchEncoder(data.latent_channels, seed=data.seed)
  if kind != "pca":
    raise ValueError(f"data.encoder must be 'patch' or 'pca', got {kind!r}")
  path = _cache_path(data, "codec")
  if not os.path.exists(path):
    videos = [v for pair in pixel_examples(data, "train")
              for v in (pair["target_video"], pair["source_video"])]
    fitted = codec.PCACodec.fit([v.astype(np.float32) / 127.5 - 1.0 for v in videos],
                                channels=data.latent_channels, seed=data.seed,
                                whiten=bool(data.get("codec_whiten", True)))
    os.makedirs(data.cache_dir, exist_ok=True)
    tmp = f"{path}.partial.npz"
    np.savez(tmp, **fitted.state())
    os.replace(tmp, path)
  with np.load(path) as stored:
    return codec.PCACodec.from_state(stored)


def synthetic_examples(data, split: str, camera: str = "rt") -> list[dict]:
  """Latent examples of generated scenes (``split`` "train" or "eval": different scenes), one per
  pair of :func:`pixel_examples` in its order, with the ``camera`` of ``camera`` ("rt" or
  "plucker", see the module docstring)."""
  path = _cache_path(data, split, camera)
  if os.path.exists(path):
    with np.load(path) as stored:
      arrays = {k: stored[k] for k in stored.files}
    return [{k: v[i] for k, v in arrays.items()} for i in range(len(arrays["camera"]))]
  examples = _generate(data, split, camera)
  os.makedirs(data.cache_dir, exist_ok=True)
  with atomic_file(path, suffix=".npz") as tmp:  # concurrent processes never read half a cache
    np.savez(tmp, **{k: np.stack([e[k] for e in examples]) for k in examples[0]})
  return examples


def _held_out_pair(index: int) -> bool:
  """With ``num_eval_scenes = 0`` every 4th pair of the training scenes is held out."""
  return index % 4 == 3


def held_out_seed(data) -> int:
  """The generator seed of the held-out scenes: ``data.eval_seed`` where set (e.g. one set of
  scenes to score models of several data seeds on), else ``data.seed + 1000``."""
  seed = data.get("eval_seed")
  if seed is None:
    return data.seed + 1000
  if int(seed) == data.seed:
    raise ValueError(f"data.eval_seed {seed} is data.seed: those are the training scenes; "
                     f"choose another seed")
  return int(seed)


def pixel_examples(data, split: str) -> list[dict]:
  """Pixel examples of the generated scenes of ``split`` (generating them if needed): the pairs
  behind :func:`synthetic_examples`, in its order, with their poses and intrinsics."""
  same_scenes = split == "train" or not data.num_eval_scenes
  num_scenes = data.num_scenes if same_scenes else data.num_eval_scenes
  seed = data.seed if same_scenes else held_out_seed(data)
  layout = camera_layout(data)
  root = os.path.join(data.cache_dir, f"scenes_{seed}_{num_scenes}" +
                      "".join(f"_{k}{v:g}" for k, v in sorted(layout.items())))
  gen = synthetic.GeneratorConfig(root=root, num_scenes=num_scenes, num_cameras=data.num_cameras,
                                  num_frames=data.num_frames, height=data.height,
                                  width=data.width, seed=seed, crf=0,  # lossless: reproducible
                                  **layout)
  done = os.path.join(root, ".complete")
  if not os.path.exists(done):  # train and eval may share scenes: generate them once
    logging.info("generating %d synthetic scene(s) for %s under %s", num_scenes, split, root)
    synthetic.generate(gen)
    open(done, "w").close()
  scenes = multicam.scan_dataset(root, "train").scenes
  if data.pairs_per_scene and split == "train":  # held-out: every pair
    chosen = sorted(pairs.sample_pairs(scenes, data.pairs_per_scene * len(scenes), seed,
                                       data.num_frames))
  else:
    chosen = pairs.enumerate_pairs(scenes, data.num_frames)
  if not data.num_eval_scenes:  # held-out pairs of the same scenes (unseen source -> target)
    chosen = [p for i, p in enumerate(chosen) if _held_out_pair(i) == (split == "eval")]
  pc = arrayrecord.PairsConfig(name="synthetic", root=root, clip_frames=data.num_frames,
                               height=data.height, width=data.width)
  cache = arrayrecord._SceneCache(data.height, data.width)  # pylint: disable=protected-access
  return [arrayrecord.make_pixel_example(scenes[pair.scene], pair, pc, cache) for pair in chosen]


def _generate(data, split: str, camera: str = "rt") -> list[dict]:
  """Latent examples of ``split``: pixel examples encoded by the stand-in codec. The Plucker
  camera is made here, from the pair's target poses and intrinsics (at the scenes' height x
  width), which the examples then drop."""
  encoders = arrayrecord.LatentEncoders(
      encoder=stand_in_codec(data),
      latent_shape=(), text_encoder=HashTextEncoder(data.text_len, data.text_dim, data.seed),
      text_shape=(), renderer=functools.partial(release_render, scale=render_scale(data)))
  # The RT camera is the pixel example's own (``pairs.pair_cameras``); Plucker is made here.
  make_camera = pipeline.camera_map(camera, (data.height, data.width)) if camera != "rt" else None
  out = []
  for pixel in pixel_examples(data, split):
    latent = arrayrecord.to_latent_example(pixel, encoders)
    if make_camera is not None:
      latent = make_camera.map(latent)
    out.append({k: np.asarray(latent[k], np.float32) for k in BATCH_KEYS})
  return out


class SelectKeys(grain.transforms.Map):
  """Keep the model's numeric inputs (drop captions, ids and poses)."""

  def map(self, element: dict) -> dict:
    return {k: np.asarray(element[k], np.float32) for k in BATCH_KEYS if k in element}


@dataclasses.dataclass
class ProcessRows(grain.transforms.Map):
  """This process's contiguous rows of a global batch."""
  process_index: int
  process_count: int

  def map(self, element: dict) -> dict:
    local = len(next(iter(element.values()))) // self.process_count
    start = self.process_index * local
    return {k: v[start:start + local] for k, v in element.items()}


def train_dataset(config, process_index: int, process_count: int,
                  batch_size: int | None = None) -> grain.IterDataset:
  """This process's infinite, checkpointable dataset of training batches of ``batch_size``
  (global; default ``data.batch_size``; the trainer passes its micro-batch)."""
  data = config.data
  batch_size = batch_size or data.batch_size
  camera = camera_input(config)
  if batch_size % process_count:
    raise ValueError(f"the global batch of {batch_size} must divide over {process_count} "
                     f"processes")
  if data.source == "arrayrecord":
    pipe = dataclasses.replace(pipeline.DataConfig.from_config(data), batch_size=batch_size,
                               camera_input=camera)
    _records(data, pipe.split, camera)  # the trainer's checks on the records, before the pipeline
    return pipeline.make_dataset(pipe, process_index, process_count).map(SelectKeys())
  if data.source != "synthetic":
    raise ValueError(f"data.source must be 'arrayrecord' or 'synthetic', got {data.source!r}")
  ds = grain.MapDataset.source(synthetic_examples(data, "train", camera))
  if len(ds) < batch_size:
    raise ValueError(f"{len(ds)} synthetic examples, fewer than the batch of {batch_size}; "
                     f"raise data.num_scenes")
  if data.shuffle:
    ds = ds.shuffle(seed=data.seed)
  # Every process walks the same global batches and keeps its rows, so the global batch (and
  # the loss) does not depend on the process count.
  ds = ds.repeat(None).map(SelectKeys()).batch(batch_size, drop_remainder=True)
  ds = ds.map(ProcessRows(process_index, process_count))
  return ds.to_iter_dataset()


def eval_batches(config, process_index: int, process_count: int,
                 batch_size: int | None = None) -> list[dict]:
  """The fixed held-out batches of this process (the same every run): the first
  ``eval.num_batches`` x ``batch_size`` examples of the held-out split (``batch_size`` global,
  default ``data.batch_size``). Only this process's rows of those batches are read."""
  data = config.data
  batch_size = batch_size or data.batch_size
  local = batch_size // process_count
  camera = camera_input(config)
  read = SelectKeys().map
  if data.source == "synthetic":
    source = synthetic_examples(data, "eval", camera)
  else:
    source = _records(data, data.eval_split, camera)
    # Text stored without the padding is padded; the records store the RT camera, the Plucker
    # one is made per record.
    maps = [pipeline.PadText(data.get("text_len"))]
    if camera != "rt":
      maps.append(pipeline.camera_map(camera, (data.height, data.width)))

    def read(record):
      for m in maps:
        record = m.map(record)
      return SelectKeys().map(record)
  n = min(len(source) // batch_size, config.eval.num_batches)
  if n < 1:
    where = "" if data.source == "synthetic" else f" (split {data.eval_split!r} of {data.data_dir})"
    raise ValueError(f"held-out set{where} has {len(source)} examples, fewer than one global "
                     f"batch of {batch_size}")
  out = []
  for b in range(n):
    start = b * batch_size + process_index * local
    rows = [read(source[i]) for i in range(start, start + local)]
    out.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
  return out


def _records(data, split: str, camera: str = "rt"):
  """The random-access source of ``split`` of the prepared latent records ``data.data_dir``;
  the records' clip length must be ``data.num_frames`` (latents cannot be resampled, and the
  pipeline would resample the cameras alone). For the Plucker camera (``camera``), their
  latents must be those of ``data.height`` x ``data.width`` pixels, the resolution of the records'
  intrinsics."""
  source = arrayrecord.data_source(data.data_dir, split)
  first = source[0]
  if "target_latent" not in first:
    raise ValueError(f"{data.data_dir} holds pixel records; the trainer reads latent records "
                     f"(python -m postcam_jax.data.prepare --latents ...)")
  frames = first["target_w2c"].shape[0]
  if frames != data.num_frames:
    raise ValueError(f"{data.data_dir} holds clips of {frames} frames; set "
                     f"--config.data.num_frames={frames} (latent records are not resampled)")
  if camera != "rt":
    _, h, w = pipeline.latent_grid(first)
    stride = pipeline.VAE_STRIDE
    if (data.height, data.width) != (stride * h, stride * w):
      raise ValueError(
          f"{data.data_dir} holds {h}x{w} latents (of {stride * h}x{stride * w} pixels), but "
          f"data.height x data.width is {data.height}x{data.width}; the Plucker camera reads the "
          f"records' intrinsics at that size: set --config.data.height={stride * h} "
          f"--config.data.width={stride * w}, or re-prepare the records at "
          f"{data.height}x{data.width}")
  return source
