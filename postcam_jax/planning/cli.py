"""``python -m postcam_jax.aot``: plan (or sweep) a TPU run from the command line.

  python -m postcam_jax.aot --config configs/postcam_1p3b.py --topology v5p:2x2x2 \\
      [--mesh data=1,fsdp=2,sequence=4] [--step train|sample|forward|wan_forward] [--sweep] \\
      [--latent 11,60,104] [--render 11,15,26|none] [--config.x=y ...] [--out DIR]

The config file is loaded by ``ml_collections.config_flags`` (locked: ``--config.x=y`` changes
values, never adds fields), exactly as the trainer loads it. A flag or config key that does not
parse, an unknown topology or mesh, and an ``--out`` that is a file or cannot be written are one
line ``error: ...`` (exit status 2, through ``python -m postcam_jax.aot``); the report files
appear whole (``core.atomic``).
"""

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from postcam_jax import parallel
from postcam_jax.core import atomic, cli
from postcam_jax.planning import planner
from postcam_jax.planning.steps import STEPS, Request
from postcam_jax.planning.sweep import Journal, format_sweep, sweep
from postcam_jax.planning.topology import topology_devices


def video_latent(config) -> tuple[int, int, int]:
  """Wan-VAE latent grid of config.data's video: 4x temporal (first frame alone), 8x spatial."""
  d = config.data
  if (d.num_frames - 1) % 4 or d.height % 16 or d.width % 16:
    raise ValueError(f"video {d.num_frames}x{d.height}x{d.width} has no Wan-VAE latent grid "
                     f"(frames 4k+1, height and width multiples of 16); pass --latent F,H,W")
  return ((d.num_frames - 1) // 4 + 1, d.height // 8, d.width // 8)


def parse_shape(text: str | None):
  if text is None or text.lower() == "none":
    return None
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise ValueError(f"shapes are F,H,W latent sizes like 11,60,104; got {text!r}") from None


PROGRAM = "python -m postcam_jax.aot"


def _config_flag(fv: flags.FlagValues, argv):
  # ``sys_argv``: the overrides (--config.x=y) are read from this argv, not from sys.argv.
  config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py)",
                                  flag_values=fv, lock_config=True, sys_argv=[PROGRAM, *argv])


def _parse(fv: flags.FlagValues, argv) -> list[str]:
  try:
    return fv([PROGRAM, *argv])
  except flags.Error as e:
    raise SystemExit(f"error: {cli.one_line(e)}") from None
  except (AttributeError, KeyError, TypeError):  # ml_collections' error for an unknown key
    problem = cli.config_override_problem([PROGRAM, *argv])
    if problem is None:
      raise
    raise SystemExit(f"error: {problem}") from None


def load_config(path: str, overrides=()):
  """A config file with ``--config.a.b=value`` overrides, loaded exactly as the command line
  (and the trainer) loads it."""
  argv = [f"--config={path}", *overrides]
  fv = flags.FlagValues()
  _config_flag(fv, argv)
  _parse(fv, argv)
  return fv.config


def parse_meshes(spec: str, n_devices: int) -> list[dict[str, int]]:
  """'fsdp=8;data=8' -> one mesh per ';'-separated entry (a sweep restricted to those meshes,
  e.g. to split one topology's sweep across hosts or finish part of it)."""
  return [parallel.parse_mesh_spec(part, n_devices) for part in spec.split(";") if part.strip()]


def _flag_values(argv) -> flags.FlagValues:
  """The planner's own flags (a private FlagValues: no clash with the trainer's absl flags)."""
  fv = flags.FlagValues()
  _config_flag(fv, argv)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x2 or v6e:2x4", flag_values=fv)
  flags.DEFINE_string("mesh", None, "data=1,fsdp=2,sequence=4 (the rest goes to fsdp); with "
                      "--sweep, one or more meshes separated by ';' restrict the sweep to them",
                      flag_values=fv)
  flags.DEFINE_enum("step", "train", STEPS, "what to compile", flag_values=fv)
  flags.DEFINE_string("stage", "joint", "training stage kind: pose | joint | render",
                      flag_values=fv)
  flags.DEFINE_string("latent", None, "F,H,W (default: from config.data's video)",
                      flag_values=fv)
  flags.DEFINE_string("render", None, "f,h,w or none (default: latent H/4, W/4)", flag_values=fv)
  flags.DEFINE_integer("batch", None, "videos per sample/forward call", flag_values=fv)
  flags.DEFINE_integer("sample_steps", 50, "sampling steps priced by --step sample",
                       flag_values=fv)
  flags.DEFINE_bool("sweep", False, "sweep meshes, remat policies and accumulation",
                    flag_values=fv)
  flags.DEFINE_string("out", None, "report directory; with --sweep it also keeps every planned "
                      "candidate (sweep_candidates.jsonl), so a rerun resumes an interrupted "
                      "sweep", flag_values=fv)
  flags.mark_flags_as_required(["config", "topology"], flag_values=fv)
  return fv


HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def parse_request(argv=None):
  """The command line as (``Request``, the sweep's meshes or None, the parsed flags)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  fv = _flag_values(argv)
  if any(arg in HELP_FLAGS for arg in argv):  # the flags live in a private FlagValues, not absl's
    flag_help = fv.get_help(include_special_flags=False).replace(f"{__name__}:\n", "")
    print(f"{__doc__.strip()}\n\nflags:{flag_help}")
    raise SystemExit(0)
  rest = _parse(fv, argv)
  if len(rest) > 1:
    raise SystemExit(f"error: unexpected arguments {rest[1:]}")
  config = fv.config
  n = len(topology_devices(fv.topology))
  latent = parse_shape(fv.latent) if fv.latent else video_latent(config)
  render = (parse_shape(fv.render) if fv.render else
            (latent[0], latent[1] // 4, latent[2] // 4))
  meshes = parse_meshes(fv.mesh, n) if fv.sweep and fv.mesh else None
  if meshes is None and fv.mesh and ";" in fv.mesh:
    raise SystemExit("several ';'-separated meshes are for --sweep; plan one mesh at a time")
  mesh = meshes[0] if meshes else parallel.parse_mesh_spec(
      fv.mesh or config.get("mesh", None), n)
  req = Request(config=config, topology=fv.topology, mesh=mesh, step=fv.step, latent=latent,
                render=render, stage=fv.stage, batch=fv.batch, sample_steps=fv.sample_steps)
  return req, meshes, fv


def main(argv=None) -> int:
  try:  # every flag is read and checked here, before any compile
    req, meshes, args = parse_request(argv)
    if args.out:
      atomic.check_output(args.out, merge=True)
  except ValueError as e:
    raise SystemExit(f"error: {cli.one_line(e)}") from None
  if args.sweep:
    if args.step != "train":
      raise SystemExit("--sweep plans training (--step train)")
    journal = Journal(os.path.join(args.out, "sweep_candidates.jsonl") if args.out else None)
    rows = sweep(req, meshes=meshes, journal=journal)
    text = format_sweep(rows, args["config"].config_filename)
    print(text)
    if args.out:
      with atomic.atomic_file(os.path.join(args.out, "sweep.json")) as tmp, open(tmp, "w") as f:
        json.dump(rows, f, indent=1, default=str)
      with atomic.atomic_file(os.path.join(args.out, "sweep.txt")) as tmp, open(tmp, "w") as f:
        f.write(text + "\n")
    return 0 if rows else 2
  report = planner.plan(req, out_dir=args.out)
  print(planner.format_report(report))
  if not report["fits"]:
    print(f"error: does not fit: {report['gap']}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
