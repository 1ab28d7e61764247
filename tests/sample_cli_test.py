"""The sampling CLI end to end on the release's real clip and on a synthetic scene with exact
depth, sharded over 8 devices, with and without the progress bar, and its failure modes."""

import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import sentencepiece
from flax import nnx
from PIL import Image

from postcam_jax.convert import t5 as t5_convert
from postcam_jax.convert.postcam import convert_postcam
from postcam_jax.convert.vae import KIND as VAE_KIND
from postcam_jax.data import synthetic
from postcam_jax.evaluation import fidelity
from postcam_jax.inference import cli as sample_cli
from postcam_jax.inference import sampling
from postcam_jax.io import model_dir, video
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder
from postcam_jax.models.vae import WanVAE, WanVAEConfig
from tests.conftest import FIXTURES, REPO, readable_tail

CLIP = os.path.join(FIXTURES, "official-render-tiny", "official-inputs", "test1.mp4")
POSTCAM_CKPT = os.path.join(FIXTURES, "postcam-official-tiny", "postcam.ckpt")
CLIP_FRAMES, CLIP_HW = 41, (480, 832)
TEXT_DIM = 32  # the fixture checkpoint's
# Float32 agreement of two runs of the same sample (sharded vs one device, per-step vs one loop),
# relative to the largest magnitude. The latents and the render: 1e-5, the sampler tests' bound
# (measured 1.2e-6 sharded, 0 per-step). The decoded frames: the tiny random VAE decoder magnifies
# the latents' differences and sums in another order when sharded (measured 1.2e-5 on
# data=2,fsdp=4 with 5 frames, 2.8e-5 with 41), so 1e-4.
SAME_SAMPLE_TOL = {"pred_latent": 1e-5, "render": 1e-5, "pred": 1e-4}
ARRAY_KEYS = ("pred", "pred_latent", "render", "holes", "target_w2c", "source_w2c",
              "intrinsics", "trajectory")


def write_release_depth(folder, num_frames=CLIP_FRAMES, hw=(480, 832)):
  """A depth folder as the release's depth step writes it: a tilted plane seen by a camera that
  drifts right, 16-bit PNGs quantised between the global min and max."""
  h, w = hw
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                           indexing="ij")
  depth = np.stack([2.0 + 1.5 * rows / h + 0.3 * cols / w + 0.01 * t for t in range(num_frames)])
  d_min, d_max = np.float32(depth.min()), np.float32(depth.max())
  q = np.clip((depth - d_min) / (d_max - d_min) * 65535, 0, 65535).astype(np.uint16)
  os.makedirs(os.path.join(folder, "depth"))
  for i, qi in enumerate(q):
    Image.fromarray(qi).save(os.path.join(folder, "depth", f"{i:06d}.png"))
  with open(os.path.join(folder, "metadata.txt"), "w") as f:
    f.write(f"{float(d_min)!r} {float(d_max)!r}\n")
  with open(os.path.join(folder, "extrinsics.txt"), "w") as f:
    for t in range(num_frames):
      w2c = np.hstack([np.eye(3), [[-0.01 * t], [0.0], [0.0]]])
      f.write(np.array2string(w2c, separator=", ", suppress_small=True).replace("\n", "") + "\n")
  k = np.array([[560.0, 0, 416.0], [0, 560.0, 240.0], [0, 0, 1.0]])
  with open(os.path.join(folder, "intrinsics.txt"), "w") as f:
    f.write(np.array2string(k, separator=", ", suppress_small=True).replace("\n", "") + "\n")
  return folder


def save_tiny_vae(directory):
  cfg = WanVAEConfig.tiny()
  params = model_dir.random_params(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  model_dir.save_model(directory, kind=VAE_KIND, config=cfg.to_dict(), params=params)


def save_tiny_text_encoder(directory):
  """The tiny umT5 (width 32 = the fixture's text_dim) with a SentencePiece vocabulary trained
  here on a few captions (EOS 1, pad 0, as umT5's)."""
  cfg = UMT5Config.tiny()
  params = model_dir.random_params(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0), dtype=np.float32,
                                             param_dtype=np.float32))
  model_dir.save_model(directory, kind=t5_convert.KIND, config=cfg.to_dict(), params=params)
  corpus = ["a girl holding a magic wand in front of a glowing star",
            "the camera orbits to the left around the scene"] * 20
  spm = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=spm, vocab_size=30, hard_vocab_limit=False,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
  os.makedirs(os.path.join(directory, t5_convert.TOKENIZER_DIR))
  with open(os.path.join(directory, t5_convert.TOKENIZER_DIR, "spiece.model"), "wb") as f:
    f.write(spm.getvalue())


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("sample_cli")
  convert_postcam(POSTCAM_CKPT, root / "postcam")
  save_tiny_vae(root / "vae")
  save_tiny_text_encoder(root / "t5")
  rng = np.random.default_rng(0)
  # The tiny text encoder's length (16): both CLI runs then share one compiled step.
  np.savez(root / "embeds.npz", context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32),
           negative_context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32))
  write_release_depth(root / "depth")
  return root


def base_args(assets, out, progress=False, **changes):
  """CLI arguments; a value None drops the flag, True passes it alone."""
  args = {"--checkpoint": assets / "postcam", "--vae": assets / "vae", "--video": CLIP,
          "--depth": assets / "depth", "--trajectory": "y_left_30",
          "--prompt-embeds": assets / "embeds.npz", "--out": out, "--size": "64x128",
          "--steps": "2", "--precision": "float32"}
  args.update(changes)
  argv = [] if progress else ["--no-progress"]
  for key, value in args.items():
    if value is True:
      argv.append(key)
    elif value is not None:
      argv += [key, *map(str, value if isinstance(value, list) else [value])]
  return argv


@contextlib.contextmanager
def probing():
  """Records per sample of the CLI calls inside: its Pipeline, the functions XLA compiled while it
  ran (jax.monitoring's backend-compile event, which fires for every compilation, persistent-cache
  hits included) and the entry counts of the sampler's two jit caches after it."""
  runs, names = [], []

  def listener(event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      names.append(str(kwargs.get("fun_name", "")))

  original = sample_cli.Pipeline.run

  def run(self, *args, **kwargs):
    start = len(names)
    result = original(self, *args, **kwargs)
    # pylint: disable=protected-access
    runs.append({"pipe": self, "compiled": names[start:],
                 "loop_cache": sampling._run_steps._cache_size(),
                 "step_cache": sampling.run_one_step._cache_size()})
    return result

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sample_cli.Pipeline, "run", run)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
      yield runs
    finally:
      jax.monitoring.unregister_event_duration_listener(listener)


def relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def assert_same_sample(got, want, what):
  assert set(got) == set(ARRAY_KEYS) == set(want)
  np.testing.assert_array_equal(got["holes"], want["holes"])
  for key, tol in SAME_SAMPLE_TOL.items():
    assert got[key].shape == want[key].shape and got[key].dtype == np.float32
    err = relative_error(got[key], want[key])
    assert err <= tol, f"{what}: '{key}' differs by {err:.3g} (relative; allowed {tol:g})"


def load_arrays(path) -> dict:
  with np.load(path) as data:
    return dict(data)


TRAJECTORIES = ("zoom_in", "arc_left")
# The runs compared with each other feed the model 5 frames (2 latent frames) of the 41-frame clip:
# the sharded VAE is slow on 8 CPU devices, and the comparisons need no more.
FEW_FRAMES = 5


@pytest.fixture(scope="module")
def no_progress(assets, tmp_path_factory):
  """One call, two trajectories, --no-progress (one jitted loop per sample), with the arrays: the
  reference the progress-bar and sharded runs must reproduce."""
  out = tmp_path_factory.mktemp("no_progress") / "out"
  buffer = io.StringIO()
  with probing() as runs, contextlib.redirect_stdout(buffer):
    code = sample_cli.main(base_args(assets, out, **{"--trajectory": list(TRAJECTORIES),
                                                 "--num-frames": FEW_FRAMES,
                                                 "--save-arrays": True}))
  assert code == 0
  return {"out": out, "runs": runs, "printed": buffer.getvalue().split(),
          "arrays": {t: load_arrays(out / f"results_postcam_{t}" / "test1_arrays.npz")
                     for t in TRAJECTORIES}}


def test_cli_end_to_end_on_the_release_clip(assets, tmp_path, capsys):
  # The text encoder path: --prompt, and the release's (Chinese) negative prompt by default.
  out = tmp_path / "out"
  argv = base_args(assets, out, **{"--prompt-embeds": None, "--text-encoder": assets / "t5",
                                   "--prompt": "a girl holding a magic wand"})
  assert sample_cli.main(argv) == 0, capsys.readouterr().err
  names = sorted(os.listdir(out))
  assert names == ["test1_contact_sheet.png", "test1_pred_video.mp4", "test1_render_video.mp4",
                   "test1_source_video.mp4"]
  for kind in ("source", "render", "pred"):
    info = video.video_info(str(out / f"test1_{kind}_video.mp4"))
    assert (info["num_frames"], info["fps"]) == (41, 15.0)
    assert (info["height"], info["width"]) == (64, 128)
  sheet = np.asarray(Image.open(out / "test1_contact_sheet.png"))
  assert sheet.shape == (3 * 64, 6 * 128, 3)
  # The source row is the clip itself (resized); the render has black holes, the source none.
  source = video.read_video(str(out / "test1_source_video.mp4"))
  clip = video.read_video(CLIP)
  assert abs(float(source.mean()) - float(clip.mean())) < 4.0
  rendered = video.read_video(str(out / "test1_render_video.mp4"))
  assert (rendered[-1].max(axis=-1) < 8).mean() > (source[-1].max(axis=-1) < 8).mean() + 0.05


def test_cli_prompt_embeds_and_several_trajectories(no_progress):
  out = no_progress["out"]
  # One folder per trajectory (the release's results_<checkpoint>_<trajectory>).
  assert sorted(os.listdir(out)) == ["results_postcam_arc_left", "results_postcam_zoom_in"]
  for folder in os.listdir(out):
    assert sorted(os.listdir(out / folder)) == [
        "test1_arrays.npz", "test1_contact_sheet.png", "test1_pred_video.mp4",
        "test1_render_video.mp4", "test1_source_video.mp4"]
    assert video.video_info(str(out / folder / "test1_pred_video.mp4"))["num_frames"] == FEW_FRAMES
  printed = no_progress["printed"]
  assert len(printed) == 10 and all(p.startswith(str(out)) for p in printed)
  # The second trajectory reuses the compiled denoising loop (one Pipeline, no new jit cache
  # entry) and compiles nothing at all: same shapes all the way.
  first, second = no_progress["runs"]
  assert first["pipe"] is second["pipe"]
  assert second["loop_cache"] == first["loop_cache"] >= 1
  assert second["compiled"] == [], f"the second trajectory compiled {second['compiled']}"
  a, b = (no_progress["arrays"][t] for t in TRAJECTORIES)
  assert relative_error(a["render"], b["render"]) > 0.1  # two different cameras


def test_cli_progress_bar_equals_no_progress(assets, tmp_path, capsys, no_progress):
  """The default path: a progress bar over the steps (one jitted step per iteration)."""
  out = tmp_path / "out"
  argv = base_args(assets, out, progress=True, **{"--trajectory": list(TRAJECTORIES),
                                                  "--num-frames": FEW_FRAMES,
                                                  "--save-arrays": True})
  with probing() as runs:
    assert sample_cli.main(argv) == 0, capsys.readouterr().err
  err = capsys.readouterr().err
  for trajectory in TRAJECTORIES:
    assert f"test1 {trajectory}: 100%" in err and "2/2" in err, err
    got = load_arrays(out / f"results_postcam_{trajectory}" / "test1_arrays.npz")
    assert_same_sample(got, no_progress["arrays"][trajectory],
                       f"{trajectory} with the progress bar vs --no-progress")
  # The per-step function compiles once, in the first trajectory (no other test here takes this
  # path on one device), for every step; the second trajectory compiles nothing.
  first, second = runs
  assert len([n for n in first["compiled"] if "run_one_step" in n]) == 1, first["compiled"]
  assert second["step_cache"] == first["step_cache"]
  assert second["compiled"] == [], f"the second trajectory compiled {second['compiled']}"


def test_cli_sharded_over_8_devices_equals_one_device(assets, tmp_path, capsys, no_progress):
  """The default path (progress bar on, one jitted step per iteration) on a data x fsdp mesh of
  the 8 CPU devices reproduces the one-device sample."""
  assert jax.device_count() == 8
  out = tmp_path / "out"
  argv = base_args(assets, out, progress=True, **{"--mesh": "data=2,fsdp=4",
                                                  "--trajectory": TRAJECTORIES[0],
                                                  "--num-frames": FEW_FRAMES,
                                                  "--save-arrays": True})
  with probing() as runs:
    assert sample_cli.main(argv) == 0, capsys.readouterr().err
  assert sorted(os.listdir(out)) == ["test1_arrays.npz", "test1_contact_sheet.png",
                                     "test1_pred_video.mp4", "test1_render_video.mp4",
                                     "test1_source_video.mp4"]
  # It really ran sharded: every parameter lives on the 8 devices, the large ones split on fsdp,
  # and the denoising step compiled once for both steps.
  (run,) = runs
  assert dict(run["pipe"].mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}
  params = jax.tree.leaves(run["pipe"].sampler.state)
  assert all(len(p.sharding.device_set) == 8 for p in params)
  split = [p for p in params if p.addressable_shards[0].data.size * 4 == p.size]
  assert len(split) >= len(params) // 4, f"only {len(split)} of {len(params)} parameters split"
  assert len([n for n in run["compiled"] if "run_one_step" in n]) == 1, run["compiled"]
  assert_same_sample(load_arrays(out / "test1_arrays.npz"), no_progress["arrays"][TRAJECTORIES[0]],
                     "--mesh data=2,fsdp=4 vs one device")


def test_cli_on_two_processes_equals_one_device(assets, tmp_path, no_progress):
  """The same command on 2 processes x 4 CPU devices (launch/local.py: jax.distributed, gloo), as
  on a pod slice: process 0 shows the bar and writes the files; the numbers are one device's."""
  out = tmp_path / "out"
  argv = base_args(assets, out, progress=True, **{"--mesh": "data=2,fsdp=4",
                                                  "--trajectory": TRAJECTORIES[0],
                                                  "--num-frames": FEW_FRAMES,
                                                  "--save-arrays": True})
  cmd = [sys.executable, os.path.join(REPO, "launch", "local.py"), "-n", "2", "-d", "4",
         "--timeout", "400", "--", "-m", "postcam_jax.sample", *argv]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=450)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, readable_tail(log)
  assert sorted(os.listdir(out)) == ["test1_arrays.npz", "test1_contact_sheet.png",
                                     "test1_pred_video.mp4", "test1_render_video.mp4",
                                     "test1_source_video.mp4"]
  assert f"[p0] {out / 'test1_arrays.npz'}" in log and f"[p1] {out}" not in log
  assert "[p0] test1 zoom_in: 100%" in log and "[p1] test1 zoom_in" not in log, readable_tail(log)
  assert_same_sample(load_arrays(out / "test1_arrays.npz"), no_progress["arrays"][TRAJECTORIES[0]],
                     "two processes x 4 devices vs one device")


SYNTHETIC = dict(num_scenes=1, num_cameras=2, num_frames=9, height=64, width=128, seed=1)
SYNTHETIC_CAMERA = "cam02"  # an arc: the source camera moves, so the warp needs depth and poses
PSNR_PEAK = 2.0  # pixels in [-1, 1]


def psnr(a, b, mask=None) -> float:
  return fidelity.psnr(a, b, peak=PSNR_PEAK, mask=mask)


def test_cli_on_a_synthetic_scene_with_its_exact_depth(assets, tmp_path, capsys):
  """A generated camera straight into the CLI (its video and its depth/camXX.npz), re-shot from
  where it started: the render must be the true view from there, which the generator knows."""
  config = synthetic.GeneratorConfig(root=str(tmp_path / "multicam"), **SYNTHETIC)
  (scene,) = synthetic.generate(config)
  spec = synthetic.build_scene(config, 0)
  cam, count = SYNTHETIC_CAMERA, config.num_frames
  assert spec.kinds[cam] == "arc"
  # One identity pose: a static camera at the source's frame 0, in the depth's units (metres).
  start = tmp_path / "start.json"
  start.write_text(json.dumps({"convention": "w2c", "units": "depth",
                               "poses": [np.eye(4).tolist()]}))
  out = tmp_path / "out"
  argv = base_args(assets, out, **{"--video": os.path.join(scene, "videos", f"{cam}.mp4"),
                                   "--depth": os.path.join(scene, "depth", f"{cam}.npz"),
                                   "--trajectory": start, "--save-arrays": True})
  assert sample_cli.main(argv) == 0, capsys.readouterr().err
  assert sorted(os.listdir(out)) == sorted(f"{cam}_{kind}" for kind in (
      "arrays.npz", "contact_sheet.png", "pred_video.mp4", "render_video.mp4",
      "source_video.mp4"))
  for kind in ("source", "render", "pred"):
    info = video.video_info(str(out / f"{cam}_{kind}_video.mp4"))
    assert (info["num_frames"], info["fps"], info["height"], info["width"]) == (41, 15.0, 64, 128)
  with np.load(out / f"{cam}_arrays.npz") as data:
    rendered, holes = data["render"], data["holes"]
  # The 41 frames are the clip's 9, then its last one repeated (the release's index rule).
  np.testing.assert_array_equal(rendered[count:], np.repeat(rendered[count - 1:count], 41 - count,
                                                            axis=0))
  truth, _ = synthetic.render_camera(spec.scene, np.repeat(spec.c2w[cam][:1], count, axis=0),
                                     spec.intrinsics, config.height, config.width, config.fps,
                                     config.supersample)
  truth = truth.astype(np.float32) / 127.5 - 1
  source = video.read_video(os.path.join(scene, "videos", f"{cam}.mp4")).astype(np.float32)
  source = source / 127.5 - 1
  moved = slice(1, count)  # frame 0 is the identity warp
  visible = ~holes[moved]
  # Measured: 26.0 dB with the exact depth, 16.9 with the depth 1.3x off, 14.2 with the poses
  # inverted; copying the source gives 15.2.
  assert visible.mean() > 0.75, f"{1 - visible.mean():.2f} of the render is holes"
  got, copy = psnr(rendered[moved], truth[moved], visible), psnr(source[moved], truth[moved])
  assert got >= 23.0 and got >= copy + 8.0, f"render {got:.1f} dB, copying the source {copy:.1f}"


FAILURES = [
    ("missing_depth", {"--depth": None}, "provide --depth DIR in the release's layout"),
    ("unknown_trajectory", {"--trajectory": "y_left_31"}, "unknown trajectory 'y_left_31'"),
    ("frame_count", {"--num-frames": "40"}, "--num-frames must be 4k+1"),
    ("unreadable_video", {"--video": "BAD"}, "unreadable video"),
    ("depth_count", {"--depth": "FEW"}, "holds 40 depth maps but the video has 41 frames"),
    ("depth_size", {"--depth": "SMALL"}, "depth maps are 240x416 (HxW) but the video is 480x832"),
]


@pytest.mark.parametrize("name,changes,message", FAILURES, ids=[f[0] for f in FAILURES])
def test_failure_modes_give_one_message_and_no_output(assets, tmp_path, capsys, name, changes,
                                                      message):
  if changes.get("--video") == "BAD":
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    changes = {"--video": bad}
  if changes.get("--depth") == "FEW":
    changes = {"--depth": write_release_depth(tmp_path / "few", num_frames=40)}
  if changes.get("--depth") == "SMALL":
    changes = {"--depth": write_release_depth(tmp_path / "small", hw=(240, 416))}
  out = tmp_path / "out"
  assert sample_cli.main(base_args(assets, out, **changes)) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err, err
  assert len(err.splitlines()) == 1, err
  assert not out.exists()
  leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".out")]
  assert not leftovers
