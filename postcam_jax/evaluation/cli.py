"""Measure PostCam's generated videos as the paper does: camera accuracy and fidelity.

  python -m postcam_jax.evaluate --samples OUT --depth-model ckpt/da3 --out EVAL
  python -m postcam_jax.evaluate --data-dir RECORDS --checkpoint ckpt/postcam --vae ckpt/vae \
      --depth-model ckpt/da3 --num-pairs 16 --mesh data=8 --out EVAL
  python -m postcam_jax.evaluate --workdirs runs/a runs/b [--table 3] --depth-model ckpt/da3 \
      --out EVAL

What is measured (per generated video, then averaged per trajectory kind and over all):

- camera accuracy: Depth Anything 3 (``--depth-model``, converted by ``tools/convert_weights.py
  da3``; the paper used VGGT, see ``postcam_jax.evaluation.poses``) estimates the poses of the
  generated video; they and the requested trajectory are made relative to their first frame and
  scale-normalised (CamI2V's protocol, ``postcam_jax.evaluation.camera``), then RotErr (radians),
  TransErr and CamMC per frame, reported as the mean per frame (``*_sum``: CamI2V's sums);
- fidelity: PSNR and SSIM per frame against the ground-truth target video where one exists
  (synthetic pairs), else against the source video (the paper's real-video protocol);
- baselines beside the model: "copy the source" and "render only" (the release's warp), and the
  pose estimator's own error on the true target video.

Inputs (one of):

- ``--samples DIR``: the outputs of ``python -m postcam_jax.sample`` (every
  ``*_pred_video.mp4`` below DIR, with its ``_source``/``_render``/``_target`` videos and, from
  ``--save-arrays``, the requested cameras; without them give ``--trajectory`` as sampled);
- ``--data-dir DIR``: the held-out split (``--split``) of a prepared latent dataset, sampled here
  with ``--checkpoint`` (a PostCam model directory) in batches sharded over ``--mesh``, decoded by
  ``--vae`` (the Wan-VAE the records were made with) or ``--codec`` (a PCA stand-in's state);
- ``--workdirs DIR...``: trainer workdirs, each sampled at its latest checkpoint on held-out pairs
  of its own data config; ``--table 3|4|5`` lays them out as the paper's ablation table with the
  columns their configs name (``configs/common.py`` ``report``) and the paper's numbers beside.

Outputs (``--out``, written whole or not at all): ``videos.csv`` and ``videos.json`` (one row
per video; the JSON adds the per-frame values and the aligned camera paths), ``kinds.csv`` (means
per trajectory kind and over all), ``summary.json``, ``pictures/<video>.png`` (requested and
estimated camera paths from the top and the side beside a strip of source / render / generated /
target frames), ``summary.png``; with ``--workdirs`` one such folder per run and ``table.csv`` /
``table.md`` (``table<N>.*`` with ``--table N``). The summary line is printed. A bad input prints
one line ``error: ...`` and exits with status 2, writing nothing.
"""

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable

import numpy as np

from postcam_jax.core import atomic
from postcam_jax.core import cli as core_cli
from postcam_jax.depth import cli as depth_cli
from postcam_jax.evaluation import folder, heldout, pictures, poses, report, tables
from postcam_jax.geometry import trajectories
from postcam_jax.inference import cli as sample_cli
from postcam_jax.inference import sampling
from postcam_jax.io import model_dir

TABLES = ("3", "4", "5")


class EvaluateError(ValueError):
  """An input this command cannot use; the message names it and what it needs."""


@dataclasses.dataclass(frozen=True)
class WorkdirAccess:
  """How trainer workdirs are read (``postcam_jax.training.camera_eval``, which this package may
  not import): ``report(workdir)`` -> (config.report dict, step), cheap; ``load(workdir, *,
  num_pairs, mesh, vae)`` -> ``heldout.Subject``."""
  report: Callable
  load: Callable


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m postcam_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  source = p.add_argument_group("what to measure (one of)")
  source.add_argument("--samples", metavar="DIR", help="a folder of python -m postcam_jax.sample "
                      "outputs (searched recursively for *_pred_video.mp4)")
  source.add_argument("--data-dir", metavar="DIR", help="a prepared latent dataset: sample its "
                      "held-out pairs with --checkpoint")
  source.add_argument("--workdirs", nargs="+", metavar="DIR", help="trainer workdirs: each "
                      "sampled at its latest checkpoint on held-out pairs of its own data")
  p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist, or "
                 "--overwrite one this command made)")
  p.add_argument("--overwrite", action="store_true", help="replace an earlier --out")
  p.add_argument("--depth-model", metavar="DIR", help="converted Depth Anything 3 (tools/"
                 "convert_weights.py da3), the pose estimator; without it no camera accuracy")
  p.add_argument("--process-res", type=int, default=504,
                 help="longest side DA3 sees (default 504, the release's)")
  p.add_argument("--pose-frames", type=int, default=0,
                 help="estimate poses on this many frames spread over each video (0: all)")
  p.add_argument("--trajectory", help="--samples without --save-arrays: the trajectory the "
                 "videos were sampled with (" + trajectories.describe_trajectory_choices() + ")")
  p.add_argument("--no-pictures", action="store_true", help="skip the PNGs")
  sampling_group = p.add_argument_group("sampling (--data-dir, --workdirs)")
  sampling_group.add_argument("--checkpoint", metavar="DIR", help="--data-dir: the PostCam model "
                              "directory to sample with")
  sampling_group.add_argument("--vae", metavar="DIR", help="the converted Wan-VAE that decodes "
                              "(--data-dir; --workdirs trained on prepared records)")
  sampling_group.add_argument("--codec", metavar="FILE", help="--data-dir: a PCA stand-in codec "
                              "state (.npz) instead of --vae")
  sampling_group.add_argument("--split", default="test", help="--data-dir: the held-out split")
  sampling_group.add_argument("--num-pairs", type=int, default=8, help="held-out pairs per model")
  sampling_group.add_argument("--steps", type=int, default=50, help="sampler steps")
  sampling_group.add_argument("--shift", type=float, default=5.0)
  sampling_group.add_argument("--solver", default="euler", choices=sampling.SOLVERS)
  sampling_group.add_argument("--guidance", type=float, default=1.0,
                              help="text CFG (--data-dir; != 1 needs --text-encoder for the "
                                   "release's negative prompt)")
  sampling_group.add_argument("--text-encoder", metavar="DIR")
  sampling_group.add_argument("--precision", default="release",
                              choices=("release", "mixed", "float32"))
  sampling_group.add_argument("--seed", type=int, default=0)
  sampling_group.add_argument("--batch", type=int, default=0, help="pairs per sampling call "
                              "(0: the mesh's data-parallel size)")
  sampling_group.add_argument("--mesh", help="shard the model and the batch, e.g. 'data=8' or "
                              "'auto' (all devices on fsdp); default one device")
  p.add_argument("--table", choices=TABLES, help="--workdirs: lay the runs out as the paper's "
                 "ablation table N, with the columns their configs name")
  return p


# ----------------------------------------------------------------------------------------------
# Checks (before anything heavy is loaded).


def _is_dir(path, flag, what):
  if not os.path.isdir(path):
    raise EvaluateError(f"{flag} {path}: no such folder ({what})")


def _model_dir(path, flag, kind, what):
  _is_dir(path, flag, what)
  try:
    meta = model_dir.read_model_json(path)
  except (FileNotFoundError, ValueError):
    raise EvaluateError(f"{flag} {path}: not a converted model directory (no readable "
                        f"{model_dir.MODEL_JSON}); expected {what}") from None
  if meta.get("kind") != kind:
    raise EvaluateError(f"{flag} {path} holds a {meta.get('kind')!r} model, expected {what}")


def validate(args, workdirs: WorkdirAccess | None):
  modes = [m for m in ("samples", "data_dir", "workdirs") if getattr(args, m)]
  if len(modes) != 1:
    raise EvaluateError("give exactly one of --samples DIR, --data-dir DIR (with --checkpoint), "
                        f"--workdirs DIR...; got {len(modes)}")
  for name in ("num_pairs", "steps"):
    if getattr(args, name) < 1:
      raise EvaluateError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.pose_frames == 1 or args.pose_frames < 0:
    raise EvaluateError(f"--pose-frames must be 0 (all) or >= 2, got {args.pose_frames}")
  if args.process_res < 14:
    raise EvaluateError(f"--process-res must be >= 14 (one DA3 patch), got {args.process_res}")
  if args.depth_model:
    depth_cli.check_model_dir(args.depth_model)
  if args.table and not args.workdirs:
    raise EvaluateError("--table lays out trained runs: give them with --workdirs DIR...")
  if args.trajectory:
    if not args.samples:
      raise EvaluateError("--trajectory names the trajectory of --samples outputs")
    trajectories.load_trajectory(args.trajectory, 41, d_min=1.0)
  if args.samples:
    _is_dir(args.samples, "--samples", "the --out folder of python -m postcam_jax.sample")
  if args.data_dir:
    _is_dir(args.data_dir, "--data-dir", "a prepared latent dataset")
    if not args.checkpoint:
      raise EvaluateError("--data-dir needs --checkpoint DIR, the PostCam model to sample with")
    _model_dir(args.checkpoint, "--checkpoint", model_dir.POSTCAM_KIND, "a PostCam model")
    if (args.vae is None) == (args.codec is None):
      raise EvaluateError("--data-dir needs one decoder: --vae DIR (the Wan-VAE the records were "
                          "encoded with) or --codec FILE.npz (a PCA stand-in codec's state)")
    if args.guidance != 1.0 and not args.text_encoder:
      raise EvaluateError("--guidance != 1 needs --text-encoder DIR to encode the release's "
                          "negative prompt")
  if args.vae:
    _model_dir(args.vae, "--vae", model_dir.VAE_KIND, "a Wan-VAE")
  if args.codec and not os.path.isfile(args.codec):
    raise EvaluateError(f"--codec {args.codec}: no such file")
  if args.workdirs:
    if workdirs is None:
      raise EvaluateError("--workdirs needs the trainer: run python -m postcam_jax.evaluate")
    if args.guidance != 1.0:
      raise EvaluateError("--workdirs samples without text guidance (held-out pairs carry no "
                          "negative prompt); drop --guidance")
    if len({os.path.realpath(w) for w in args.workdirs}) != len(args.workdirs):
      raise EvaluateError("--workdirs names one folder twice")
    runs = []
    for w in args.workdirs:
      _is_dir(w, "--workdirs", "a trainer workdir")
      block, step = workdirs.report(w)
      runs.append(tables.Run(w, block, step, {}))
    tables.build(runs, args.table)  # rows and columns, before any sampling
  inputs = [p for p in (args.samples, args.data_dir, args.checkpoint, args.vae, args.codec,
                        args.depth_model, args.text_encoder, *(args.workdirs or [])) if p]
  atomic.check_output(args.out, overwrite=args.overwrite, inputs=inputs)
  return inputs  # what --overwrite must never delete


# ----------------------------------------------------------------------------------------------
# Running.


def batch_size(args, mesh) -> int:
  if args.batch:
    return args.batch
  if mesh is None:
    return 1
  return int(mesh.shape["data"]) * int(mesh.shape["fsdp"])


def write_results(folder: str, clips, scored, settings: dict, pictures_on: bool,
                  title: str = "") -> dict:
  """The tables (and pictures) of one set of clips into ``folder``; returns the summary."""
  os.makedirs(folder, exist_ok=True)
  summary = report.write_tables(folder, scored, settings)
  if pictures_on:
    os.makedirs(os.path.join(folder, "pictures"), exist_ok=True)
    for clip, result in zip(clips, scored):
      pictures.video_figure(clip, result, os.path.join(folder, "pictures",
                                                       f"{clip.name}.png"))
    kinds = report.aggregate([s.row for s in scored])
    pictures.summary_figure(kinds, os.path.join(folder, "summary.png"), title)
  return summary


def settings_of(args) -> dict:
  keys = ("samples", "data_dir", "workdirs", "checkpoint", "split", "num_pairs", "steps",
          "shift", "solver", "guidance", "seed", "depth_model", "process_res", "pose_frames",
          "trajectory", "table")
  return {k: getattr(args, k) for k in keys}


def negative_states(args) -> np.ndarray | None:
  if args.guidance == 1.0:
    return None
  text = model_dir.load_text_encoder(args.text_encoder)
  states, _ = text.encode_text([sample_cli.RELEASE_NEGATIVE_PROMPT])
  return np.asarray(states, np.float32)[0]


def run(args, workdirs: WorkdirAccess | None = None) -> list[str]:
  """Check, measure, write; returns the printed lines."""
  inputs = validate(args, workdirs)
  mesh = depth_cli.make_mesh(args.mesh)
  estimator = None
  if args.depth_model:
    estimator = poses.PoseEstimator.load(args.depth_model, process_res=args.process_res,
                                         num_frames=args.pose_frames, mesh=mesh)
  settings = settings_of(args)
  lines = []
  with atomic.AtomicDirectory(args.out, args.overwrite, inputs=inputs) as tmp:
    if args.samples:
      clips = [folder.read_clip(f, args.trajectory) for f in folder.find_samples(args.samples)]
      scored = [report.score(c, estimator) for c in clips]
      lines.append(write_results(tmp, clips, scored, settings, not args.no_pictures)["line"])
    elif args.data_dir:
      model = model_dir.load_postcam(args.checkpoint, precision=args.precision, dtype=None,
                                     mesh=mesh)
      decode = heldout.load_decoder(args.vae, args.codec, mesh=mesh)
      pairs = heldout.record_pairs(args.data_dir, args.split, args.num_pairs, decode,
                                   camera_input="plucker" if model.cfg.plucker else "rt",
                                   text_len=model.cfg.text_len)
      latents = heldout.sample_latents(
          model, pairs, camera=True, render=all(p.render_latent is not None for p in pairs),
          steps=args.steps, shift=args.shift, solver=args.solver, guidance=args.guidance,
          negative=negative_states(args), seed=args.seed, batch=batch_size(args, mesh),
          mesh=mesh)
      clips = heldout.clips(pairs, latents, decode)
      scored = [report.score(c, estimator) for c in clips]
      lines.append(write_results(tmp, clips, scored, settings, not args.no_pictures)["line"])
    else:
      lines += run_workdirs(args, workdirs, estimator, mesh, tmp, settings)
  return [args.out] + lines


def run_labels(workdirs: list[str]) -> list[str]:
  """One output folder name per workdir: its base name, numbered when two share one."""
  names = [heldout.safe_name(os.path.basename(os.path.normpath(w))) for w in workdirs]
  return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def run_workdirs(args, workdirs: WorkdirAccess, estimator, mesh, tmp, settings) -> list[str]:
  """Sample and score every workdir into its own folder, then the table of them all."""
  runs, lines = [], []
  for w, label in zip(args.workdirs, run_labels(args.workdirs)):
    subject = workdirs.load(w, num_pairs=args.num_pairs, mesh=mesh, vae=args.vae)
    clips, scored = heldout.run_subject(subject, estimator, steps=args.steps, shift=args.shift,
                                        solver=args.solver, seed=args.seed,
                                        batch=batch_size(args, mesh))
    summary = write_results(os.path.join(tmp, label), clips, scored, settings,
                            not args.no_pictures, title=f"{w} (step {subject.step})")
    runs.append(tables.Run(w, subject.report, subject.step,
                           report.aggregate([s.row for s in scored])[-1]))
    lines.append(f"{w}: {summary['line']}")
  table = tables.build(runs, args.table)
  tables.write(tmp, table, f"table{args.table}" if args.table else "table")
  lines.append(tables.markdown(table).rstrip("\n"))
  return lines


def main(argv=None, *, workdirs: WorkdirAccess | None = None) -> int:
  args = build_parser().parse_args(argv)

  def go() -> int:
    for line in run(args, workdirs):
      print(line)
    return 0

  return core_cli.run(go, (EvaluateError, depth_cli.DepthCliError, atomic.OutputError,
                           model_dir.ModelDirError, ValueError, FileNotFoundError))


if __name__ == "__main__":
  sys.exit(main())
