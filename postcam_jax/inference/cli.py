"""Re-shoot a real video along a new camera trajectory, as the PostCam release's ``inference.py``.

  python -m postcam_jax.sample --checkpoint DIR --vae DIR --text-encoder DIR \
      --video in.mp4 --depth DEPTH_DIR --trajectory y_left_30 --prompt "..." --out OUT

Per (video, trajectory) it writes ``<stem>_source_video.mp4``, ``<stem>_render_video.mp4``,
``<stem>_pred_video.mp4`` (41 frames, 15 fps, pixels trunc(clip((x + 1) 127.5))) and
``<stem>_contact_sheet.png`` (rows: source, render, prediction); ``--save-arrays`` adds
``<stem>_arrays.npz`` (float32 ``pred`` [41, H, W, 3] in [-1, 1], ``pred_latent`` [F, h, w, 16],
``render`` [41, H, W, 3], bool ``holes`` [41, H, W]: the numbers behind the mp4s; and the cameras
``target_w2c``, ``source_w2c`` [41, 4, 4], ``intrinsics`` [41, 3, 3] float32 and the ``trajectory``
name, which ``python -m postcam_jax.evaluate`` measures the camera against). With several
``--trajectory`` values each trajectory's files go to ``OUT/results_<checkpoint>_<trajectory>/``
(the release's folder name); with one, straight into OUT.

Depth (``--depth``, one per video): a folder in the release's layout (``depth/NNNNNN.png`` 16-bit,
``metadata.txt``, ``extrinsics.txt``, ``intrinsics.txt``: what its depth step writes), or an
``.npz`` with ``depth`` [N, h, w] z-depth, ``intrinsics`` [3, 3] in depth-map pixels and
``extrinsics`` [N, 3, 4] or [N, 4, 4] world-to-camera source poses in OpenCV axes (any world: they
are made relative to frame 0, E_i inv(E_0), as the release does); see
``postcam_jax.inference.inputs``. A scene of the synthetic generator
(``postcam_jax.data.synthetic``) carries exact depth in that schema: ``--video
SCENE/videos/cam01.mp4 --depth SCENE/depth/cam01.npz``.

Without ``--depth``, ``--depth-model DIR`` (a converted Depth Anything 3, ``tools/convert_weights.py
da3``) estimates each video's depth and poses in-process as the release's depth step does
(``postcam_jax.depth``): the folder is written to a temporary place and read back like a
``--depth`` folder, so the model gets exactly what the release's step 3 reads (the 16-bit
quantised depth, the 8-decimal poses). ``--save-depth DIR`` (one per video) keeps those folders,
``images/`` included, to pass as ``--depth`` with other trajectories; they appear only when the
whole run succeeds, like every other output.

Pipeline (``postcam-release-inputs.md`` §2, §4, §11): video + depth + trajectory ->
``postcam_jax.inference.inputs.load_release_inputs`` (41 frames resized to cover and
centre-cropped, K, poses, scale calibration) -> ``postcam_jax.geometry.render.forward_warp`` and
the 4x downsample -> VAE encode of the source and the render -> text states -> the denoising loop
of ``postcam_jax.inference.sampling`` (release defaults: Euler, 50 steps, shift 5, CFG 5 on the
text, Wan's Chinese negative prompt) -> VAE decode.

Every input is checked before any model is loaded (``postcam_jax.inference.checks``: depth
folders numbered 0..T-1 with T the video's frame count and every PNG decodable, trajectories,
prompt embeddings, model directories, output paths, two inputs that would write one file), and
files are written to a staging folder that is moved into place only when every video is done: a
failure, SIGTERM or Ctrl-C prints one line and leaves no output file. Files of ``--out`` that the
run would write again are replaced only with ``--overwrite``, and never a file the run reads.
A non-finite weight in a model directory is refused at load, naming it. Several
videos/trajectories reuse one compiled denoising step (same shapes).
``--mesh data=2,fsdp=4`` shards the DiT and the CFG batch over the devices
(``postcam_jax.parallel``); without it everything runs on one device. The same command runs on
CPU, GPU or TPU. On several hosts (a pod slice) the same command runs on every host: the
multi-host start-up of ``postcam_jax.parallel.distributed`` (``--coordinator``/``--num-processes``/
``--process-id``, the ``POSTCAM_*`` variables of ``launch/local.py``, or the cluster's own
metadata under ``launch/tpu_pod.sh`` / ``launch/slurm_gpu.sbatch``) runs first, the mesh spans
every host's devices, and process 0 writes the files.

``--prompt-embeds FILE.npz`` replaces the text encoder: ``context`` [L, text_dim] (or
[1, L, text_dim]) and optionally ``negative_context`` (otherwise the negative prompt is encoded
with ``--text-encoder``, or guidance must be 1).
"""

import argparse
import contextlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image
from tqdm import tqdm

from postcam_jax.core import atomic, cli
from postcam_jax.depth import cli as depth_cli
from postcam_jax.depth import release as depth_release
from postcam_jax.geometry import render, trajectories
from postcam_jax.inference import checks, inputs, sampling
from postcam_jax.inference.checks import SampleError, output_folder, parse_size
from postcam_jax.io import model_dir, video
from postcam_jax.parallel import distributed

# The release's negative prompt: Wan2.1's standard Chinese ``sample_neg_prompt`` (wan2.1.md 3.3).
RELEASE_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
OUTPUT_FPS = 15          # the release writes 15 fps whatever the input's rate
OUTPUT_CRF = 25          # imageio quality 5 -> libx264 crf int((1 - 5/10) 51) = 25
CONTACT_COLUMNS = 6
# A bad input is one line (exit 2); anything else is a bug and keeps its traceback.
USER_ERRORS = (SampleError, inputs.InputError, video.VideoReadError, atomic.OutputError,
               model_dir.ModelDirError, depth_release.ReleaseFolderError,
               depth_cli.DepthCliError)


# ----------------------------------------------------------------------------------------------
# Arguments and validation (nothing heavy is loaded here).

def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m postcam_jax.sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="converted PostCam model directory")
  p.add_argument("--vae", required=True, help="converted Wan-VAE directory")
  p.add_argument("--text-encoder", default=None, help="converted umT5 directory (with tokenizer)")
  p.add_argument("--video", required=True, nargs="+", help="source mp4(s)")
  p.add_argument("--depth", nargs="+", default=None,
                 help="per video: a depth folder in the release's layout (depth/*.png, "
                      "metadata.txt, extrinsics.txt, intrinsics.txt) or a .npz (depth [N, h, "
                      "w], intrinsics [3, 3], extrinsics [N, 3|4, 4] world-to-camera, OpenCV; "
                      "a synthetic scene's depth/camXX.npz)")
  p.add_argument("--depth-model", default=None, metavar="DIR",
                 help="instead of --depth: estimate each video's depth and poses with this "
                      "converted Depth Anything 3 model (tools/convert_weights.py da3), as the "
                      "release's depth step (python -m postcam_jax.depth) writes them")
  p.add_argument("--save-depth", nargs="+", default=None, metavar="DIR",
                 help="with --depth-model: keep each video's estimated depth folder in DIR (one "
                      "per video; must not exist), for --depth with other trajectories")
  depth_cli.add_cubic_argument(p, "--depth-cubic")
  p.add_argument("--trajectory", required=True, nargs="+",
                 help="y_left_30 (any shipped name), a basic name (arc_left, ...), file.txt, "
                      "poses.json, or camera_extrinsics.json:INDEX")
  p.add_argument("--prompt", nargs="+", default=None, help="one prompt, or one per video")
  p.add_argument("--negative-prompt", default=RELEASE_NEGATIVE_PROMPT,
                 help="default: Wan2.1's standard Chinese negative prompt (the release's)")
  p.add_argument("--prompt-embeds", default=None,
                 help=".npz with 'context' [L, text_dim] and optional 'negative_context'; "
                      "skips the text encoder for the prompt")
  p.add_argument("--out", required=True,
                 help="output folder (created if needed; other files in it are kept)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace files of --out that this run writes again (never an input); "
                      "without it an existing one is an error")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--guidance", type=float, default=5.0)
  p.add_argument("--shift", type=float, default=5.0)
  p.add_argument("--solver", default="euler", choices=("euler", "unipc"))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--size", default="480x832", help="HxW of the model input (multiples of 32)")
  p.add_argument("--num-frames", type=int, default=41, help="frames fed to the model (4k+1)")
  p.add_argument("--radius-ratio", type=float, default=1.0)
  p.add_argument("--precision", default="release", choices=("release", "mixed", "float32"),
                 help="release: all bf16 as the release samples; float32: exact")
  p.add_argument("--mesh", default=None,
                 help="shard over devices, e.g. 'data=2,fsdp=4' or 'auto' (all devices on fsdp)")
  p.add_argument("--decode-tile", type=int, default=None,
                 help="decode in overlapping spatial tiles of this many latent pixels")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  p.add_argument("--save-arrays", action="store_true",
                 help="also write <stem>_arrays.npz: pred, pred_latent, render (float32), "
                      "holes (bool), and the cameras (target_w2c, source_w2c, intrinsics, "
                      "trajectory) for python -m postcam_jax.evaluate")
  distributed.add_arguments(p)
  return p


def load_pair(args, video_path, depth_path, trajectory):
  """One (video, depth, trajectory) prepared as the release does
  (``postcam_jax.inference.inputs``)."""
  return inputs.load_release_inputs(video_path, depth_path, trajectory,
                                    sample_hw=parse_size(args.size), num_frames=args.num_frames,
                                    radius_ratio=args.radius_ratio)


def check_inputs(args, pairs):
  """Decode every video with its depth (counts, sizes, d_min) and resolve every trajectory for
  it, before any model is loaded. Returns the first video's prepared inputs for the first
  trajectory (the first one sampled), so a single-video call prepares it once."""
  first = None
  for video_path, depth_path in pairs:
    prepared = load_pair(args, video_path, depth_path, args.trajectory[0])
    for spec in args.trajectory[1:]:
      trajectories.load_trajectory(spec, prepared.num_source_frames, prepared.d_min,
                                   args.radius_ratio)
    first = prepared if first is None else first
  return first


# ----------------------------------------------------------------------------------------------
# Pixels and pictures.

def to_uint8(x) -> np.ndarray:
  """The release's pixel conversion: trunc(clip((x + 1) 127.5, 0, 255)) in float32."""
  x = np.asarray(x, np.float32)
  return np.clip((x + np.float32(1.0)) * np.float32(127.5), 0, 255).astype(np.uint8)


def contact_sheet(rows: list[np.ndarray], columns: int = CONTACT_COLUMNS,
                  max_width: int = 256) -> np.ndarray:
  """uint8 [rows x h, columns x w, 3]: ``columns`` evenly spaced frames of each [T, H, W, 3] row,
  each frame shrunk to at most ``max_width`` pixels wide."""
  t, h, w, _ = rows[0].shape
  scale = min(1.0, max_width / w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  picks = np.round(np.linspace(0, t - 1, min(columns, t))).astype(int)
  tiles = [[np.asarray(Image.fromarray(row[i]).resize(size, Image.BILINEAR)) for i in picks]
           for row in rows]
  return np.concatenate([np.concatenate(r, axis=1) for r in tiles], axis=0)


# ----------------------------------------------------------------------------------------------
# Models.

class Pipeline:
  """The loaded models and the compiled step, reused for every (video, trajectory)."""

  def __init__(self, args):
    self.args = args
    self.mesh = depth_cli.make_mesh(args.mesh)
    self.model = model_dir.load_postcam(args.checkpoint, precision=args.precision,
                                          dtype=None, mesh=self.mesh)
    self.cfg = self.model.cfg
    vae_dtype = jnp.bfloat16 if args.precision == "release" else jnp.float32
    self.vae = model_dir.load_vae(args.vae, dtype=vae_dtype, mesh=self.mesh)
    self.sampler = sampling.Sampler(self.model)
    self.text = None
    if args.text_encoder is not None:
      self.text = model_dir.load_text_encoder(args.text_encoder, mesh=self.mesh)

  def encode_prompt(self, prompt: str) -> np.ndarray:
    states, _ = self.text.encode_text([prompt])
    states = np.asarray(states, np.float32)
    if states.shape[-1] != self.cfg.text_dim:
      raise SampleError(f"the text encoder's width {states.shape[-1]} does not match the "
                        f"checkpoint's text_dim {self.cfg.text_dim}")
    return states

  def encode_video(self, frames) -> "jax.Array":
    """[T, H, W, 3] in [-1, 1] -> latent [1, F, h, w, z], the frames cast to bf16 first as the
    release feeds its VAE."""
    clip = jnp.asarray(frames, jnp.float32).astype(jnp.bfloat16)[None]
    return self.vae.encode(clip.astype(self.vae.dtype))

  def run(self, pair, context, negative, progress=None):
    """One sample: uint8 (source, render, prediction) videos [T, H, W, 3], and the numbers behind
    them as host arrays (``pred``, ``pred_latent``, ``render`` float32, ``holes`` bool)."""
    args = self.args
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      warped, holes = render.forward_warp(pair.frames, pair.depth, pair.source_w2c,
                                          pair.target_w2c, pair.intrinsics)
      source_latents = self.encode_video(pair.frames)
      render_latents = self.encode_video(render.downsample4x(warped))
      noise = sampling.make_noise(args.seed, source_latents.shape)
      latent = self.sampler.sample(
          noise=noise, source_latents=source_latents, camera=jnp.asarray(pair.camera)[None],
          render_latents=render_latents, context=context, negative_context=negative,
          num_steps=args.steps, guidance_scale=args.guidance, shift=args.shift,
          solver=args.solver, progress=progress)
      decoded = self.vae.decode(latent.astype(self.vae.dtype), tile=args.decode_tile)
    arrays = {"pred": _host(decoded)[0], "pred_latent": _host(latent)[0],
              "render": _host(warped), "holes": _host(holes, bool),
              "target_w2c": np.asarray(pair.target_w2c, np.float32),
              "source_w2c": np.asarray(pair.source_w2c, np.float32),
              "intrinsics": np.asarray(pair.intrinsics, np.float32),
              "trajectory": np.asarray(pair.trajectory)}
    source = np.asarray(pair.frames, np.float32).astype(jnp.bfloat16).astype(np.float32)
    videos = (to_uint8(source), to_uint8(arrays["render"]), to_uint8(arrays["pred"]))
    return videos, arrays


def _host(x, dtype=np.float32) -> np.ndarray:
  """A (possibly sharded, possibly multi-host) array as one host numpy array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0), dtype)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True), dtype)
  return np.asarray(x, dtype)


# ----------------------------------------------------------------------------------------------
# Main.

def write_outputs(folder, stem, source, rendered, predicted, arrays=None):
  """The three mp4s (15 fps, the release's crf) and the contact sheet of one sample; with
  ``arrays``, also ``<stem>_arrays.npz``."""
  os.makedirs(folder, exist_ok=True)
  for name, frames in (("source", source), ("render", rendered), ("pred", predicted)):
    video.write_video(os.path.join(folder, f"{stem}_{name}_video.mp4"), frames, fps=OUTPUT_FPS,
                      crf=OUTPUT_CRF)
  sheet = contact_sheet([source, rendered, predicted])
  Image.fromarray(sheet).save(os.path.join(folder, f"{stem}_contact_sheet.png"))
  if arrays is not None:
    np.savez(os.path.join(folder, f"{stem}_arrays.npz"), **arrays)


def run(args) -> list[str]:
  """Validate, sample every (video, trajectory), write the outputs; returns the written paths."""
  try:  # the checks read only the user's inputs: any ValueError there is about one of them
    plan = checks.validate(args)
  except SampleError:
    raise
  except (ValueError, FileNotFoundError) as e:
    raise SampleError(str(e)) from e
  if args.depth_model is not None:
    return run_with_estimated_depth(args, plan)
  return sample_all(args, plan)


def estimate_depth_folders(args, videos: list[str], holders: list[str]) -> list[str]:
  """Each video's depth folder as ``python -m postcam_jax.depth`` writes it, made with
  ``--depth-model`` into ``holders[i]/depth`` (with ``images/`` where it is to be kept)."""
  mesh = depth_cli.make_mesh(args.mesh)
  model = depth_cli.load_model(args.depth_model, mesh)
  folders = []
  for path, holder in zip(videos, holders):
    frames = depth_cli.read_release_frames(path)
    result = depth_cli.estimate_release_depth(model, frames, mesh=mesh, cubic=args.depth_cubic)
    keep = args.save_depth is not None
    folders.append(depth_release.write_release_folder(
        os.path.join(holder, "depth"), result, frames if keep else None,
        progress=not args.no_progress))
  return folders


def run_with_estimated_depth(args, plan) -> list[str]:
  """--depth-model: estimate every video's depth folder, sample with them as --depth folders,
  then move the --save-depth ones into place (only when everything succeeded)."""
  videos = [v for v, _ in plan.pairs]
  targets = args.save_depth or [None] * len(videos)
  with contextlib.ExitStack() as stack:  # removed on any exit, SIGTERM and Ctrl-C included
    holders = [stack.enter_context(atomic.scratch_dir(target or args.out)) for target in targets]
    folders = estimate_depth_folders(args, videos, holders)
    written = sample_all(args, checks.Plan(list(zip(videos, folders)), plan.prompts,
                                           plan.context, plan.negative, plan.outputs,
                                           plan.inputs))
    if jax.process_index() == 0:
      for folder, target in zip(folders, targets):
        if target is not None:
          target = depth_release.check_output_path(target)
          os.replace(folder, target)
          written.append(target)
    return written


def sample_all(args, plan) -> list[str]:
  """Sample every (video, depth) pair along every trajectory and publish the outputs."""
  try:  # decoding every video with its depth and trajectories: still only the user's inputs
    first = check_inputs(args, plan.pairs)
  except (ValueError, FileNotFoundError) as e:
    if isinstance(e, USER_ERRORS):
      raise
    raise SampleError(str(e)) from e
  pipe = Pipeline(args)
  context, negative = plan.context, plan.negative
  guided = args.guidance != 1.0
  if guided and negative is None:
    negative = pipe.encode_prompt(args.negative_prompt)
  # Staged beside --out, published file by file when every sample is done; nothing on failure.
  files = atomic.AtomicFiles(args.out, args.overwrite, inputs=plan.inputs)
  with files as staging:
    for (video_path, depth_path), prompt in zip(plan.pairs, plan.prompts):
      ctx = context if context is not None else pipe.encode_prompt(prompt)
      for trajectory in args.trajectory:
        # The loop starts with the first video and trajectory: check_inputs prepared it.
        pair = first if first is not None else load_pair(args, video_path, depth_path,
                                                         trajectory)
        first = None
        bar = _progress(args, f"{pair.name} {pair.trajectory}")
        try:
          videos, arrays = pipe.run(pair, ctx, negative if guided else None,
                                    progress=_step_done(bar) if bar is not None else None)
        finally:  # also on a signal: an error line then starts on a line of its own
          if bar is not None:
            bar.close()
        if jax.process_index() == 0:  # multi-host: one process writes
          write_outputs(os.path.join(staging, output_folder(args, trajectory)), pair.name,
                        *videos, arrays=arrays if args.save_arrays else None)
  return [os.path.join(args.out, os.path.relpath(p, files.folder)) for p in files.published]


def _step_done(bar):
  """The per-step callback: the bar moves, and a signal whose exception Python dropped (it can
  land in JAX's garbage-collection callback) stops the run here rather than at the end."""
  def done(step):
    del step
    atomic.raise_if_signalled()
    bar.update(1)
  return done


def _progress(args, description):
  """The progress bar, or None with --no-progress. Every process of a multi-host run must take
  the same (per-step) sampling path, so each gets a bar; only process 0's is shown."""
  if args.no_progress:
    return None
  return tqdm(total=args.steps, desc=description, unit="step", file=sys.stderr,
              disable=jax.process_index() != 0)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)

  def go() -> int:
    try:  # multi-host start-up first: nothing may touch a device before it
      distributed.initialize_from_args(args)
    except ValueError as e:
      raise SampleError(str(e)) from e
    for path in run(args):
      print(path)
    return 0

  return cli.run(go, USER_ERRORS)


if __name__ == "__main__":
  sys.exit(main())
