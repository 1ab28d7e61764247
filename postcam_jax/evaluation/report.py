"""One generated video's numbers, the tables over many, and the files they are written to.

A :class:`Clip` is one generated video (``pred``) with what it is measured against: the requested
trajectory, the ground-truth ``target`` video when one exists (synthetic pairs), the ``source``
video and the ``render`` (the release's warp of the source to the target cameras). Every video is
uint8 [T, H, W, 3] of one size. :func:`score` returns its row:

- fidelity (``postcam_jax.evaluation.fidelity``), per frame and as the mean over the frames:
  ``{video}_psnr`` (dB) and ``{video}_ssim`` of ``pred`` and of the two baselines of the paper's
  discussion, "copy the source" (``source``) and "render only" (``render``), all against the
  ``reference``: the target, or the source where there is none (the paper's real-video protocol;
  the copy-the-source baseline is then left out, it would be exact);
- camera accuracy (``postcam_jax.evaluation.camera``) of the poses a :class:`PoseEstimator`
  (DA3) finds in each video against the requested trajectory: ``{video}_rot_err``,
  ``{video}_trans_err``, ``{video}_cam_mc`` (means per frame) and CamI2V's ``*_sum``, for
  ``pred``, ``source``, ``render`` and ``target`` (the estimator's own error on the true video).

:func:`aggregate` averages the rows per trajectory ``kind`` and over all; :func:`write_tables`
writes ``videos.csv``, ``videos.json`` (with the per-frame values and aligned paths),
``kinds.csv`` and ``summary.json``; :func:`summary_line` is the one line a run prints.
"""

import csv
import dataclasses
import json
import math
import os

import numpy as np

from postcam_jax.evaluation import camera, fidelity

VIDEOS = ("pred", "source", "render", "target")
FIDELITY = ("psnr", "ssim")
CAMERA = ("rot_err", "trans_err", "cam_mc")
CAMERA_SUMS = ("rot_err_sum", "trans_err_sum", "cam_mc_sum")
ALL = "all"


@dataclasses.dataclass
class Clip:
  """One generated video and its references (see the module docstring); ``requested_w2c``
  [T, 4, 4] world-to-camera poses of the target camera at the video's frames."""
  name: str
  kind: str
  pred: np.ndarray
  requested_w2c: np.ndarray
  source: np.ndarray | None = None
  render: np.ndarray | None = None
  target: np.ndarray | None = None

  def videos(self) -> dict[str, np.ndarray]:
    return {k: getattr(self, k) for k in VIDEOS if getattr(self, k) is not None}


@dataclasses.dataclass
class Scored:
  """A clip's row (scalars), its per-frame values, the aligned camera paths and the estimator's
  raw poses (video -> world-to-camera [N, 4, 4])."""
  row: dict
  frames: dict
  paths: dict  # video -> camera.CameraErrors
  estimates: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return {**{k: json_value(v) for k, v in self.row.items()},
            "per_frame": {k: [json_value(x) for x in v] for k, v in self.frames.items()},
            "paths": {k: {"requested_c2w": e.requested.tolist(),
                          "estimated_c2w": e.estimated.tolist()} for k, e in self.paths.items()}}


def json_value(x):
  """JSON-safe scalar: inf as the string "inf" (an exact match), NaN as null."""
  if isinstance(x, (float, np.floating)):
    x = float(x)
    if math.isnan(x):
      return None
    if math.isinf(x):
      return "inf" if x > 0 else "-inf"
  return x


def check_clip(clip: Clip):
  videos = clip.videos()
  shapes = {k: tuple(np.shape(v)) for k, v in videos.items()}
  first = shapes["pred"]
  if len(first) != 4 or first[-1] != 3:
    raise ValueError(f"{clip.name}: the generated video must be [T, H, W, 3]; got {first}")
  bad = {k: s for k, s in shapes.items() if s != first}
  if bad:
    raise ValueError(f"{clip.name}: every video must match the generated one {first}; got "
                     + ", ".join(f"{k} {s}" for k, s in bad.items()))
  if np.shape(clip.requested_w2c)[0] != first[0]:
    raise ValueError(f"{clip.name}: {np.shape(clip.requested_w2c)[0]} requested poses for "
                     f"{first[0]} frames")


def score(clip: Clip, estimator=None, *, cached: dict | None = None) -> Scored:
  """The row of one clip. ``estimator``: a callable video -> world-to-camera [N, 4, 4] with an
  ``indices(T)`` method (``poses.PoseEstimator``), or None to skip camera accuracy. ``cached``:
  {video: poses} already estimated for this clip (the baselines do not change while training)."""
  check_clip(clip)
  videos = {k: np.asarray(v) for k, v in clip.videos().items()}
  reference = "target" if "target" in videos else "source"
  row = {"name": clip.name, "kind": clip.kind, "frames": int(videos["pred"].shape[0]),
         "reference": reference if reference in videos else None}
  frames = {}
  for video in ("pred", "source", "render"):
    if video not in videos or row["reference"] is None or video == reference:
      continue
    values = {"psnr": fidelity.psnr_frames(videos[video], videos[reference]),
              "ssim": fidelity.ssim_frames(videos[video], videos[reference])}
    for metric, per_frame in values.items():
      row[f"{video}_{metric}"] = float(np.mean(per_frame))
      frames[f"{video}_{metric}"] = per_frame.tolist()
  paths, estimates = {}, {}
  if estimator is not None:
    index = estimator.indices(row["frames"])
    requested = camera.as_4x4(clip.requested_w2c)[index]
    for video, frames_of in videos.items():
      poses = (cached or {}).get(video)
      if poses is None:
        poses = estimator(frames_of)
      estimates[video] = poses
      errors = camera.camera_errors(requested, poses)
      paths[video] = errors
      for name, value in errors.scalars().items():
        row[f"{video}_{name}"] = value
      for name, per_frame in (("rot_err", errors.rot), ("trans_err", errors.trans),
                              ("cam_mc", errors.cam_mc)):
        frames[f"{video}_{name}"] = per_frame.tolist()
  return Scored(row, frames, paths, estimates)


def metric_columns() -> list[str]:
  """Every numeric column a row may hold, in the tables' order."""
  cols = [f"{v}_{m}" for v in ("pred", "source", "render") for m in FIDELITY]
  cols += [f"{v}_{m}" for v in VIDEOS for m in CAMERA + CAMERA_SUMS]
  return cols


def _mean(values) -> float | None:
  finite = [v for v in values if v is not None and not math.isnan(v)]
  return float(np.mean(finite)) if finite else None


def aggregate(rows: list[dict]) -> list[dict]:
  """Means per trajectory kind (sorted) and over all rows (last, kind ``all``); ``videos`` counts
  the rows. Missing values (a baseline without a reference) are left out of the means."""
  kinds = sorted({r["kind"] for r in rows})
  out = []
  for kind in kinds + [ALL]:
    group = [r for r in rows if kind == ALL or r["kind"] == kind]
    entry = {"kind": kind, "videos": len(group)}
    for col in metric_columns():
      value = _mean([r.get(col) for r in group])
      if value is not None:
        entry[col] = value
    out.append(entry)
  return out


def _write_csv(path: str, rows: list[dict], columns: list[str]):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for r in rows:
      writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])


def write_tables(folder: str, scored: list[Scored], settings: dict) -> dict:
  """``videos.csv``, ``videos.json``, ``kinds.csv``, ``summary.json`` into ``folder`` (a staging
  folder of the caller's atomic output); returns the summary."""
  rows = [s.row for s in scored]
  present = [c for c in metric_columns() if any(r.get(c) is not None for r in rows)]
  _write_csv(os.path.join(folder, "videos.csv"), rows,
             ["name", "kind", "frames", "reference"] + present)
  with open(os.path.join(folder, "videos.json"), "w") as f:
    json.dump([s.to_json() for s in scored], f, indent=1)
  kinds = aggregate(rows)
  _write_csv(os.path.join(folder, "kinds.csv"), kinds, ["kind", "videos"] + present)
  summary = {"all": {k: json_value(v) for k, v in kinds[-1].items()},
             "kinds": [{k: json_value(v) for k, v in k_.items()} for k_ in kinds[:-1]],
             "settings": settings, "line": summary_line(kinds[-1])}
  with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def _fmt(entry: dict, key: str, spec: str = ".4f", unit: str = "") -> str:
  value = entry.get(key)
  return "n/a" if value is None else f"{value:{spec}}{unit}"


def summary_line(entry: dict) -> str:
  """One line over all videos: the model's camera accuracy and fidelity, then the baselines."""
  parts = [f"{entry['videos']} video(s)"]
  if entry.get("pred_rot_err") is not None:
    parts.append(f"RotErr {_fmt(entry, 'pred_rot_err')} rad/frame, TransErr "
                 f"{_fmt(entry, 'pred_trans_err')}, CamMC {_fmt(entry, 'pred_cam_mc')}")
  if entry.get("pred_psnr") is not None:
    parts.append(f"PSNR {_fmt(entry, 'pred_psnr', '.2f', ' dB')}, SSIM "
                 f"{_fmt(entry, 'pred_ssim', '.4f')}")
  base = []
  for video, label in (("source", "copy source"), ("render", "render only")):
    bits = []
    if entry.get(f"{video}_psnr") is not None:
      bits.append(f"PSNR {_fmt(entry, f'{video}_psnr', '.2f', ' dB')}")
    if entry.get(f"{video}_rot_err") is not None:
      bits.append(f"RotErr {_fmt(entry, f'{video}_rot_err')}")
    if bits:
      base.append(f"{label} {' '.join(bits)}")
  if entry.get("target_rot_err") is not None:
    base.append(f"estimator on the true target RotErr {_fmt(entry, 'target_rot_err')} TransErr "
                f"{_fmt(entry, 'target_trans_err')}")
  line = "; ".join(parts)
  return line + (f" (baselines: {'; '.join(base)})" if base else "")
