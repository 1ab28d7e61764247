"""The outputs of ``python -m postcam_jax.sample`` (or of the demo) as :class:`report.Clip` s.

Every ``<stem>_pred_video.mp4`` under the folder (sub-folders included: the sampler's
``results_<checkpoint>_<trajectory>/``) is one generated video; beside it the sampler writes
``<stem>_source_video.mp4`` and ``<stem>_render_video.mp4``, the demo also
``<stem>_target_video.mp4`` (the true target video of a synthetic pair). The requested trajectory
is read from ``<stem>_arrays.npz`` (``--save-arrays``: ``target_w2c`` [T, 4, 4] world-to-camera,
world = the source camera at frame 0, and the ``trajectory`` name), or, for outputs sampled
without it, resolved from ``--trajectory`` exactly as the sampler resolves it for a clip of the
generated video's length (the shipped and basic trajectories do not depend on the video once
calibrated, and the metric's alignment removes the scale).
"""

import dataclasses
import os

import numpy as np

from postcam_jax.evaluation import camera, report
from postcam_jax.evaluation.heldout import safe_name
from postcam_jax.geometry import trajectories
from postcam_jax.io import video

PRED_SUFFIX = "_pred_video.mp4"
REFERENCES = {"source": "_source_video.mp4", "render": "_render_video.mp4",
              "target": "_target_video.mp4"}
ARRAYS_SUFFIX = "_arrays.npz"


@dataclasses.dataclass(frozen=True)
class SampleFiles:
  """The files of one generated video: ``pred`` and whichever references exist."""
  name: str
  pred: str
  source: str | None
  render: str | None
  target: str | None
  arrays: str | None


def find_samples(folder: str) -> list[SampleFiles]:
  """Every generated video under ``folder``, sorted by path; a ValueError when there is none."""
  if not os.path.isdir(folder):
    raise ValueError(f"--samples {folder}: no such folder (give the --out folder of python -m "
                     f"postcam_jax.sample)")
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip staging folders
    for name in sorted(files):
      if not name.endswith(PRED_SUFFIX):
        continue
      stem = os.path.join(root, name[:-len(PRED_SUFFIX)])
      present = {k: stem + s if os.path.isfile(stem + s) else None for k, s in REFERENCES.items()}
      arrays = stem + ARRAYS_SUFFIX if os.path.isfile(stem + ARRAYS_SUFFIX) else None
      label = safe_name(os.path.relpath(stem, folder).replace(os.sep, "__"))
      found.append(SampleFiles(label, stem + PRED_SUFFIX, arrays=arrays, **present))
  if not found:
    raise ValueError(f"--samples {folder}: no *{PRED_SUFFIX} in it or below it (the outputs of "
                     f"python -m postcam_jax.sample)")
  return found


def requested_trajectory(files: SampleFiles, num_frames: int,
                         trajectory: str | None) -> tuple[np.ndarray, str]:
  """(target world-to-camera [T, 4, 4], trajectory kind) of one generated video."""
  if files.arrays is not None:
    with np.load(files.arrays) as data:
      if "target_w2c" in data.files:
        w2c = np.asarray(data["target_w2c"], np.float64)
        name = str(data["trajectory"]) if "trajectory" in data.files else None
        return w2c, name or camera.trajectory_kind(w2c)
  if trajectory is None:
    raise ValueError(f"{files.pred}: no requested trajectory (its {ARRAYS_SUFFIX} is missing or "
                     f"holds no target_w2c); sample with --save-arrays, or pass --trajectory "
                     f"NAME as given to the sampler")
  target = trajectories.load_trajectory(trajectory, num_frames, d_min=1.0)
  return target.model_frame_poses(num_frames).astype(np.float64), target.name


def read_clip(files: SampleFiles, trajectory: str | None = None) -> report.Clip:
  """The videos of one generated video (uint8) and its requested trajectory."""
  videos = {}
  for key in ("pred", "source", "render", "target"):
    path = getattr(files, key)
    if path is None:
      continue
    try:
      videos[key] = video.read_video(path)
    except video.VideoReadError as e:
      raise ValueError(f"unreadable video: {e}") from None
  count = len(videos["pred"])
  w2c, kind = requested_trajectory(files, count, trajectory)
  if len(w2c) != count:
    raise ValueError(f"{files.pred}: {count} frames but {len(w2c)} requested poses in "
                     f"{files.arrays}")
  clip = report.Clip(name=files.name, kind=kind, requested_w2c=w2c, **videos)
  report.check_clip(clip)
  return clip
