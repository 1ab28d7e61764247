"""Latent records on disk, written without the TFDS builder: shards, metadata, the prepared-dir
marker.

``python -m postcam_jax.data.prepare --latents`` (``postcam_jax.data.latents``) writes the
records of a dataset from several processes at once, so it cannot use
``GeneratorBasedBuilder.download_and_prepare`` (one process, one pass). It writes what that
builder writes, and what ``tfds.builder_from_directory`` / ``tfds.data_source`` read back
(TF-free), itself:

- one ArrayRecord file per shard, named as TFDS names them
  (``multi_cam_pairs-<split>.array_record-<i>-of-<n>``), each record a TFDS-serialised example of
  :func:`latent_features` (``FeaturesDict.serialize_example``). A shard is written under a
  staging name and renamed into place whole (``core.atomic.atomic_file``), so a reader or a
  resumed job never sees a torn record;
- ``features.json`` and ``dataset_info.json`` (split names, per-shard record counts, file format),
  by ``tfds.core.DatasetInfo.write_to_directory``, once every shard exists; ``dataset_info.json``
  last, so a directory without it is an unfinished preparation.

The prepared directory also holds :data:`MARKER`, the settings that define its content (source
root, splits, clip geometry, pair sampling, encoders); :func:`claim` compares a rerun's settings
with it and refuses a directory made from another root or config, naming each difference, unless
``overwrite`` (then it removes only a directory that carries the marker or is a TFDS directory of
this dataset). Both record kinds (pixel records of ``arrayrecord.prepare`` and latent records)
use it.
"""

import glob
import json
import os
import shutil

import ml_dtypes
import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from tensorflow_datasets.core import naming

from postcam_jax.core.atomic import atomic_file
from postcam_jax.geometry import cameras

BUILDER_NAME = "multi_cam_pairs"
VERSION = "1.0.0"
MARKER = "postcam_prepare.json"
INFO_FILE = "dataset_info.json"
FILE_FORMAT = "array_record"
# One record per chunk (random access), zstd-compressed: what TFDS's own writer uses.
WRITER_OPTIONS = "group_size:1"
BF16 = np.dtype(ml_dtypes.bfloat16)


class PreparedDirError(ValueError):
  """A prepared directory that a run may not reuse or replace (the message says why)."""


def prepared_dir(data_dir: str, name: str) -> str:
  """Where config ``name``'s files go under ``data_dir`` (TFDS's ``<name>/<config>/<version>``)."""
  return os.path.join(data_dir, BUILDER_NAME, name, VERSION)


def tensor_feature(shape, dtype):
  """A Tensor feature stored as raw bytes (TFDS's default list encoding is ~100x slower)."""
  if not shape:
    return tfds.features.Tensor(shape=(), dtype=dtype)
  return tfds.features.Tensor(shape=tuple(shape), dtype=dtype,
                              encoding=tfds.features.Encoding.BYTES)


def latent_features(clip_frames: int, latent_shape, render_shape,
                    text_dim: int) -> tfds.features.FeaturesDict:
  """The FeaturesDict of a latent record (the keys of ``arrayrecord``'s latent records).

  ``target_latent`` / ``source_latent`` [F, h, w, C], ``render_latent`` ``render_shape``,
  ``text_embedding`` [L, text_dim] with L free (stored without the padding; the trainer pads to
  ``data.text_len``), all bfloat16; the pair's cameras, K, caption and ids as in pixel records.
  """
  t = clip_frames
  return tfds.features.FeaturesDict({
      "target_latent": tensor_feature(latent_shape, BF16),
      "source_latent": tensor_feature(latent_shape, BF16),
      "render_latent": tensor_feature(render_shape, BF16),
      "text_embedding": tensor_feature((None, text_dim), BF16),
      "source_w2c": tensor_feature((t, 4, 4), np.float32),
      "target_w2c": tensor_feature((t, 4, 4), np.float32),
      "intrinsics": tensor_feature((3, 3), np.float32),
      "camera": tensor_feature((cameras.NUM_CAMERA_TOKENS, 12), np.float32),
      "caption": tfds.features.Text(),
      "scene": tfds.features.Text(),
      "source_camera": tfds.features.Text(),
      "target_camera": tfds.features.Text(),
      "start": tensor_feature((), np.int32),
      "stride": tensor_feature((), np.int32),
  })


def shard_name(split: str, index: int, count: int) -> str:
  """TFDS's file name of shard ``index`` of ``count`` of ``split``."""
  return f"{BUILDER_NAME}-{split}.{FILE_FORMAT}-{index:05d}-of-{count:05d}"


def remove_stale_staging(path: str) -> list[str]:
  """Remove staging files of ``path`` left by a killed writer (``atomic_file``'s names)."""
  parent, base = os.path.split(os.path.abspath(path))
  stale = glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.partial-*"))
  for name in stale:
    os.remove(name)
  return stale


def write_shard(path: str, records) -> tuple[int, int]:
  """Write serialised ``records`` (bytes) as one ArrayRecord file at ``path``, atomically;
  returns (record count, bytes on disk)."""
  count = 0
  with atomic_file(path) as tmp:
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    try:
      for record in records:
        writer.write(record)
        count += 1
    finally:
      writer.close()
  return count, os.path.getsize(path)


def write_metadata(directory: str, features: tfds.features.FeaturesDict, config_name: str,
                   shard_lengths: dict[str, list[int]], split_bytes: dict[str, int],
                   description: str) -> None:
  """``features.json`` then ``dataset_info.json`` of shards already written in ``directory``."""
  info = tfds.core.DatasetInfo(
      builder=tfds.core.DatasetIdentity(name=BUILDER_NAME, version=VERSION, data_dir=directory,
                                        module_name=__name__, config_name=config_name),
      features=features, description=description)
  info.set_file_format(FILE_FORMAT)
  splits = []
  for split, lengths in shard_lengths.items():
    template = naming.ShardedFileTemplate(data_dir=directory, dataset_name=BUILDER_NAME,
                                          split=split, filetype_suffix=FILE_FORMAT)
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[int(n) for n in lengths],
                                      num_bytes=int(split_bytes[split]),
                                      filename_template=template))
  info.set_splits(tfds.core.SplitDict(splits))
  # DatasetInfo writes features.json before dataset_info.json; both through temporary names here
  # so a crash leaves either the old pair or no dataset_info.json (an unfinished preparation).
  staging = os.path.join(directory, ".metadata.partial")
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  info.write_to_directory(staging)
  for name in ("features.json", INFO_FILE):
    os.replace(os.path.join(staging, name), os.path.join(directory, name))
  shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The prepared directory's marker.


def read_marker(directory: str) -> dict | None:
  path = os.path.join(directory, MARKER)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise PreparedDirError(f"{path}: unreadable ({e}); remove {directory} to prepare again") \
        from e


def write_marker(directory: str, settings: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  with atomic_file(os.path.join(directory, MARKER)) as tmp:
    with open(tmp, "w") as f:
      json.dump(settings, f, indent=1, sort_keys=True)


def differences(stored: dict, wanted: dict) -> list[str]:
  """``key: <in the directory> -> <asked for>`` for every setting that differs."""
  out = []
  for key in sorted(set(stored) | set(wanted)):
    old, new = stored.get(key, "<unset>"), wanted.get(key, "<unset>")
    if old != new:
      out.append(f"{key}: {old!r} -> {new!r}")
  return out


def is_ours(directory: str) -> bool:
  """A directory this project prepared: it has the marker, or it is a TFDS directory of this
  dataset (prepared before the marker existed)."""
  if os.path.isfile(os.path.join(directory, MARKER)):
    return True
  info = os.path.join(directory, INFO_FILE)
  if not os.path.isfile(info):
    return False
  try:
    with open(info) as f:
      return json.load(f).get("name") == BUILDER_NAME
  except (OSError, ValueError):
    return False


def claim(directory: str, settings: dict, overwrite: bool = False, remove: bool = True) -> str:
  """Decide what a preparation with ``settings`` does with ``directory``:

  - ``"new"``: nothing there (or ``overwrite`` removed a prepared directory): prepare from
    scratch; the caller writes the marker (:func:`write_marker`);
  - ``"resume"``: the directory was made with the same settings: keep what is finished.

  A directory from other settings raises :class:`PreparedDirError` naming every difference (or,
  with ``overwrite``, is removed: by this caller if ``remove``, else by another process of the
  same job). A directory that is not a prepared one is never removed.
  """
  if not os.path.exists(directory):
    return "new"
  if not os.path.isdir(directory):
    raise PreparedDirError(f"{directory} is a file, not a prepared directory")
  if not os.listdir(directory):
    return "new"
  stored = read_marker(directory)
  if stored == settings:
    return "resume"
  if not is_ours(directory):
    raise PreparedDirError(
        f"{directory} exists and is not a prepared directory of postcam-jax (no {MARKER}); "
        f"choose another --data_dir or --name (it is never removed)")
  if overwrite:
    if remove:
      shutil.rmtree(directory)
    return "new"
  if stored is None:
    why = f"it has no {MARKER} (prepared by an earlier version), so its settings are unknown"
  else:
    why = "it was made with other settings: " + "; ".join(differences(stored, settings))
  raise PreparedDirError(f"{directory} is already prepared and {why}. Prepare under another "
                         f"--name, or pass --overwrite to rebuild it")
