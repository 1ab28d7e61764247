"""``python -m postcam_jax.evaluate``: bad input first (one line, status 2, nothing written), then
a folder of sampler-style outputs of a generated scene measured with a tiny random Depth
Anything 3 (every number recomputed from the files), the camera plumbing with an exact
estimator, and held-out pairs of prepared latent records sampled over 8 devices."""

import contextlib
import io
import json
import os
import runpy
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from postcam_jax.convert.postcam import ARCH_FIELDS, arch_value
from postcam_jax.data import arrayrecord, codec, multicam, pairs, synthetic
from postcam_jax.evaluation import camera, cli, fidelity, heldout, poses
from postcam_jax.geometry import cameras, render
from postcam_jax.inference import cli as sample_cli
from postcam_jax.io import model_dir, video
from postcam_jax.models.da3 import DA3Config, DA3Model
from postcam_jax.models.da3.config import BackboneConfig, HeadConfig, NetConfig
from postcam_jax.models.postcam import PostCamConfig, PostCamModel
from postcam_jax.training import data as train_data
from tests.sample_cli_test import save_tiny_vae

HW, FRAMES = (64, 96), 9
PROCESS_RES, POSE_FRAMES = 56, 5  # DA3 sees 56x42 (4x3 patches), poses on 5 of the 9 frames


def save_tiny_da3(directory):
  """A random any-view DA3 (4 blocks of width 32, the camera decoder) as a model directory, its
  weights drawn in numpy (eager init of the many small modules is slow on CPU)."""
  cfg = DA3Config(model_name="da3-tiny-random", net=NetConfig(
      backbone=BackboneConfig(embed_dim=32, depth=4, num_heads=2, out_layers=(0, 1, 2, 3),
                              alt_start=2, qknorm_start=2, rope_start=2),
      head=HeadConfig(features=16, out_channels=(8, 16, 32, 32)), cam_enc_heads=2,
      cam_enc_depth=1))
  params = model_dir.random_params(lambda: DA3Model(cfg, rngs=nnx.Rngs(0)), seed=7)
  model_dir.save_model(directory, kind=model_dir.DA3_KIND, config=cfg.to_dict(), params=params)
  return directory


def save_tiny_postcam(directory):
  cfg = PostCamConfig.tiny()
  params = model_dir.random_params(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)), seed=3)
  model_dir.save_model(directory, kind=model_dir.POSTCAM_KIND,
                       config={k: arch_value(cfg, k) for k in ARCH_FIELDS}, params=params)
  return directory


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  """A generated scene (3 cameras, 9 frames of 64x96, exact depth), its pixel pairs, a tiny DA3
  and a sampler-style output folder of two pairs: ``<stem>_{source,render,pred,target}_video.mp4``
  and ``<stem>_arrays.npz`` with the requested cameras (the prediction is the true target plus
  noise), and one more pair in a sub-folder without arrays."""
  root = tmp_path_factory.mktemp("evaluate")
  config = synthetic.GeneratorConfig(root=str(root / "scenes"), num_scenes=1, num_cameras=3,
                                     num_frames=FRAMES, height=HW[0], width=HW[1], seed=4, crf=0)
  synthetic.generate(config)
  scenes = multicam.scan_dataset(config.root, "train").scenes
  chosen = pairs.enumerate_pairs(scenes, FRAMES)[:3]
  pc = arrayrecord.PairsConfig(name="ev", root=config.root, clip_frames=FRAMES, height=HW[0],
                               width=HW[1])
  pixel = [arrayrecord.make_pixel_example(scenes[p.scene], p, pc) for p in chosen]
  samples = root / "samples"
  (samples / "results_x_arc_left").mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i, ex in enumerate(pixel):
    warped, _ = render.forward_warp(ex["source_video"] / 127.5 - 1.0, ex["source_depth"],
                                    ex["source_w2c"], ex["target_w2c"], ex["intrinsics"])
    noisy = np.clip(ex["target_video"].astype(int) + rng.integers(-12, 13, ex["target_video"]
                                                                  .shape), 0, 255)
    videos = {"source": ex["source_video"], "target": ex["target_video"],
              "render": poses.to_uint8(np.asarray(warped)), "pred": noisy.astype(np.uint8)}
    stem = samples / f"pair{i}" if i < 2 else samples / "results_x_arc_left" / "clip"
    for kind, frames in videos.items():
      video.write_video(f"{stem}_{kind}_video.mp4", frames, fps=15, crf=0)
    if i < 2:
      np.savez(f"{stem}_arrays.npz", target_w2c=ex["target_w2c"], trajectory=np.asarray("arc"))
  return {"root": root, "samples": samples, "pixel": pixel,
          "da3": save_tiny_da3(root / "da3"), "postcam": save_tiny_postcam(root / "postcam"),
          "scenes_root": config.root}


def main(argv):
  """The CLI in-process: (status, stdout lines, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main([str(a) for a in argv])
  return code, out.getvalue().splitlines(), err.getvalue()


BAD = [
    ("no_input", [], "give exactly one of --samples DIR, --data-dir DIR"),
    ("two_inputs", ["--samples", "{samples}", "--data-dir", "{samples}"],
     "give exactly one of"),
    ("missing_samples", ["--samples", "{root}/absent"], "--samples {root}/absent: no such folder"),
    ("no_pred_videos", ["--samples", "{root}/da3"], "no *_pred_video.mp4 in it"),
    ("not_a_da3", ["--samples", "{samples}", "--depth-model", "{postcam}"],
     "holds a 'postcam' model, not Depth Anything 3"),
    ("out_exists", ["--samples", "{samples}", "--out", "{root}/da3"],
     "exists; pass --overwrite to replace it"),
    ("table_without_workdirs", ["--samples", "{samples}", "--table", "3"],
     "--table lays out trained runs: give them with --workdirs"),
    ("data_dir_without_checkpoint", ["--data-dir", "{samples}"], "--data-dir needs --checkpoint"),
    ("data_dir_two_decoders", ["--data-dir", "{samples}", "--checkpoint", "{postcam}"],
     "--data-dir needs one decoder"),
    ("checkpoint_of_another_kind", ["--data-dir", "{samples}", "--checkpoint", "{da3}"],
     "holds a 'da3' model, expected a PostCam model"),
    ("pose_frames", ["--samples", "{samples}", "--pose-frames", "1"],
     "--pose-frames must be 0 (all) or >= 2"),
    ("unknown_trajectory", ["--samples", "{samples}", "--trajectory", "y_left_31"],
     "unknown trajectory 'y_left_31'"),
    ("no_cameras", ["--samples", "{samples}/results_x_arc_left"],
     "no requested trajectory (its _arrays.npz is missing"),
    ("workdirs_without_trainer", ["--workdirs", "{samples}"], "--workdirs needs the trainer"),
]


@pytest.mark.parametrize("name,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_one_line_and_status_2(assets, tmp_path, name, args, message):
  names = {k: assets[k] for k in ("root", "samples", "da3", "postcam")}
  argv = [a.format(**names) for a in args]
  if "--out" not in argv:
    argv += ["--out", str(tmp_path / "eval")]
  code, out, err = main(argv)
  assert code == 2, (name, err)
  assert out == [] and len(err.strip().splitlines()) == 1, err
  assert err.startswith("error: ") and message.format(**names) in err, err
  assert "Traceback" not in err
  assert os.listdir(tmp_path) == [], "nothing may be written"


def test_help_explains_the_command(capsys, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["python -m postcam_jax.evaluate", "--help"])
  with pytest.raises(SystemExit) as exit_info:
    runpy.run_module("postcam_jax.evaluate", run_name="__main__", alter_sys=True)
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for word in ("--samples", "--data-dir", "--workdirs", "--table", "--depth-model", "RotErr",
               "TransErr", "CamMC", "CamI2V", "PSNR", "SSIM", "copy the source", "render only",
               "videos.csv", "kinds.csv", "summary.png", "--save-arrays"):
    assert word in text, word


@pytest.fixture(scope="module")
def folder_run(assets, tmp_path_factory):
  out = tmp_path_factory.mktemp("folder_run") / "eval"
  code, printed, err = main(["--samples", assets["samples"], "--trajectory", "arc_left",
                             "--depth-model", assets["da3"], "--process-res", PROCESS_RES,
                             "--pose-frames", POSE_FRAMES, "--out", out])
  assert code == 0, err
  return out, printed


def test_folder_writes_every_table_and_picture(folder_run):
  out, printed = folder_run
  names = ["pair0", "pair1", "results_x_arc_left__clip"]
  assert sorted(os.listdir(out)) == sorted([".postcam-jax", "kinds.csv", "pictures",
                                            "summary.json", "summary.png", "videos.csv",
                                            "videos.json"])
  assert sorted(os.listdir(out / "pictures")) == [f"{n}.png" for n in names]
  for png in [out / "summary.png"] + [out / "pictures" / f"{n}.png" for n in names]:
    with Image.open(png) as im:
      assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400, (png, im.size)
  summary = json.loads((out / "summary.json").read_text())
  assert printed == [str(out), summary["line"]]
  assert summary["all"]["videos"] == 3 and summary["line"].startswith("3 video(s); RotErr ")
  rows = json.loads((out / "videos.json").read_text())
  assert [r["name"] for r in rows] == names
  assert [r["kind"] for r in rows] == ["arc", "arc", "arc_left"]
  kinds = (out / "kinds.csv").read_text().splitlines()
  assert [k.split(",")[0] for k in kinds[1:]] == ["arc", "arc_left", "all"]


def test_folder_numbers_are_the_files_numbers(assets, folder_run):
  """Every fidelity and camera number of pair0, recomputed from its mp4s and arrays with the
  estimator the command used."""
  out, _ = folder_run
  row = json.loads((out / "videos.json").read_text())[0]
  stem = assets["samples"] / "pair0"
  read = {k: video.read_video(f"{stem}_{k}_video.mp4") for k in ("pred", "source", "render",
                                                                  "target")}
  assert row["reference"] == "target" and row["frames"] == FRAMES
  for kind in ("pred", "source", "render"):
    psnr = fidelity.psnr_frames(read[kind], read["target"])
    ssim = fidelity.ssim_frames(read[kind], read["target"])
    assert row["per_frame"][f"{kind}_psnr"] == pytest.approx(psnr.tolist(), rel=1e-12)
    assert row[f"{kind}_psnr"] == pytest.approx(np.mean(psnr), rel=1e-12)
    assert row[f"{kind}_ssim"] == pytest.approx(np.mean(ssim), rel=1e-12)
  # The noisy target beats the baselines; the noise (+-12) sets its PSNR.
  assert row["pred_psnr"] > row["render_psnr"] and row["pred_psnr"] > row["source_psnr"]
  assert 25.0 < row["pred_psnr"] < 35.0
  estimator = poses.PoseEstimator.load(str(assets["da3"]), process_res=PROCESS_RES,
                                       num_frames=POSE_FRAMES)
  index = estimator.indices(FRAMES)
  assert index.tolist() == [0, 2, 4, 6, 8]
  requested = np.load(f"{stem}_arrays.npz")["target_w2c"]
  for kind in ("pred", "source", "render", "target"):
    errors = camera.camera_errors(requested[index], estimator(read[kind]))
    for name, value in errors.scalars().items():
      assert row[f"{kind}_{name}"] == pytest.approx(value, rel=1e-6, abs=1e-9), (kind, name)
    assert np.isfinite(row[f"{kind}_rot_err"])


def test_exact_estimator_gives_zero_camera_error(assets, tmp_path, monkeypatch):
  """An estimator that returns the requested cameras (in another world and scale) for the
  generated video and the same turned by 10 degrees for the others: the command reports 0 and
  exactly 10 degrees, so frames, poses and conventions are plumbed through as measured."""
  requested = {}
  for i in range(2):
    stem = assets["samples"] / f"pair{i}"
    requested[video.read_video(f"{stem}_pred_video.mp4").tobytes()] = (
        np.load(f"{stem}_arrays.npz")["target_w2c"].astype(np.float64))
  theta = np.radians(10.0)
  turn = np.eye(4)
  turn[:3, :3] = [[np.cos(theta), 0, np.sin(theta)], [0, 1, 0], [-np.sin(theta), 0,
                                                                   np.cos(theta)]]

  class Exact:
    indices = staticmethod(lambda n: poses.frame_indices(n, POSE_FRAMES))

    def __call__(self, frames):
      if frames.tobytes() in requested:
        w2c = requested[frames.tobytes()][self.indices(len(frames))]
        c2w = cameras.invert_rigid(w2c)
        c2w[:, :3, 3] *= 3.5  # another scale; the world is shifted too
        c2w[:, :3, 3] += [1.0, -2.0, 0.5]
        return cameras.invert_rigid(c2w)
      last = self.current
      c2w = cameras.invert_rigid(last)
      c2w[1:] = c2w[1:] @ turn
      return cameras.invert_rigid(c2w)

  exact = Exact()
  original_score = cli.report.score

  def score(clip, estimator=None, **kwargs):
    exact.current = camera.as_4x4(clip.requested_w2c)[exact.indices(clip.requested_w2c.shape[0])]
    return original_score(clip, estimator, **kwargs)

  monkeypatch.setattr(poses.PoseEstimator, "load", classmethod(lambda cls, *a, **k: exact))
  monkeypatch.setattr(cli.report, "score", score)
  code, _, err = main(["--samples", assets["samples"], "--trajectory", "arc_left", "--depth-model",
                       assets["da3"], "--no-pictures", "--out", tmp_path / "eval"])
  assert code == 0, err
  rows = json.loads((tmp_path / "eval" / "videos.json").read_text())
  for row in rows[:2]:
    # The stored poses are float32: their rotations are orthonormal to ~1e-7, which the rigid
    # inverses (R^T) carry into the translations.
    assert row["pred_rot_err"] == pytest.approx(0.0, abs=1e-6)
    assert row["pred_trans_err"] == pytest.approx(0.0, abs=1e-6)
    for kind in ("source", "render", "target"):
      assert row[f"{kind}_rot_err"] == pytest.approx(theta, rel=1e-6)
      assert row[f"{kind}_rot_err_sum"] == pytest.approx((POSE_FRAMES - 1) * theta, rel=1e-6)
  assert not os.path.exists(tmp_path / "eval" / "pictures")


@pytest.fixture(scope="module")
def records(assets, tmp_path_factory):
  """Latent records of the scene's 6 pairs, encoded by a PCA codec fitted on its videos (the
  codec's state is the command's --codec), with the release's render and hashed text."""
  root = tmp_path_factory.mktemp("records")
  scenes = multicam.scan_dataset(assets["scenes_root"], "train").scenes
  fitted = codec.PCACodec.fit([scenes[0].read_video(c).astype(np.float32) / 127.5 - 1.0
                               for c in scenes[0].cameras], channels=16)
  np.savez(root / "codec.npz", **fitted.state())
  enc = arrayrecord.LatentEncoders(
      encoder=fitted.encode, latent_shape=fitted.latent_shape(FRAMES, *HW),
      text_encoder=train_data.HashTextEncoder(16, 32), text_shape=(16, 32),
      renderer=train_data.release_render,
      render_latent_shape=fitted.latent_shape(FRAMES, HW[0] // 4, HW[1] // 4))
  config = arrayrecord.PairsConfig(name="ev", root=assets["scenes_root"], clip_frames=FRAMES,
                                   height=HW[0], width=HW[1], encoders=enc)
  arrayrecord.prepare(config, str(root / "data"))
  return {"data": arrayrecord.prepared_dir(str(root / "data"), "ev"), "codec": root / "codec.npz",
          "decode": fitted.decode}


def test_data_dir_samples_held_out_pairs_over_the_mesh(assets, records, tmp_path):
  """Two held-out pairs sampled together on data=2 x fsdp=4 (8 devices): the table holds the
  fidelity of exactly what one device samples for each pair alone."""
  out = tmp_path / "eval"
  code, printed, err = main(["--data-dir", records["data"], "--split", "train", "--checkpoint",
                             assets["postcam"], "--codec", records["codec"], "--num-pairs", 2,
                             "--steps", 2, "--precision", "float32", "--mesh", "data=2,fsdp=4",
                             "--no-pictures", "--out", out])
  assert code == 0, err
  rows = json.loads((out / "videos.json").read_text())
  assert len(rows) == 2 and printed[0] == str(out)
  decode = records["decode"]
  pairs_ = heldout.record_pairs(records["data"], "train", 2, decode, text_len=512)
  model = model_dir.load_postcam(str(assets["postcam"]), precision="float32", dtype=None)
  alone = heldout.sample_latents(model, pairs_, steps=2, batch=1)
  for row, pair, latent in zip(rows, pairs_, alone):
    assert row["name"] == pair.name and row["reference"] == "target"
    assert row["kind"] == camera.trajectory_kind(pair.target_w2c)
    pred = poses.to_uint8(decode(latent))
    want = fidelity.psnr_frames(pred, pair.target)
    # Sharded sums differ from one device's in the last bits (1e-5 relative on the latents);
    # uint8 rounding can then flip a few pixels by one level.
    np.testing.assert_allclose(row["per_frame"]["pred_psnr"], want, rtol=2e-3)
    assert row["source_psnr"] == pytest.approx(np.mean(fidelity.psnr_frames(pair.source,
                                                                            pair.target)))
    assert "pred_rot_err" not in row  # no --depth-model: fidelity only


def test_sampler_outputs_with_their_arrays(assets, tmp_path):
  """The sampler's own outputs (--save-arrays keeps the requested cameras and the trajectory's
  name): measured against the source (no target exists), kind = the trajectory."""
  save_tiny_vae(tmp_path / "vae")
  np.savez(tmp_path / "embeds.npz",
           context=np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32))
  scene = os.path.join(assets["scenes_root"], "train", *synthetic.scene_location(0))
  argv = ["--checkpoint", assets["postcam"], "--vae", tmp_path / "vae", "--prompt-embeds",
          tmp_path / "embeds.npz", "--video", os.path.join(scene, "videos", "cam01.mp4"),
          "--depth", os.path.join(scene, "depth", "cam01.npz"), "--trajectory", "arc_left",
          "--out", tmp_path / "samples", "--size", "64x96", "--num-frames", 5, "--steps", 1,
          "--guidance", 1, "--precision", "float32", "--save-arrays", "--no-progress"]
  with contextlib.redirect_stdout(io.StringIO()):
    assert sample_cli.main([str(a) for a in argv]) == 0
  code, _, err = main(["--samples", tmp_path / "samples", "--out", tmp_path / "eval"])
  assert code == 0, err
  (row,) = json.loads((tmp_path / "eval" / "videos.json").read_text())
  assert (row["name"], row["kind"], row["frames"], row["reference"]) == ("cam01", "arc_left", 5,
                                                                           "source")
  assert "source_psnr" not in row and np.isfinite(row["pred_psnr"]) and np.isfinite(
      row["render_psnr"])
  with np.load(tmp_path / "samples" / "cam01_arrays.npz") as data:
    assert data["target_w2c"].shape == (5, 4, 4) and str(data["trajectory"]) == "arc_left"
