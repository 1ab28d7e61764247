"""Every input of the sampling CLI, checked before any model is loaded.

:func:`validate` reads only what is cheap: the arguments, the model directories' ``model.json``,
the video headers, the trajectories, the prompt embeddings, and the output paths. Each problem is
a :class:`SampleError` whose one-line message names the input and the fix. The expensive checks
(every video decoded with its depth) follow in ``postcam_jax.inference.cli.check_inputs``, still
before any model is loaded.

Outputs: per (video, trajectory) ``<stem>_{source,render,pred}_video.mp4``,
``<stem>_contact_sheet.png`` and with ``--save-arrays`` ``<stem>_arrays.npz``, in ``--out`` (one
trajectory) or ``--out/results_<checkpoint>_<trajectory>/``. Two inputs that would write the same
file (two videos with one file name, two trajectories with one name) are refused, an existing
file is replaced only with ``--overwrite``, and never a file the run reads.
"""

import dataclasses
import os

import jax
import numpy as np

from postcam_jax import parallel
from postcam_jax.core import atomic
from postcam_jax.depth import cli as depth_cli
from postcam_jax.depth import release as depth_release
from postcam_jax.geometry import trajectories
from postcam_jax.io import model_dir, video

SIZE_MULTIPLE = 32       # 4x render downsample, then the VAE's 8x
OUTPUT_KINDS = ("source_video.mp4", "render_video.mp4", "pred_video.mp4", "contact_sheet.png")


class SampleError(ValueError):
  """A CLI input that cannot work; the message says what was expected and what was given."""


@dataclasses.dataclass
class Plan:
  """What :func:`validate` found: the (video, depth) pairs, a prompt per video, the prompt
  embeddings (``context`` [1, L, D] and ``negative`` or None), the output files (relative to
  ``--out``) and every path the run reads (never replaced)."""
  pairs: list
  prompts: list
  context: np.ndarray | None
  negative: np.ndarray | None
  outputs: list
  inputs: tuple


def parse_size(text: str) -> tuple[int, int]:
  parts = text.lower().split("x")
  if len(parts) != 2 or not all(p.isdigit() for p in parts):
    raise SampleError(f"--size must be HxW (e.g. 480x832), got {text!r}")
  h, w = int(parts[0]), int(parts[1])
  if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
    raise SampleError(f"--size {h}x{w}: height and width must be positive multiples of "
                      f"{SIZE_MULTIPLE} (the render is downsampled 4x, then the VAE 8x)")
  return h, w


def validate(args) -> Plan:
  """Cheap checks of every argument (module doc), in the order a user fixes them."""
  parse_size(args.size)
  if args.num_frames < 1 or (args.num_frames - 1) % 4:
    raise SampleError(f"--num-frames must be 4k+1 (the VAE's temporal compression: 41 for the "
                      f"release), got {args.num_frames}")
  if args.steps < 1:
    raise SampleError(f"--steps must be >= 1, got {args.steps}")
  if args.depth is None and args.depth_model is None:
    raise SampleError("missing depth: provide --depth DIR in the release's layout (depth/*.png "
                      "16-bit, metadata.txt, extrinsics.txt, intrinsics.txt, as its depth step "
                      "writes) or --depth file.npz (depth [N, H, W], intrinsics [3, 3], "
                      "extrinsics [N, 3, 4] world-to-camera, OpenCV axes; a synthetic scene's "
                      "depth/camXX.npz is one), or --depth-model DIR to estimate it")
  if args.depth_model is not None:
    check_depth_model_args(args)
    depths = [None] * len(args.video)
  else:
    depths = args.depth
  if args.save_depth is not None and args.depth_model is None:
    raise SampleError("--save-depth keeps the depth that --depth-model estimates; add "
                      "--depth-model DIR (or drop --save-depth)")
  if args.depth is not None and len(args.depth) != len(args.video):
    raise SampleError(f"--depth needs one entry per --video: {len(args.video)} videos, "
                      f"{len(args.depth)} depth entries")
  for video_path in args.video:
    if not os.path.isfile(video_path):
      raise SampleError(f"unreadable video: {video_path} does not exist")
  for depth_path in args.depth or []:
    if not (os.path.isdir(depth_path) or (depth_path.endswith(".npz")
                                          and os.path.isfile(depth_path))):
      raise SampleError(f"missing depth: {depth_path} is neither a depth folder nor an existing "
                        f".npz; provide --depth DIR in the release's layout or --depth file.npz")
  if args.depth_model is not None:
    check_estimable(args.video)
  for spec in args.trajectory:  # names and files, before any video is decoded
    check_trajectory(spec, trajectories.load_trajectory(spec, args.num_frames, d_min=1.0,
                                                        radius_ratio=args.radius_ratio))
  if args.prompt_embeds is None:
    if not args.prompt:
      raise SampleError("give --prompt (one, or one per video) or --prompt-embeds FILE.npz")
    if args.text_encoder is None:
      raise SampleError("--prompt needs --text-encoder DIR (or pass --prompt-embeds FILE.npz)")
  elif not os.path.isfile(args.prompt_embeds):
    raise SampleError(f"--prompt-embeds {args.prompt_embeds} does not exist")
  prompts = args.prompt or [""]
  if len(prompts) not in (1, len(args.video)):
    raise SampleError(f"--prompt needs 1 or {len(args.video)} values (one per video), got "
                      f"{len(prompts)}")
  prompts = prompts * len(args.video) if len(prompts) == 1 else prompts
  text_dim = check_model_dirs(args)
  context = negative = None
  if args.prompt_embeds is not None:
    context, negative = read_prompt_embeds(args.prompt_embeds, text_dim)
    if negative is None and args.guidance != 1.0 and args.text_encoder is None:
      raise SampleError("--prompt-embeds has no 'negative_context' and no --text-encoder is "
                        "given to encode the negative prompt; add one, or --guidance 1")
  if args.mesh and args.mesh != "auto":
    parallel.parse_mesh_spec(args.mesh, jax.device_count())
  pairs = list(zip(args.video, depths))
  inputs = read_paths(args)
  outputs = planned_outputs(args)
  atomic.check_output(args.out, merge=True)
  atomic.check_files([os.path.join(args.out, p) for p in outputs], overwrite=args.overwrite,
                     inputs=inputs)
  return Plan(pairs, prompts, context, negative, outputs, inputs)


def check_depth_model_args(args):
  """--depth-model and --save-depth: a DA3 model directory, one fresh folder per video."""
  if args.depth is not None:
    raise SampleError("give --depth (depth folders or .npz files) or --depth-model (estimate "
                      "them), not both")
  depth_cli.check_model_dir(args.depth_model)
  depth_cli.check_cubic(args.depth_cubic)
  if args.save_depth is None:
    return
  if len(args.save_depth) != len(args.video):
    raise SampleError(f"--save-depth needs one folder per --video: {len(args.video)} videos, "
                      f"{len(args.save_depth)} folders")
  targets = [os.path.abspath(t) for t in args.save_depth]
  if len(set(targets)) != len(targets):
    raise SampleError("--save-depth names the same folder twice")
  for target in targets:
    if os.path.exists(target):
      kind = "a folder" if os.path.isdir(target) else "a file"
      raise SampleError(f"--save-depth {target} exists ({kind}); pass it as --depth to reuse "
                        f"it, or choose a new folder")
    atomic.check_output(target)  # not under a file, writable


def check_estimable(videos):
  """The release's depth step covers at most ``MAX_FRAMES`` frames: a longer clip would be
  sampled with too few depth maps."""
  for path in videos:
    try:
      count = video.video_info(path)["num_frames"]
    except video.VideoReadError as e:
      raise SampleError(f"unreadable video: {e}") from None
    if count > depth_release.MAX_FRAMES:
      raise SampleError(f"{path}: {count} frames, but the release's depth step estimates at most "
                        f"{depth_release.MAX_FRAMES}, so its depth cannot cover the clip; cut "
                        f"it or give --depth")


def check_trajectory(spec: str, target):
  if not (np.all(np.isfinite(target.w2c)) and np.isfinite(target.scale)):
    raise SampleError(f"--trajectory {spec}: its poses hold NaN or Inf; fix the file")


def check_model_dirs(args) -> int:
  """Each model directory holds the kind of model its flag wants (from ``model.json``, nothing
  loaded); returns the checkpoint's text width."""
  wanted = [("--checkpoint", args.checkpoint, model_dir.POSTCAM_KIND),
            ("--vae", args.vae, model_dir.VAE_KIND)]
  if args.text_encoder is not None:
    wanted.append(("--text-encoder", args.text_encoder, model_dir.T5_KIND))
  metas = {}
  for flag, path, kind in wanted:
    try:
      meta = model_dir.read_model_json(path)
    except model_dir.ModelDirError as e:
      raise SampleError(f"{flag} {path}: {e}") from None
    if meta.get("kind") != kind:
      raise SampleError(f"{flag} {path} holds a {meta.get('kind')!r} model, expected {kind!r}; "
                        f"pass the directory tools/convert_weights.py wrote for it")
    metas[flag] = meta
  text_dim = metas["--checkpoint"]["config"].get("text_dim")
  if not isinstance(text_dim, int):
    raise SampleError(f"--checkpoint {args.checkpoint}: its model.json has no integer text_dim; "
                      f"convert the checkpoint again")
  return text_dim


def read_prompt_embeds(path: str, text_dim: int):
  """(context [1, L, D], negative [1, L, D] or None) from a --prompt-embeds file: float arrays of
  the checkpoint's text width, finite."""
  try:
    data = np.load(path)
  except (OSError, ValueError) as e:
    raise SampleError(f"--prompt-embeds {path}: not a readable .npz ({e})") from None
  with data:
    if not hasattr(data, "files") or "context" not in data:
      raise SampleError(f"--prompt-embeds {path}: needs an array 'context' [L, {text_dim}]; has "
                        f"{sorted(getattr(data, 'files', []))}")
    out = []
    for key in ("context", "negative_context"):
      if key not in data:
        out.append(None)
        continue
      try:
        raw = data[key]
        a = np.asarray(raw, np.float32)
      except (OSError, ValueError, TypeError) as e:
        raise SampleError(f"--prompt-embeds {path}: '{key}' is unreadable or not numbers "
                          f"({e})") from None
      a = a[None] if a.ndim == 2 else a
      if a.ndim != 3 or a.shape[0] != 1 or a.shape[1] < 1 or a.shape[-1] != text_dim:
        raise SampleError(f"--prompt-embeds {path}: '{key}' must be [L, {text_dim}] (the "
                          f"checkpoint's text_dim), got {tuple(raw.shape)}")
      if not np.all(np.isfinite(a)):
        raise SampleError(f"--prompt-embeds {path}: '{key}' holds NaN or Inf; encode the prompt "
                          f"again")
      out.append(a)
  return out[0], out[1]


def output_folder(args, trajectory: str) -> str:
  """The sub-folder of ``--out`` of one trajectory's files ("" with a single trajectory)."""
  if len(args.trajectory) == 1:
    return ""
  ckpt = os.path.basename(os.path.normpath(args.checkpoint))
  stem = os.path.splitext(os.path.basename(trajectory.split(":")[0]))[0]
  suffix = trajectory.rpartition(":")[2] if ":" in trajectory else ""
  return f"results_{ckpt}_{stem}{suffix}"


def video_stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def planned_outputs(args) -> list[str]:
  """Every file the run writes, relative to ``--out``; refuses two inputs that would write the
  same one (which would overwrite each other)."""
  folders: dict[str, str] = {}
  for spec in args.trajectory:
    folder = output_folder(args, spec)
    if folder in folders:
      raise SampleError(f"--trajectory {folders[folder]} and {spec} would both write "
                        f"{os.path.join(args.out, folder)}; give each trajectory once, with "
                        f"distinct file names")
    folders[folder] = spec
  stems: dict[str, str] = {}
  for path in args.video:
    stem = video_stem(path)
    if stem in stems:
      raise SampleError(f"--video {stems[stem]} and {path} would both write {stem}_*.mp4 (the "
                        f"outputs are named after the video's file name); rename one, or sample "
                        f"them into different --out folders")
    stems[stem] = path
  kinds = OUTPUT_KINDS + (("arrays.npz",) if args.save_arrays else ())
  return [os.path.join(folder, f"{stem}_{kind}") for folder in folders for stem in stems
          for kind in kinds]


def read_paths(args) -> tuple[str, ...]:
  """Every path the run reads (so that no output ever replaces one)."""
  paths = [args.checkpoint, args.vae, args.text_encoder, args.prompt_embeds, args.depth_model,
           *args.video, *(args.depth or [])]
  paths += [spec.split(":")[0] for spec in args.trajectory if os.path.exists(spec.split(":")[0])]
  return tuple(os.fspath(p) for p in paths if p is not None)
