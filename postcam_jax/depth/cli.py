"""Depth and camera poses of a video, as the PostCam release's step 2 writes them.

  python -m postcam_jax.depth --model ckpt/da3 --video test1.mp4 --out vggt/test1

Runs Depth Anything 3 (a model directory converted once with ``python tools/convert_weights.py
da3 --input DA3_DIR --output ckpt/da3``) on the video's frames (at most 1000, as the release) with
the release's call (``use_ray_pose=False``, process_res 504, ``upper_bound_resize``,
``saddle_balanced`` reference view) and writes the release's depth folder:

  OUT/depth/000000.png ...  16-bit depth, quantised between the clip's global min and max
  OUT/metadata.txt          "min max"
  OUT/extrinsics.txt        per frame the smoothed world-to-camera pose (3x4, OpenCV axes)
  OUT/intrinsics.txt        frame 0's K in 832x480 pixels
  OUT/images/000000.png ... the frames, centre-cropped and resized to 832x480

which ``python -m postcam_jax.sample --video X.mp4 --depth OUT ...`` (and the release's own step 3)
reads. Details and every quirk kept: ``postcam_jax.depth.release``. ``--da3-tmp DIR`` also writes
the text files of the release's intermediate folder (``intrinsic.txt``, ``extrinsic.txt``,
``frame_bboxes.txt``) to compare with a run of the release. The output appears whole or not at
all: it is built beside OUT and renamed at the end. ``--mesh data=2,fsdp=2`` (or ``auto``) spreads
the frames over the devices. Bad input (an unreadable or too-short video, a folder that is not a
DA3 model, an output path that is a file or lies under one, an existing folder without
``--overwrite``, or with it one that this project did not write or that holds the video or the
model) prints one line and exits with status 2; SIGTERM or Ctrl-C leaves no partial folder.
"""

import argparse
import os

import numpy as np

from postcam_jax import parallel
from postcam_jax.core import atomic, cli
from postcam_jax.depth import estimate, preprocess, release
from postcam_jax.io import model_dir, video

MIN_FRAMES = 2  # poses are relative between views: one frame has no camera motion to estimate
# The release's DA3 call (depth/depth_predict_da3.py): only use_ray_pose is passed, the rest are
# the package's defaults.
RELEASE_ESTIMATE_ARGS = {"process_res": 504, "process_res_method": "upper_bound_resize",
                         "ref_view_strategy": "saddle_balanced", "use_ray_pose": False}


class DepthCliError(ValueError):
  """An input the depth step cannot work with; the message says what was expected."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m postcam_jax.depth", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True,
                 help="converted Depth Anything 3 model directory (tools/convert_weights.py da3)")
  p.add_argument("--video", required=True, help="source video (mp4)")
  p.add_argument("--out", required=True,
                 help="output folder in the release's depth layout (e.g. vggt/<video stem>)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing output folder (only one this project wrote)")
  p.add_argument("--da3-tmp", default=None, metavar="DIR",
                 help="also write the release's intermediate text files (intrinsic.txt, "
                      "extrinsic.txt, frame_bboxes.txt) to DIR")
  p.add_argument("--mesh", default=None,
                 help="spread the frames over devices, e.g. 'data=2,fsdp=2' or 'auto' (all "
                      "devices); default: one device")
  add_cubic_argument(p, "--cubic")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  return p


def add_cubic_argument(p: argparse.ArgumentParser, flag: str):
  """The kernel of DA3's cubic input resize (the depth and sample commands share it)."""
  p.add_argument(flag, default="ipp", choices=tuple(preprocess.CUBIC_KERNELS),
                 help="kernel of DA3's INTER_CUBIC input resize: 'ipp' (default; numpy, what the "
                      "release's OpenCV wheel computes but one grey level off on ~1e-5 of the "
                      "values), 'cv2' (OpenCV itself: the release's input bit for bit; pip "
                      "install 'postcam-jax[exact]'), 'opencv' (OpenCV's kernel without IPP)")


# ----------------------------------------------------------------------------------------------
# Checks (cheap; before anything is decoded or loaded).


def check_model_dir(path) -> str:
  """One clear error unless ``path`` is a converted DA3 model directory."""
  path = os.fspath(path)
  hint = (f"convert Depth Anything 3 weights first: python tools/convert_weights.py da3 --input "
          f"DA3_DIR --output {path}")
  if not os.path.isdir(path):
    raise DepthCliError(f"DA3 model {path}: no such folder; {hint}")
  try:
    meta = model_dir.read_model_json(path)
  except FileNotFoundError:
    raise DepthCliError(f"DA3 model {path} is not a converted model directory (no "
                        f"{model_dir.MODEL_JSON}); {hint}") from None
  except ValueError as e:
    raise DepthCliError(f"DA3 model {path}: unreadable {model_dir.MODEL_JSON} ({e})") from None
  kind = meta.get("kind") if isinstance(meta, dict) else None
  if kind != model_dir.DA3_KIND:
    raise DepthCliError(f"DA3 model {path} holds a {kind!r} model, not Depth Anything 3; {hint}")
  config = meta.get("config") or {}
  if not (config.get("net") or {}).get("camera", True):
    raise DepthCliError(f"DA3 model {path} is {config.get('model_name')!r}, which has no camera "
                        f"decoder (depth only); the depth step needs poses: convert an any-view "
                        f"or nested model (da3-small/base/large/giant, da3nested-giant-large)")
  return path


def check_video_path(path) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DepthCliError(f"unreadable video: {path} does not exist")
  return path


# ----------------------------------------------------------------------------------------------
# The step.


def read_release_frames(path, max_frames: int = release.MAX_FRAMES) -> np.ndarray:
  """The frames the release gives DA3: the first ``max_frames`` of the video, uint8 RGB
  [N, H, W, 3]; one clear error for an unreadable or too-short video."""
  try:
    count = video.video_info(path)["num_frames"]
    frames = video.read_video(path, stop=max_frames if count > max_frames else None)
  except video.VideoReadError as e:
    raise DepthCliError(f"unreadable video: {e}") from None
  if len(frames) < MIN_FRAMES:
    raise DepthCliError(f"video too short: {path} decodes to {len(frames)} frame(s); the depth "
                        f"step needs at least {MIN_FRAMES} (camera poses are relative between "
                        f"frames)")
  return frames


def check_cubic(cubic: str) -> str:
  try:
    return preprocess.check_cubic(cubic)
  except ValueError as e:
    raise DepthCliError(str(e)) from None


def estimate_release_depth(model, frames: np.ndarray, *, mesh=None,
                           cubic: str = "ipp") -> release.ReleaseDepth:
  """DA3 on ``frames`` with the release's arguments, then the release's post-processing
  (``cubic``: the input's cubic resize kernel, ``preprocess.CUBIC_KERNELS``)."""
  try:
    prediction = estimate.estimate(model, frames, mesh=mesh, cubic=cubic,
                                   **RELEASE_ESTIMATE_ARGS)
  except ValueError as e:  # e.g. a nested model that sees no ground to set its scale
    raise DepthCliError(f"depth estimation failed: {e}") from e
  return release.postprocess(prediction.depth, prediction.extrinsics, prediction.intrinsics,
                             prediction.processed_hw)


def make_mesh(spec: str | None):
  """The mesh of a CLI's --mesh value ("auto": every device; empty: None), or one line naming the
  bad spec (the sampler, depth and evaluate commands share it)."""
  if not spec:
    return None
  try:
    return parallel.make_mesh("" if spec == "auto" else spec)
  except ValueError as e:
    raise DepthCliError(f"--mesh {spec}: {e}") from None


def load_model(path, mesh=None):
  return model_dir.load_da3(path, mesh=mesh)


def run(args) -> list[str]:
  """Check every argument, estimate, write; returns the written folders."""
  inputs = (args.video, args.model)  # what --overwrite must never delete
  release.check_output_path(args.out, args.overwrite, inputs)
  if args.da3_tmp is not None:
    release.check_output_path(args.da3_tmp, args.overwrite, inputs)
    if os.path.abspath(args.da3_tmp) == os.path.abspath(args.out):
      raise DepthCliError("--da3-tmp must be another folder than --out")
  check_model_dir(args.model)
  check_cubic(args.cubic)
  frames = read_release_frames(check_video_path(args.video))
  mesh = make_mesh(args.mesh)
  model = load_model(args.model, mesh)
  result = estimate_release_depth(model, frames, mesh=mesh, cubic=args.cubic)
  written = [release.write_release_folder(args.out, result, frames, overwrite=args.overwrite,
                                          progress=not args.no_progress, inputs=inputs)]
  if args.da3_tmp is not None:
    written.append(release.write_da3_tmp(args.da3_tmp, result, overwrite=args.overwrite,
                                         progress=not args.no_progress, inputs=inputs))
  return written


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)

  def go() -> int:
    for path in run(args):
      print(path)
    return 0

  # A bad input or output is one line (exit 2); anything else is a bug and keeps its traceback.
  return cli.run(go, (DepthCliError, release.ReleaseFolderError, atomic.OutputError,
                      model_dir.ModelDirError))
