"""The Grain input pipeline over prepared ArrayRecord pairs (``arrayrecord.py``).

``make_dataset(config, process_index, process_count)`` returns a ``grain.IterDataset`` of
per-process batches: ``MapDataset`` over the TFDS data source -> this process's slice
(``[process_index::process_count]``) -> deterministic shuffle (reshuffled each epoch) -> repeat ->
named maps ``DecodeRecord``, ``ResampleFrames``, ``ResizeCrop``, ``NormaliseVideo``, ``PadText``,
``RelativeCamera`` (``PluckerCamera`` with ``camera_input='plucker'``) ->
``batch(drop_remainder=True)`` -> ``to_iter_dataset`` -> ``mp_prefetch`` (when
``worker_count > 0``). ``make_global_batch`` turns a process batch into global
``jax.Array``s with ``jax.make_array_from_process_local_data``; ``save_iterator`` /
``restore_iterator`` store the iterator position with Orbax and Grain's checkpoint handler.

Batch keys of **pixel** records (B = the per-process batch = global batch / process count,
T = ``num_frames``, H x W = ``height`` x ``width``):

==================  ===========================  ==========================================
key                 shape, dtype                 meaning
==================  ===========================  ==========================================
target_video        [B, T, H, W, 3] float32      target clip in [-1, 1]
source_video        [B, T, H, W, 3] float32      source clip in [-1, 1]
source_depth        [B, T, H, W] float32         source z-depth, metres (0 if has_depth = 0)
has_depth           [B] int32                    1 where the data has exact depth
source_w2c          [B, T, 4, 4] float32         source world-to-camera, world = source frame 0
target_w2c          [B, T, 4, 4] float32         target world-to-camera, same world
intrinsics          [B, 3, 3] float32            K at H x W (pixel centres at integers)
camera              [B, 11, 12] float32          the model's camera input (top 3x4, row-major);
                                                 [B, N, 24] with camera_input='plucker'
caption             [B] str                      the target video's caption ('' if none)
scene, source_camera, target_camera  [B] str     ids
start, stride       [B] int32                    first frame and frame step in the videos
==================  ===========================  ==========================================

**Latent** records give the same cameras, ``intrinsics``, ``caption`` and ids, plus
``target_latent``, ``source_latent`` (and ``render_latent``) [B, F, h, w, C] and
``text_embedding`` [B, L, D], as the encoders stored them (no resampling or resizing applies;
bfloat16 for ``prepare --latents`` records). Records whose text is stored without the padding
(``prepare --latents``) are padded with zero rows to ``text_len`` (``PadText``) before batching.

``camera_input`` picks the ``camera`` key's representation, the model's ``PostCamConfig
.camera_input``: ``"rt"`` (default) the 11 RT tokens [B, 11, 12] (``RelativeCamera``);
``"plucker"`` the rays per target latent token [B, N, 24], N = F (h // 2) (w // 2)
(``PluckerCamera``: ``cameras.plucker_tokens`` of ``target_w2c`` and ``intrinsics``). Both kinds of
record carry what it needs: the per-frame ``target_w2c`` and ``intrinsics`` at H x W, which are
8 h x 8 w of the latents (the Wan-VAE's stride).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from postcam_jax.core.config import from_mapping
from postcam_jax.data import arrayrecord
from postcam_jax.geometry import cameras, image_ops

_VIDEO_KEYS = ("target_video", "source_video")
_PER_FRAME_KEYS = ("target_video", "source_video", "source_depth", "source_w2c", "target_w2c")
_TEXT_KEYS = ("caption", "scene", "source_camera", "target_camera")
CAMERA_INPUTS = ("rt", "plucker")  # PostCamConfig.camera_input
# ``config.data`` keys the trainer reads (``postcam_jax.training.data``), not the pipeline.
TRAINER_DATA_KEYS = ("source", "eval_split")
VAE_STRIDE = 8  # Wan-VAE: one latent pixel per 8 x 8 video pixels


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The pipeline's settings; ``from_config`` reads them from a ConfigDict-like object."""
  data_dir: str  # a prepared directory: arrayrecord.prepared_dir(data_dir, name)
  batch_size: int  # global batch size, divided over processes
  num_frames: int
  height: int
  width: int
  seed: int = 0
  split: str = "train"
  num_epochs: int | None = None  # None: repeat forever
  shuffle: bool = True
  worker_count: int = 0  # mp_prefetch worker processes; 0 reads in this process
  worker_buffer_size: int = 2  # batches each worker prepares ahead
  read_threads: int = 2  # threads that fill the prefetch buffer (per worker)
  prefetch_buffer_size: int = 2  # batches; small, pixel batches are large
  camera_input: str = "rt"  # the ``camera`` key: rt [11, 12] or plucker [N, 24] (see above)
  text_len: int | None = None  # latent records: text_embedding padded to this length (PadText)

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "DataConfig":
    """From ``config.data`` of an experiment, strictly (its trainer-only keys aside)."""
    values = {k: v for k, v in dict(config).items() if v is not None}
    missing = [n for n in ("data_dir", "batch_size", "num_frames", "height", "width")
               if n not in values]
    if missing:
      raise ValueError(f"data config lacks {missing}; it has {sorted(values)}")
    return from_mapping(cls, values, ignore=TRAINER_DATA_KEYS)


class DecodeRecord(grain.transforms.Map):
  """Record from the TFDS source -> plain numpy: text as str, scalars as int32 arrays."""

  def map(self, element: dict) -> dict:
    out = {}
    for key, value in element.items():
      if key in _TEXT_KEYS:
        out[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
      elif np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iu":
        out[key] = np.int32(value)  # TFDS hands int32 scalars back as Python ints
      else:
        out[key] = np.asarray(value)
    return out


@dataclasses.dataclass
class ResampleFrames(grain.transforms.Map):
  """Per-frame streams from the record's T frames to ``num_frames`` (the release's rule)."""
  num_frames: int

  def map(self, element: dict) -> dict:
    present = [k for k in _PER_FRAME_KEYS if k in element]
    if not present or element[present[0]].shape[0] == self.num_frames:
      return element
    index = cameras.temporal_indices(element[present[0]].shape[0], self.num_frames)
    return dict(element, **{k: element[k][index] for k in present})


@dataclasses.dataclass
class ResizeCrop(grain.transforms.Map):
  """Videos and depth to ``height`` x ``width`` (resize to cover, centre crop), K adjusted."""
  height: int
  width: int

  def map(self, element: dict) -> dict:
    keys = [k for k in ("target_video", "source_video", "source_depth") if k in element]
    if not keys or element[keys[0]].shape[1:3] == (self.height, self.width):
      return element
    resized, k = image_ops.fit_arrays({key: element[key] for key in keys},
                                      element["intrinsics"], (self.height, self.width))
    return dict(element, intrinsics=k.astype(np.float32), **resized)


class NormaliseVideo(grain.transforms.Map):
  """uint8 videos -> float32 in [-1, 1] (x / 127.5 - 1)."""

  def map(self, element: dict) -> dict:
    return dict(element, **{k: element[k].astype(np.float32) * np.float32(1 / 127.5) - 1.0
                            for k in _VIDEO_KEYS if k in element})


@dataclasses.dataclass
class PadText(grain.transforms.Map):
  """A latent record's ``text_embedding`` [L, D] (stored without the padding) -> [text_len, D],
  zero rows after the caption's tokens, as the text encoder's padded positions are."""
  text_len: int | None

  def map(self, element: dict) -> dict:
    if self.text_len is None or "text_embedding" not in element:
      return element
    text = np.asarray(element["text_embedding"])
    if text.shape[0] > self.text_len:
      raise ValueError(f"a record's text_embedding has {text.shape[0]} tokens, more than "
                       f"data.text_len = {self.text_len}; set --config.data.text_len to the text "
                       f"encoder's length (512 for umT5)")
    if text.shape[0] == self.text_len:
      return element
    padded = np.zeros((self.text_len,) + text.shape[1:], text.dtype)
    padded[:text.shape[0]] = text
    return dict(element, text_embedding=padded)


class RelativeCamera(grain.transforms.Map):
  """The model's camera input from the (possibly resampled) relative target poses."""

  def map(self, element: dict) -> dict:
    tokens = cameras.camera_tokens(np.asarray(element["target_w2c"], np.float64))
    return dict(element, camera=tokens.astype(np.float32))


def latent_grid(element: dict) -> tuple[int, int, int]:
  """(F, h, w) of the target latent of a record: a latent record's ``target_latent``, or what the
  Wan-VAE makes of a pixel record's ``target_video`` [T = 1 + 4k, H, W, 3]."""
  if "target_latent" in element:
    return tuple(int(v) for v in np.shape(element["target_latent"])[:3])
  if "target_video" not in element:
    raise ValueError(f"the Plucker camera needs the target's latent grid: a record with "
                     f"'target_latent' or 'target_video', got keys {sorted(element)}")
  t, h, w = np.shape(element["target_video"])[:3]
  if (t - 1) % cameras.VAE_FRAMES_PER_LATENT or h % VAE_STRIDE or w % VAE_STRIDE:
    raise ValueError(f"a pixel clip of {t} frames of {h}x{w} has no Wan-VAE latent grid: it "
                     f"needs 1 + 4k frames and sides that are multiples of {VAE_STRIDE}")
  return (1 + (t - 1) // cameras.VAE_FRAMES_PER_LATENT, h // VAE_STRIDE, w // VAE_STRIDE)


@dataclasses.dataclass
class PluckerCamera(grain.transforms.Map):
  """The Plucker camera input (``camera_input='plucker'``): ``camera`` [N, 24] =
  ``cameras.plucker_tokens(target_w2c, intrinsics, (F, h, w))`` in float64, stored as float32.

  ``target_w2c`` [T, 4, 4] are the clip's (possibly resampled) target poses, world = the source
  camera at frame 0 (as ``RelativeCamera``), ``intrinsics`` [3, 3] K at the clip's H x W, which
  must be 8 h x 8 w of the target latent (F, h, w) (``latent_grid``). ``pixel_size``: the (H, W)
  the intrinsics belong to, when known to the caller (a latent record does not say); a size that
  is not 8 h x 8 w is refused instead of giving rays of the wrong pixels.
  """
  pixel_size: tuple[int, int] | None = None

  def map(self, element: dict) -> dict:
    missing = [k for k in ("target_w2c", "intrinsics") if k not in element]
    if missing:
      raise ValueError(f"the Plucker camera needs the record's {missing} (per-frame target poses "
                       f"and K); re-prepare the records with postcam_jax.data.arrayrecord, which "
                       f"stores both in pixel and latent records")
    grid = latent_grid(element)
    if "target_latent" not in element:  # a pixel record: H x W are the video's
      pixel = tuple(int(v) for v in np.shape(element["target_video"])[1:3])
    else:
      pixel = None if self.pixel_size is None else tuple(int(v) for v in self.pixel_size)
    want = (VAE_STRIDE * grid[1], VAE_STRIDE * grid[2])
    if pixel is not None and pixel != want:
      raise ValueError(f"the Plucker camera needs intrinsics at 8h x 8w = {want[0]}x{want[1]} "
                       f"pixels of the {grid[1]}x{grid[2]} target latent, but they are at "
                       f"{pixel[0]}x{pixel[1]}; set data.height/width to the records' "
                       f"resolution, or prepare the records at 8x the latent size")
    tokens = cameras.plucker_tokens(np.asarray(element["target_w2c"], np.float64),
                                    np.asarray(element["intrinsics"], np.float64), grid)
    return dict(element, camera=tokens.astype(np.float32))


def camera_map(camera_input: str, pixel_size: tuple[int, int] | None = None):
  """The Map that writes the ``camera`` key for ``camera_input`` ("rt" or "plucker")."""
  if camera_input == "rt":
    return RelativeCamera()
  if camera_input == "plucker":
    return PluckerCamera(pixel_size)
  raise ValueError(f"camera_input must be one of {CAMERA_INPUTS}, got {camera_input!r}")


def _source(config: DataConfig):
  return arrayrecord.data_source(config.data_dir, config.split)


def make_dataset(config: Any, process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """This process's iterator of batches (see the module docstring for keys and shapes).

  ``config`` is a :class:`DataConfig` or a ConfigDict-like object with its fields. The process
  index and count default to JAX's. Batches are identical for one seed; processes read disjoint
  slices of the records that together cover every record.
  """
  if not isinstance(config, DataConfig):
    config = DataConfig.from_config(config)
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  if config.batch_size % process_count:
    raise ValueError(f"global batch_size {config.batch_size} must divide over "
                     f"{process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  local_batch = config.batch_size // process_count
  ds = grain.MapDataset.source(_source(config))
  ds = ds[process_index::process_count]
  if len(ds) < local_batch:
    raise ValueError(f"{config.data_dir}: process {process_index} has {len(ds)} records, fewer "
                     f"than its batch of {local_batch}")
  if config.shuffle:
    ds = ds.shuffle(seed=config.seed)
  ds = ds.repeat(config.num_epochs)
  ds = (ds.map(DecodeRecord())
        .map(ResampleFrames(config.num_frames))
        .map(ResizeCrop(config.height, config.width))
        .map(NormaliseVideo())
        .map(PadText(config.text_len))
        .map(camera_map(config.camera_input, (config.height, config.width))))
  ds = ds.batch(local_batch, drop_remainder=True)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                               prefetch_buffer_size=config.prefetch_buffer_size))
  if config.worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
  return it_ds


def make_global_batch(batch: dict, sharding) -> dict:
  """Process-local numpy batch -> global ``jax.Array``s laid out by ``sharding``.

  Numeric arrays are assembled with ``jax.make_array_from_process_local_data`` (the batch axis is
  split over processes); string arrays (captions, ids) stay host-local numpy.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "biuf":
      out[key] = jax.make_array_from_process_local_data(sharding, value)
    else:
      out[key] = value
  return out


def _manager(directory: str):
  return ocp.CheckpointManager(directory, item_names=("data",),
                               item_handlers={"data": grain.checkpoint.CheckpointHandler()})


def save_iterator(directory: str, step: int, iterator) -> None:
  """Store ``iterator``'s position as step ``step`` under ``directory`` (Orbax, item 'data')."""
  with _manager(directory) as manager:
    manager.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()


def restore_iterator(directory: str, iterator, step: int | None = None):
  """Move ``iterator`` (a fresh one of the same pipeline) to the saved position; returns it."""
  with _manager(directory) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory}: no data-iterator checkpoint to restore")
    manager.restore(step, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(iterator)))
  return iterator
