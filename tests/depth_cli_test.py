"""``python -m postcam_jax.depth`` and the sampler's ``--depth-model``: bad input first (one line,
exit status 2, nothing written), then end to end with a random DA3 converted by
``tools/convert_weights.py da3``."""

import contextlib
import dataclasses
import io
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from postcam_jax.core import atomic
from postcam_jax.depth import cli as depth_cli
from postcam_jax.depth import release
from postcam_jax.inference import inputs
from postcam_jax.io import model_dir, video
from tests.conftest import REPO


def write_clip(path, num_frames: int, hw=(48, 80), seed=0):
  """A small mp4 of smooth moving colour ramps."""
  h, w = hw
  rows, cols = np.mgrid[0:h, 0:w]
  frames = [np.stack([(rows * 4 + t * 9) % 256, (cols * 3 + t * 5) % 256,
                      np.full((h, w), (seed * 40 + t * 17) % 256)], axis=-1).astype(np.uint8)
            for t in range(num_frames)]
  video.write_video(str(path), np.stack(frames), fps=15)
  return path


def fake_model_dir(path, kind):
  """A folder whose model.json names ``kind`` (the CLI checks the kind before loading)."""
  os.makedirs(path)
  with open(os.path.join(path, model_dir.MODEL_JSON), "w") as f:
    json.dump({"kind": kind, "config": {}}, f)
  return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_inputs")
  return {"clip": write_clip(root / "clip.mp4", 3), "one_frame": write_clip(root / "one.mp4", 1),
          "da3": fake_model_dir(root / "da3", model_dir.DA3_KIND),
          "postcam": fake_model_dir(root / "postcam", "postcam"),
          "no_json": root / "empty", "file": root / "file.txt", "garbage": root / "garbage.mp4"}


BAD = [
    ("unreadable_video", {"--video": "garbage"}, "error: unreadable video: "),
    ("missing_video", {"--video": "absent"}, "does not exist"),
    ("too_short_video", {"--video": "one_frame"},
     "video too short: {one_frame} decodes to 1 frame(s); the depth step needs at least 2"),
    ("wrong_kind", {"--model": "postcam"},
     "holds a 'postcam' model, not Depth Anything 3; convert Depth Anything 3 weights first"),
    ("not_a_model_dir", {"--model": "no_json"}, "is not a converted model directory (no "
                                               "model.json)"),
    ("missing_model", {"--model": "absent"}, "no such folder; convert Depth Anything 3"),
    ("out_is_a_file", {"--out": "file"}, "is a file, not a folder"),
    ("out_exists", {"--out": "da3"}, "exists; pass --overwrite to replace it"),
    ("da3_tmp_is_a_file", {"--da3-tmp": "file"}, "is a file, not a folder"),
    ("bad_mesh", {"--mesh": "data=3"}, "--mesh data=3: mesh data=3,fsdp=1,tensor=1,sequence=1 "
                                       "needs 3 devices, 8 are available"),
]


@pytest.mark.parametrize("name,changes,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_one_line_and_status_2(bad_inputs, tmp_path, capsys, name, changes,
                                               message):
  (bad_inputs["no_json"]).mkdir(exist_ok=True)
  bad_inputs["file"].write_text("not a folder")
  bad_inputs["garbage"].write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
  args = {"--model": bad_inputs["da3"], "--video": bad_inputs["clip"], "--out": tmp_path / "out"}
  for key, value in changes.items():
    args[key] = (tmp_path / "absent" if value == "absent" else
                 bad_inputs[value] if value in bad_inputs else value)
  argv = [str(x) for item in args.items() for x in item]
  assert depth_cli.main(argv) == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert captured.out == "" and len(err.splitlines()) == 1, err
  assert err.startswith("error: ") and message.format(**bad_inputs) in err, err
  assert "Traceback" not in err
  assert sorted(os.listdir(tmp_path)) == [], "nothing may be written"


def test_cv2_kernel_without_opencv_gives_one_line(bad_inputs, tmp_path, capsys, monkeypatch):
  """--cubic cv2 (depth) and --depth-cubic cv2 (sample) name the extra to install, before any
  video is decoded or model loaded, when OpenCV is not importable."""
  from postcam_jax.inference import cli as sample_cli  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "cv2", None)  # "import cv2" raises ImportError
  fix = "cubic kernel 'cv2' needs OpenCV: pip install 'postcam-jax[exact]'"
  argv = ["--model", str(bad_inputs["da3"]), "--video", str(bad_inputs["clip"]), "--out",
          str(tmp_path / "out"), "--cubic", "cv2"]
  assert depth_cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and fix in err and len(err.splitlines()) == 1, err
  argv = ["--checkpoint", str(tmp_path / "no_ckpt"), "--vae", str(tmp_path / "no_vae"),
          "--video", str(bad_inputs["clip"]), "--trajectory", "y_left_30", "--prompt", "x",
          "--out", str(tmp_path / "out"), "--depth-model", str(bad_inputs["da3"]),
          "--depth-cubic", "cv2", "--no-progress"]
  assert sample_cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and fix in err and len(err.splitlines()) == 1, err
  assert os.listdir(tmp_path) == [], "nothing may be written"


def test_help_explains_the_command(capsys, monkeypatch):
  """``python -m postcam_jax.depth --help`` (the package's __main__, run as python -m runs it)."""
  monkeypatch.setattr(sys, "argv", ["python -m postcam_jax.depth", "--help"])
  with pytest.raises(SystemExit) as exit_info:
    runpy.run_module("postcam_jax.depth", run_name="__main__", alter_sys=True)
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for word in ("--model", "--video", "--out", "--overwrite", "--mesh", "--da3-tmp", "--cubic",
               "tools/convert_weights.py", "metadata.txt", "python -m postcam_jax.sample"):
    assert word in text, word


SAMPLER_BAD = [
    ("depth_and_depth_model", {"--depth": "clip_dir"}, "give --depth (depth folders or .npz "
                                                       "files) or --depth-model"),
    ("save_without_model", {"--depth-model": None, "--depth": "clip_dir"},
     "--save-depth keeps the depth that --depth-model estimates"),
    ("model_of_another_kind", {"--depth-model": "postcam"},
     "holds a 'postcam' model, not Depth Anything 3"),
    ("save_count", {"--save-depth": ["fresh_a", "fresh_b"]},
     "--save-depth needs one folder per --video: 1 videos, 2 folders"),
    ("save_exists", {"--save-depth": "da3"}, "exists (a folder); pass it as --depth to reuse it"),
]


@pytest.mark.parametrize("name,changes,message", SAMPLER_BAD, ids=[b[0] for b in SAMPLER_BAD])
def test_sampler_depth_model_arguments_are_checked_first(bad_inputs, tmp_path, capsys, name,
                                                         changes, message):
  """Checked before any model is loaded (the checkpoints here do not even exist)."""
  from postcam_jax.inference import cli as sample_cli  # pylint: disable=import-outside-toplevel
  names = {"clip_dir": tmp_path / "depth_dir", "fresh_a": tmp_path / "a",
           "fresh_b": tmp_path / "b", **bad_inputs}
  names["clip_dir"].mkdir()
  args = {"--checkpoint": tmp_path / "no_ckpt", "--vae": tmp_path / "no_vae",
          "--video": bad_inputs["clip"], "--trajectory": "y_left_30", "--prompt": "x",
          "--text-encoder": tmp_path / "no_t5", "--out": tmp_path / "out",
          "--depth-model": bad_inputs["da3"], "--save-depth": tmp_path / "kept"}
  for key, value in changes.items():
    args[key] = (None if value is None else
                 [names[v] for v in value] if isinstance(value, list) else names[value])
  argv = ["--no-progress"]
  for key, value in args.items():
    if value is not None:
      argv += [key, *map(str, value if isinstance(value, list) else [value])]
  assert sample_cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
  assert sorted(os.listdir(tmp_path)) == ["depth_dir"], "nothing may be written"


# ----------------------------------------------------------------------------------------------
# End to end: a random da3-small converted by the converter's command.

CLIP_HW = (96, 128)  # 4:3: the release's images/ are centre-cropped to 832:480, then enlarged


@pytest.fixture(scope="module")
def da3(tmp_path_factory):
  """A random da3-small as ``DepthAnything3.save_pretrained`` writes it (the PyPI package's own
  constructor, seeded), converted with ``tools/convert_weights.py da3``; and a 2-frame clip."""
  from tests import da3_reference  # pylint: disable=import-outside-toplevel (torch)
  root = tmp_path_factory.mktemp("da3")
  package = da3_reference.da3()
  package.torch.manual_seed(20251128)
  package.api.DepthAnything3(model_name="da3-small").save_pretrained(str(root / "release"))
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_weights.py"), "da3",
                         "--input", str(root / "release"), "--output", str(root / "model")],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {"model": root / "model", "clip": write_clip(root / "clip.mp4", 2, CLIP_HW, seed=3),
          "root": root}


@pytest.fixture(scope="module")
def cli_run(da3):
  """``python -m postcam_jax.depth --overwrite`` (in-process) over a stale folder, the DA3
  prediction it got recorded."""
  from postcam_jax.depth import estimate  # pylint: disable=import-outside-toplevel
  calls = []
  original = estimate.estimate

  def recording(model, frames, **kwargs):
    prediction = original(model, frames, **kwargs)
    calls.append({"frames": np.array(frames), "kwargs": kwargs, "prediction": prediction})
    return prediction

  out, tmp = da3["root"] / "vggt" / "clip", da3["root"] / "vggt" / "clip_da3_tmp"
  os.makedirs(out / "depth")
  (out / "depth" / "000007.png").write_bytes(b"stale")
  atomic.write_marker(out)  # an earlier run's folder: --overwrite may replace it
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(estimate, "estimate", recording)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      code = depth_cli.main(["--model", str(da3["model"]), "--video", str(da3["clip"]), "--out",
                             str(out), "--da3-tmp", str(tmp), "--no-progress", "--overwrite"])
  assert code == 0
  (call,) = calls
  return {"out": out, "tmp": tmp, "printed": printed.getvalue().split(), **call}


def test_cli_writes_the_release_folder_of_its_prediction(cli_run, da3):
  out, frames, prediction = cli_run["out"], cli_run["frames"], cli_run["prediction"]
  assert cli_run["printed"] == [str(out), str(cli_run["tmp"])]
  # The release's call: use_ray_pose=False and the package's defaults, on every decoded frame.
  assert cli_run["kwargs"] == {"process_res": 504, "process_res_method": "upper_bound_resize",
                               "ref_view_strategy": "saddle_balanced", "use_ray_pose": False,
                               "mesh": None, "cubic": "ipp"}
  np.testing.assert_array_equal(frames, video.read_video(str(da3["clip"])))
  # 128x96: the longest side to 504 -> 504x378, 36 x 27 patches of 14.
  assert prediction.processed_hw == (378, 504) and prediction.depth.shape == (2, 378, 504)
  result = release.postprocess(prediction.depth, prediction.extrinsics, prediction.intrinsics,
                               prediction.processed_hw)
  assert sorted(os.listdir(out)) == [atomic.MARKER, "depth", "extrinsics.txt", "images",
                                     "intrinsics.txt", "metadata.txt"]
  assert sorted(os.listdir(out / "depth")) == ["000000.png", "000001.png"]  # the stale one gone
  for i in range(2):
    with Image.open(out / "depth" / f"{i:06d}.png") as png:
      assert png.mode == "I;16"
      np.testing.assert_array_equal(np.asarray(png), result.quantised(i))
    with Image.open(out / "images" / f"{i:06d}.png") as png:
      np.testing.assert_array_equal(np.asarray(png), release.release_image(frames[i]))
  assert (out / "metadata.txt").read_text() == result.metadata_text()
  assert (out / "extrinsics.txt").read_text() == result.extrinsics_text()
  assert (out / "intrinsics.txt").read_text() == result.intrinsics_text()
  # The quantised depth spans 0..65535 (global min and max are reached).
  q = np.stack([result.quantised(i) for i in range(2)])
  assert q.min() == 0 and q.max() == 65535
  for name, lines in (("intrinsic.txt", result.intrinsic_lines()),
                      ("extrinsic.txt", result.extrinsic_lines()),
                      ("frame_bboxes.txt", result.bbox_lines())):
    assert (cli_run["tmp"] / name).read_text() == "".join(line + "\n" for line in lines)
  # Nothing but the two folders was written beside them.
  assert sorted(os.listdir(out.parent)) == ["clip", "clip_da3_tmp"]


def test_cli_refuses_an_existing_folder_without_overwrite(cli_run, da3, capsys):
  """(cli_run itself replaced a stale folder with --overwrite.)"""
  out = cli_run["out"]
  before = {p: (out / p).read_bytes() for p in ("metadata.txt", "extrinsics.txt")}
  argv = ["--model", str(da3["model"]), "--video", str(da3["clip"]), "--out", str(out)]
  assert depth_cli.main(argv) == 2
  assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
  assert {p: (out / p).read_bytes() for p in before} == before
  assert sorted(os.listdir(out.parent)) == ["clip", "clip_da3_tmp"]


@pytest.fixture(scope="module")
def sampler_assets(tmp_path_factory):
  """The sampler's tiny models (the release's fixture PostCam, a random tiny VAE) and prompt
  embeddings, as in tests/sample_cli_test.py."""
  from postcam_jax.convert.postcam import convert_postcam  # pylint: disable=import-outside-toplevel
  from tests.sample_cli_test import POSTCAM_CKPT, TEXT_DIM, save_tiny_vae  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("sampler")
  convert_postcam(POSTCAM_CKPT, root / "postcam")
  save_tiny_vae(root / "vae")
  rng = np.random.default_rng(0)
  np.savez(root / "embeds.npz", context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32),
           negative_context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32))
  return root


SAMPLE_HW, SAMPLE_FRAMES = (64, 128), 5


def sample(sampler_assets, clip, out, **depth_args):
  """The sampler (in-process) on ``clip``: the inputs its model got, the arrays it wrote and
  what it printed."""
  from postcam_jax.inference import cli as sample_cli  # pylint: disable=import-outside-toplevel
  pairs = []
  original = sample_cli.Pipeline.run

  def recording(self, pair, *args, **kwargs):
    pairs.append(pair)
    return original(self, pair, *args, **kwargs)

  argv = ["--checkpoint", str(sampler_assets / "postcam"), "--vae", str(sampler_assets / "vae"),
          "--prompt-embeds", str(sampler_assets / "embeds.npz"), "--video", str(clip),
          "--trajectory", "y_left_30", "--out", str(out), "--size", "x".join(map(str, SAMPLE_HW)),
          "--steps", "1", "--num-frames", str(SAMPLE_FRAMES), "--precision", "float32",
          "--save-arrays", "--no-progress"]
  for key, value in depth_args.items():
    argv += [f"--{key.replace('_', '-')}", str(value)]
  printed = io.StringIO()
  with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
    patch.setattr(sample_cli.Pipeline, "run", recording)
    assert sample_cli.main(argv) == 0
  (pair,) = pairs
  with np.load(out / "clip_arrays.npz") as data:
    return pair, dict(data), printed.getvalue().split()


def test_sampler_depth_model_equals_the_depth_folder(cli_run, da3, sampler_assets, tmp_path):
  """--depth-model estimates in-process exactly what the folder route reads: every input of the
  model (frames, quantised depth, K, source and target poses, camera tokens, scale) is identical
  to what the sampler prepares from the depth command's folder (``--depth``, whose inputs are
  ``load_release_inputs``); --save-depth keeps a folder equal to the depth command's."""
  kept = tmp_path / "kept" / "clip"
  by_model, arrays, printed = sample(sampler_assets, da3["clip"], tmp_path / "out",
                                     depth_model=da3["model"], save_depth=kept)
  by_folder = inputs.load_release_inputs(str(da3["clip"]), str(cli_run["out"]), "y_left_30",
                                         sample_hw=SAMPLE_HW, num_frames=SAMPLE_FRAMES)
  for field in dataclasses.fields(by_folder):
    got, want = getattr(by_model, field.name), getattr(by_folder, field.name)
    if isinstance(want, np.ndarray):
      assert got.dtype == want.dtype, field.name
      np.testing.assert_array_equal(got, want, err_msg=field.name)
    else:
      assert got == want, field.name
  assert by_model.depth.shape == (SAMPLE_FRAMES, *SAMPLE_HW) and by_model.num_source_frames == 2
  assert arrays["pred"].shape == (SAMPLE_FRAMES, *SAMPLE_HW, 3)
  # The kept folder is the depth command's, file by file, and is printed with the outputs.
  assert printed[-1] == str(kept)
  assert sorted(os.listdir(kept)) == sorted(os.listdir(cli_run["out"]))
  for name in ("metadata.txt", "extrinsics.txt", "intrinsics.txt"):
    assert (kept / name).read_text() == (cli_run["out"] / name).read_text()
  for folder in ("depth", "images"):
    assert sorted(os.listdir(kept / folder)) == sorted(os.listdir(cli_run["out"] / folder))
    for name in os.listdir(kept / folder):
      with Image.open(kept / folder / name) as a, Image.open(cli_run["out"] / folder / name) as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{folder}/{name}")
  # No temporary depth folder is left anywhere.
  assert sorted(os.listdir(tmp_path)) == ["kept", "out"]
  assert os.listdir(tmp_path / "kept") == ["clip"]
