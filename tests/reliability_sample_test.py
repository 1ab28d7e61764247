"""``python -m postcam_jax.sample`` against bad inputs, reruns and signals: every input checked
before any model is loaded (depth numbering, decodable PNGs, depth count, prompt embeddings,
trajectories, model kinds, output paths, duplicate output names), a NaN weight refused at load,
existing outputs replaced only with --overwrite and never an input, and SIGTERM / Ctrl-C during
sampling (real subprocesses) leaving no staging folder. Every refusal is one line, exit 2."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx
from tqdm import tqdm

from postcam_jax.convert.postcam import convert_postcam
from postcam_jax.convert.vae import KIND as VAE_KIND
from postcam_jax.core import atomic
from postcam_jax.inference import cli as sample_cli
from postcam_jax.io import model_dir
from postcam_jax.models.vae import WanVAE, WanVAEConfig
from tests.atomic_test import SignalInDel
from tests.conftest import REPO
from tests.sample_cli_test import (
  CLIP,
  POSTCAM_CKPT,
  TEXT_DIM,
  save_tiny_vae,
  write_release_depth,
)

HOST = atomic._HOST  # pylint: disable=protected-access (staging names of other processes)

DEADLINE = 300  # seconds for a sampling subprocess on a loaded 2-core machine


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("reliability_sample")
  convert_postcam(POSTCAM_CKPT, root / "postcam")
  save_tiny_vae(root / "vae")
  rng = np.random.default_rng(0)
  np.savez(root / "embeds.npz", context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32),
           negative_context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32))
  write_release_depth(root / "depth")
  return root


def argv_for(assets, out, **changes):
  args = {"--checkpoint": assets / "postcam", "--vae": assets / "vae", "--video": CLIP,
          "--depth": assets / "depth", "--trajectory": "y_left_30",
          "--prompt-embeds": assets / "embeds.npz", "--out": out, "--size": "64x128",
          "--steps": "1", "--num-frames": "5", "--precision": "float32", "--no-progress": True}
  args.update(changes)
  argv = []
  for key, value in args.items():
    if value is True:
      argv.append(key)
    elif value is not None:
      argv += [key, *map(str, value if isinstance(value, list) else [value])]
  return argv


def refused(assets, out, capsys, needle, **changes):
  """The CLI exits 2 with one line holding ``needle``; returns that line."""
  code = sample_cli.main(argv_for(assets, out, **changes))
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err
  return err


def copy_depth(assets, tmp_path, name="depth"):
  return shutil.copytree(assets / "depth", tmp_path / name)


def test_depth_folder_with_a_gap_in_its_numbering(assets, tmp_path, capsys):
  depth = copy_depth(assets, tmp_path)
  os.remove(depth / "depth" / "000005.png")
  refused(assets, tmp_path / "out", capsys, "no depth map for frame 5 (000005.png)",
          **{"--depth": depth})
  assert sorted(os.listdir(tmp_path)) == ["depth"]


def test_depth_folder_with_a_corrupt_png(assets, tmp_path, capsys):
  depth = copy_depth(assets, tmp_path)
  (depth / "depth" / "000010.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
  refused(assets, tmp_path / "out", capsys, "000010.png: not a readable PNG",
          **{"--depth": depth})


def test_depth_folder_of_more_frames_than_the_video(assets, tmp_path, capsys):
  depth = write_release_depth(tmp_path / "long", num_frames=42)
  refused(assets, tmp_path / "out", capsys, "holds 42 depth maps but the video has 41 frames",
          **{"--depth": depth})


@pytest.mark.parametrize("where,needle", [("file", "is a file, not a folder"),
                                          ("under", "which is a file, not a folder")])
def test_out_that_is_or_lies_under_a_file_is_refused_first(assets, tmp_path, capsys, where,
                                                           needle):
  (tmp_path / "results").write_text("mine")
  out = tmp_path / "results" if where == "file" else tmp_path / "results" / "out"
  refused(assets, out, capsys, needle)
  assert os.listdir(tmp_path) == ["results"] and (tmp_path / "results").read_text() == "mine"


def test_two_videos_with_one_name_are_refused(assets, tmp_path, capsys):
  other = tmp_path / "b"
  other.mkdir()
  shutil.copy(CLIP, other / "test1.mp4")
  refused(assets, tmp_path / "out", capsys,
          f"--video {CLIP} and {other / 'test1.mp4'} would both write test1_*.mp4",
          **{"--video": [CLIP, other / "test1.mp4"], "--depth": [assets / "depth"] * 2})


def test_one_trajectory_twice_is_refused(assets, tmp_path, capsys):
  refused(assets, tmp_path / "out", capsys, "--trajectory zoom_in and zoom_in would both write",
          **{"--trajectory": ["zoom_in", "arc_left", "zoom_in"]})


def test_bad_prompt_embeddings_and_trajectories(assets, tmp_path, capsys):
  context = np.ones((16, TEXT_DIM), np.float32)
  context[3, 4] = np.nan
  np.savez(tmp_path / "nan.npz", context=context, negative_context=np.ones_like(context))
  refused(assets, tmp_path / "out", capsys, "'context' holds NaN or Inf",
          **{"--prompt-embeds": tmp_path / "nan.npz"})
  np.savez(tmp_path / "wide.npz", context=np.ones((16, TEXT_DIM + 1), np.float32))
  refused(assets, tmp_path / "out", capsys, f"'context' must be [L, {TEXT_DIM}]",
          **{"--prompt-embeds": tmp_path / "wide.npz"})
  (tmp_path / "text.npz").write_text("not an archive")
  refused(assets, tmp_path / "out", capsys, "not a readable .npz",
          **{"--prompt-embeds": tmp_path / "text.npz"})
  (tmp_path / "path.txt").write_text("0 0 0 0\n0 10 20 nan\n1 1 1 1\n")
  refused(assets, tmp_path / "out", capsys, "holds a non-finite value",
          **{"--trajectory": tmp_path / "path.txt"})
  refused(assets, tmp_path / "out", capsys, "holds a 'postcam' model, expected 'wan_vae'",
          **{"--vae": assets / "postcam"})
  assert "out" not in os.listdir(tmp_path)


def test_nan_weight_is_refused_at_load(assets, tmp_path, capsys):
  params = model_dir.random_params(lambda: WanVAE(WanVAEConfig.tiny(), rngs=nnx.Rngs(0)))
  key = sorted(k for k in params if k.startswith("decoder") and k.endswith("kernel"))[0]
  params[key].reshape(-1)[5] = np.nan
  model_dir.save_model(tmp_path / "vae", kind=VAE_KIND, config=WanVAEConfig.tiny().to_dict(),
                       params=params)
  err = refused(assets, tmp_path / "out", capsys, f"parameter {key}[",
                **{"--vae": tmp_path / "vae"})
  assert "is NaN or Inf" in err
  assert sorted(os.listdir(tmp_path)) == ["vae"]


def test_existing_outputs_need_overwrite_which_never_replaces_an_input(assets, tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "test1_pred_video.mp4").write_bytes(b"an earlier result")
  (out / "notes.txt").write_text("mine")
  refused(assets, out, capsys, f"output {out / 'test1_pred_video.mp4'} exists; pass --overwrite")
  # An input among the outputs (the embeddings saved where --save-arrays writes its arrays).
  shutil.copy(assets / "embeds.npz", out / "test1_arrays.npz")
  refused(assets, out, capsys, f"output {out / 'test1_arrays.npz'} is the input",
          **{"--prompt-embeds": out / "test1_arrays.npz", "--save-arrays": True,
             "--overwrite": True})
  assert (out / "test1_pred_video.mp4").read_bytes() == b"an earlier result"
  # A run killed by kill -9 left its staging; the next run into the same place removes it.
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = tmp_path / f".out.partial-{HOST}-{dead.pid}-abcd_123"
  stale.mkdir()
  (stale / "test1_pred_video.mp4").write_bytes(b"half a video")
  # With --overwrite the run's own files are replaced; other files stay.
  assert sample_cli.main(argv_for(assets, out, **{"--overwrite": True})) == 0
  assert f"removed {stale}, left by an interrupted run" in capsys.readouterr().err
  assert sorted(os.listdir(out)) == ["notes.txt", "test1_arrays.npz", "test1_contact_sheet.png",
                                     "test1_pred_video.mp4", "test1_render_video.mp4",
                                     "test1_source_video.mp4"]
  assert (out / "test1_pred_video.mp4").read_bytes() != b"an earlier result"
  assert sorted(os.listdir(tmp_path)) == ["out"]


def staging_folders(parent) -> list[str]:
  return [n for n in os.listdir(parent) if ".partial-" in n]


@pytest.mark.parametrize("sig,code,line", [
    (signal.SIGTERM, 143, "error: stopped by SIGTERM; unfinished outputs were removed"),
    (signal.SIGINT, 130, "error: interrupted (Ctrl-C); unfinished outputs were removed"),
], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_sampling_leaves_no_staging(assets, tmp_path, sig, code, line):
  """The sampler as a subprocess, signalled once its outputs are being staged (the model is
  loaded and the denoising loop compiles or runs): one line, its exit status, nothing left."""
  out = tmp_path / "out"
  argv = argv_for(assets, out, **{"--steps": "400", "--no-progress": None})
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen([sys.executable, "-m", "postcam_jax.sample", *argv], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + DEADLINE
  while time.time() < deadline and proc.poll() is None and not staging_folders(tmp_path):
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=DEADLINE)
  assert proc.returncode == code, err[-3000:]
  assert line in err.splitlines(), err[-3000:]
  assert "Traceback" not in err
  assert os.listdir(tmp_path) == [], "staging or output left behind"


def test_a_signal_whose_exception_python_dropped_stops_at_the_next_step(tmp_path, monkeypatch):
  """CI once saw the Ctrl-C of the test above raised inside JAX's garbage-collection callback,
  where Python drops it: the sampler ran all 400 steps and published. The step callback asks
  again, so the run stops at its next step (and the commit would refuse anyway)."""
  monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
  bar = tqdm(total=3, file=io.StringIO())
  step = sample_cli._step_done(bar)  # pylint: disable=protected-access
  with pytest.raises(KeyboardInterrupt):
    with atomic.AtomicFiles(tmp_path / "out"):
      step(0)
      SignalInDel(signal.SIGINT)  # the exception is dropped in __del__
      step(1)
  assert bar.n == 1 and os.listdir(tmp_path) == []
