"""A latent-record preparation on N processes: slices, resume, progress, metadata, summary.

:func:`run` is what ``python -m postcam_jax.data.prepare --latents`` runs on every process of a
job (one process, ``launch/local.py``, ``launch/tpu_pod.sh`` or ``launch/slurm_gpu.sbatch``; the
data directory must be one filesystem that every process sees, e.g. NFS or a gcsfuse mount):

1. Every process lists the same work units (``latents.plan_units``: ``scenes_per_shard`` scenes
   of one split, one record shard each) and checks the prepared directory against the run's
   settings (``records.claim``: a directory from another root or config is refused, naming what
   differs, or rebuilt with ``--overwrite``); when all have checked, process 0 removes what
   ``--overwrite`` replaces and writes the marker; all wait for it.
2. Process i takes units i, i + N, i + 2N, ... that are not finished yet. A unit is finished when
   its shard and then its unit record (``_units/<split>-<i>-of-<n>.json``: record count, bytes,
   skipped scenes, per-scene report, timings) have been renamed into place, so a rerun of the same
   command after a crash or ``kill -9`` of any process skips finished shards, removes staging
   files of unfinished ones and redoes only those. The unit list and the records of a unit do not
   depend on N: the dataset is the same whatever the process count.
3. Each process encodes with its own devices (``encoders.Encoders``) and shows a progress bar with
   its ETA; a bad scene is skipped and listed (``on_error="skip"``) or stops the job with one line
   (``"raise"``, :class:`SceneError`).
4. All processes meet at a barrier (``jax.distributed``'s coordination service; no device
   collective); process 0 then checks that every unit is finished, writes ``features.json`` and
   ``dataset_info.json`` (``records.write_metadata``) and ``_units/summary.json``, and all meet
   again, so every process returns after the dataset is readable.
"""

import dataclasses
import io
import json
import os
import sys
import time
from concurrent import futures

import jax
from orbax.checkpoint import multihost
from tqdm import tqdm

from postcam_jax.core.atomic import atomic_file
from postcam_jax.data import encoders as encoders_lib
from postcam_jax.data import latents, multicam, records
from postcam_jax.io import model_dir
from postcam_jax.models.t5 import UMT5Config
from postcam_jax.models.vae import WanVAEConfig


class SceneError(ValueError):
  """A bad scene with ``on_error="raise"``: the job stops with this one line."""


@dataclasses.dataclass
class Summary:
  """What a run did (this process) and, on process 0, what the dataset holds."""
  process_index: int
  process_count: int
  units_done: int = 0          # shards this process wrote in this run
  units_resumed: int = 0       # this process's shards finished by an earlier run
  pairs_written: int = 0
  videos_encoded: int = 0
  seconds: float = 0.0
  skipped: list = dataclasses.field(default_factory=list)
  splits: dict = dataclasses.field(default_factory=dict)  # process 0: split -> records, shards
  all_skipped: list = dataclasses.field(default_factory=list)  # process 0: every skipped scene
  seconds_per_video: float | None = None  # process 0: over every unit of the dataset
  directory: str = ""

  def lines(self) -> list[str]:
    own = (f"[p{self.process_index}/{self.process_count}] {self.units_done} shard(s) written, "
           f"{self.units_resumed} already finished; {self.pairs_written} pairs written, "
           f"{len(self.skipped)} scene(s) skipped, {self.videos_encoded} videos encoded")
    if self.videos_encoded:
      own += f", {self.seconds / self.videos_encoded:.3f} s per video"
    out = [own]
    for path, reason in self.skipped:
      out.append(f"  skipped {path}: {reason}")
    if self.splits:
      for split, (n, shards) in self.splits.items():
        out.append(f"{split}: {n} records in {shards} shard(s)")
      per_video = ("" if self.seconds_per_video is None
                   else f"; {self.seconds_per_video:.3f} s per video over the whole dataset")
      out.append(f"{len(self.all_skipped)} scene(s) skipped in all{per_video}: {self.directory}")
    return out


class _Lines(io.TextIOBase):
  """The progress bar as whole lines when stderr is not a terminal (log files, the prefixed
  output of ``launch/local.py``): one line per refresh instead of carriage returns."""

  def __init__(self, stream):
    super().__init__()
    self.stream = stream

  def write(self, text: str) -> int:
    line = text.replace("\r", "").strip()
    if line:
      self.stream.write(line + "\n")
      self.stream.flush()
    return len(text)

  def flush(self):
    self.stream.flush()


def progress_bar(total: int, pi: int, pc: int, enabled: bool) -> tqdm:
  """Scenes done of this process's pending ones, with tqdm's rate and ETA."""
  tty = sys.stderr.isatty()
  return tqdm(total=total, unit="scene", desc=f"prepare [p{pi}/{pc}]", disable=not enabled,
              file=sys.stderr if tty else _Lines(sys.stderr), dynamic_ncols=tty,
              mininterval=1.0 if tty else 30.0, ascii=not tty)


def _barrier(name: str, timeout_s: float):
  """Wait until every process arrives (a no-op for one process)."""
  if jax.process_count() > 1:
    multihost.get_barrier_sync_fn()(key=f"postcam_prepare_{name}",
                                    timeout_ms=int(timeout_s * 1000))


def _write_json(path: str, value) -> None:
  with atomic_file(path) as tmp:
    with open(tmp, "w") as f:
      json.dump(value, f, indent=1)


def features_of(config: latents.LatentConfig):
  """The records' features, from the models' ``model.json`` (no weights loaded)."""
  vae = WanVAEConfig.from_dict(model_dir.read_model_json(config.vae)["config"])
  text = UMT5Config.from_dict(model_dir.read_model_json(config.text_encoder)["config"])
  f = vae.spatial_factor

  def shape(h, w):
    return (1 + (config.clip_frames - 1) // 4, h // f, w // f, vae.z_dim)

  return records.latent_features(config.clip_frames, shape(config.height, config.width),
                                 shape(config.height // 4, config.width // 4), text.dim)


def _open(path: str, config, captions: dict, executor):
  """(scene, its clips already loading in ``executor``, None) or (None, None, the error)."""
  try:
    scene = multicam.open_scene(path, captions, config.num_cameras)
    clips = latents.SceneClips(scene, config, executor)
    clips.prefetch(latents.needed_clips(scene, latents.scene_pairs(scene, config)))
    return scene, clips, None
  except ValueError as e:  # DatasetError, VideoReadError: reported when the scene's turn comes
    return None, None, e


def _unit_records(unit: latents.Unit, config, enc, features, captions, report, bar, executor):
  """Serialised records of the unit's scenes, scene by scene (a failing scene adds none); the
  next scene's videos are decoded and resized in the threads while this one is encoded."""
  ahead = _open(unit.scenes[0], config, captions, executor)
  for i, path in enumerate(unit.scenes):
    scene, clips, error = ahead
    if i + 1 < len(unit.scenes):
      ahead = _open(unit.scenes[i + 1], config, captions, executor)
    start = time.perf_counter()
    try:
      if error is not None:
        raise error
      examples, scene_report = latents.scene_examples(scene, config, enc, clips)
    except ValueError as e:  # DatasetError, VideoReadError, depth fit, non-finite latents
      if config.on_error == "raise":
        raise SceneError(f"{path}: {e} (pass --on_error skip to skip bad scenes)") from e
      report["skipped"].append([path, str(e)])
      bar.update(1)
      continue
    serialised = [features.serialize_example(ex) for ex in examples]
    scene_report["seconds"] = time.perf_counter() - start
    report["scenes"].append(scene_report)
    report["videos"] += scene_report["videos"]
    bar.update(1)
    yield from serialised


def run_unit(unit: latents.Unit, config: latents.LatentConfig, enc: encoders_lib.Encoders,
             features, captions: dict, bar, executor=None) -> dict:
  """Write one unit's shard, then its unit record; returns the record."""
  directory = config.directory
  shard_path = os.path.join(directory, unit.shard)
  record_path = latents.unit_record_path(directory, unit)
  records.remove_stale_staging(shard_path)
  records.remove_stale_staging(record_path)
  report = {"split": unit.split, "index": unit.index, "count": unit.count,
            "scenes": [], "skipped": [], "videos": 0}
  start = time.perf_counter()
  count, size = records.write_shard(
      shard_path, _unit_records(unit, config, enc, features, captions, report, bar, executor))
  report.update(records=count, bytes=size, seconds=time.perf_counter() - start)
  os.makedirs(os.path.dirname(record_path), exist_ok=True)
  _write_json(record_path, report)
  return report


def _finish(config: latents.LatentConfig, units: list[latents.Unit], features,
            summary: Summary) -> None:
  """Process 0, after every process is done: check, write the metadata and the summary."""
  directory = config.directory
  reports = {u: latents.read_unit_record(directory, u) for u in units}
  missing = [u.label for u, r in reports.items() if r is None]
  if missing:
    raise RuntimeError(f"{directory}: {len(missing)} unit(s) unfinished after every process "
                       f"stopped ({', '.join(missing[:5])}...); rerun the same command")
  lengths, sizes = {}, {}
  for unit, report in reports.items():
    lengths.setdefault(unit.split, []).append(report["records"])
    sizes[unit.split] = sizes.get(unit.split, 0) + report["bytes"]
  records.write_metadata(
      directory, features, config.name, lengths, sizes,
      description=f"MultiCamVideo pairs from {os.path.abspath(config.root)} "
                  f"({', '.join(config.splits)}), latent records (postcam_jax.data.latents)")
  summary.splits = {s: (sum(n), len(n)) for s, n in lengths.items()}
  summary.all_skipped = [s for r in reports.values() for s in r["skipped"]]
  videos = sum(r["videos"] for r in reports.values())
  seconds = sum(r["seconds"] for r in reports.values())
  summary.seconds_per_video = seconds / videos if videos else None
  summary.directory = directory
  _write_json(os.path.join(directory, "_units", "summary.json"), {
      "splits": {s: {"records": n, "shards": k} for s, (n, k) in summary.splits.items()},
      "skipped": summary.all_skipped, "videos": videos, "seconds": seconds,
      "seconds_per_video": summary.seconds_per_video})


def run(config: latents.LatentConfig, enc: encoders_lib.Encoders | None = None,
        process_index: int | None = None, process_count: int | None = None) -> Summary:
  """Prepare (or finish) ``config``'s latent records from this process; see the module
  docstring. ``enc`` defaults to the models of ``config`` on this process's devices."""
  config.check()
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  directory = config.directory
  settings = config.settings()
  # Every process checks the directory (one verdict for all, one line from each on a refusal)
  # and only then does process 0 change it: a process reading it while process 0 writes the
  # marker would see a folder with a staging file and no marker, "not a prepared directory".
  state = records.claim(directory, settings, overwrite=config.overwrite, remove=False)
  units = latents.plan_units(config)
  _barrier("checked", config.barrier_timeout_s)
  if pi == 0 and state == "new":
    records.claim(directory, settings, overwrite=config.overwrite, remove=True)  # as checked
    records.write_marker(directory, settings)
  _barrier("setup", config.barrier_timeout_s)
  if records.read_marker(directory) != settings:
    raise records.PreparedDirError(f"{directory}: its marker does not hold this run's settings "
                                   f"(another preparation into the same directory?)")
  mine = [u for i, u in enumerate(units) if i % pc == pi]
  pending = [u for u in mine if latents.read_unit_record(directory, u) is None]
  summary = Summary(pi, pc, units_resumed=len(mine) - len(pending))
  features = features_of(config)
  # Every process loads the models, with or without pending units: restoring them is a
  # collective step of the job (Orbax synchronises the processes).
  if enc is None:
    enc = encoders_lib.Encoders.load(
        config.vae, config.text_encoder, config.depth_model, vae_dtype=config.vae_dtype,
        batch_per_device=config.batch_per_device, depth_process_res=config.depth_process_res)
  captions = {split: multicam.load_captions(config.root, split) for split in config.splits}
  bar = progress_bar(sum(len(u.scenes) for u in pending), pi, pc, config.progress)
  start = time.perf_counter()
  with bar, futures.ThreadPoolExecutor(config.threads) as executor:
    for unit in pending:
      report = run_unit(unit, config, enc, features, captions[unit.split], bar, executor)
      summary.units_done += 1
      summary.pairs_written += report["records"]
      summary.videos_encoded += report["videos"]
      summary.skipped.extend(report["skipped"])
      summary.seconds = time.perf_counter() - start
      if summary.videos_encoded:
        bar.set_postfix(pairs=summary.pairs_written,
                        s_per_video=f"{summary.seconds / summary.videos_encoded:.2f}")
  _barrier("done", config.barrier_timeout_s)
  if pi == 0:
    _finish(config, units, features, summary)
  _barrier("metadata", config.barrier_timeout_s)
  return summary
