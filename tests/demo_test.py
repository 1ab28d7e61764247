"""The demo's held-out pairs (render at the config's scale, shown at video size, cameras placed by
the config's layout), its scored table (model, model without camera/render, render, copy-source,
codec ceiling; PSNR and SSIM) and its camera-accuracy table (the source's exact depth, or
``--depth_model``)."""

import json
import os

import numpy as np
import pytest

from configs import common
from configs import demo as demo_config
from postcam_jax import demo
from postcam_jax.data import multicam, synthetic
from postcam_jax.evaluation import camera as camera_lib
from postcam_jax.training import data as train_data


class _ZeroCodec:
  def encode(self, video):
    return np.zeros((1 + (len(video) - 1) // 4, video.shape[1] // 8, video.shape[2] // 8, 16),
                    np.float32)


@pytest.mark.parametrize("scale", [1, 4])
def test_held_out_render_at_the_config_scale_shown_at_video_size(scale, tmp_path):
  config = demo_config.get_config()
  with config.unlocked():
    config.data.render_scale = scale
  pairs = demo.held_out_pairs(config, str(tmp_path), _ZeroCodec(), 1)
  (ex,) = pairs
  assert ex["render"].shape == ex["source"].shape == ex["target"].shape
  valid = (ex["render"] > -0.999).any(-1)
  assert 0.05 < valid.mean() < 1.0  # the warp fills part of the view, holes elsewhere
  assert ex["holes"].shape == ex["target"].shape[:3] and 0 < ex["holes"].mean() < 0.95
  if scale == 1:  # the holes are the warp's own: -1 there, as the release fills them
    assert np.all(ex["render"][ex["holes"]] == -1.0)
  if scale == 4:  # the release's render: 4x4 blocks of one colour once brought to video size
    assert np.array_equal(ex["render"][:, ::4, ::4], ex["render"][:, 3::4, 3::4])


def test_cell_errors_pool_the_covered_cells_and_the_rest():
  target = np.zeros((5, 16, 16, 3), np.float32)  # 2 latent frames x 2 x 2 cells
  holes = np.ones((5, 16, 16), bool)
  holes[1:5, 0:8, 8:16] = False  # latent cell (1, 0, 1): covered in every pixel
  holes[0, 0:8, 0:8] = False
  holes[0, 3, 3] = True  # cell (0, 0, 0): all but one pixel, so not covered whole
  pred = np.full_like(target, 0.3)
  pred[1:5, 0:8, 8:16] = 0.1
  videos = {"pred": pred, "no_condition": np.full_like(target, 0.5),
            "mean_image": np.full_like(target, 0.2), "codec_ceiling": np.full_like(target, 0.05)}
  one = demo.cell_errors(holes, target, videos)
  assert one["covered"].shape == (2, 2, 2) and one["covered"].sum() == 1 and one["covered"][1, 0, 1]
  none = demo.cell_errors(np.ones_like(holes), target, videos)
  summary = demo.cell_summary([one, none])
  assert abs(summary["covered_fraction"] - 1 / 16) < 1e-12
  assert abs(summary["pred_covered"] - 0.01) < 1e-7
  # the rest: 7 + 7 cells at 0.3^2 and, from the second pair, the same cell uncovered at 0.1^2
  assert abs(summary["pred_rest"] - (14 * 0.09 + 0.01) / 15) < 1e-7
  assert abs(summary["no_condition_covered"] - 0.25) < 1e-7
  assert abs(summary["mean_image_rest"] - 0.04) < 1e-7
  line = demo.cell_line(summary)
  assert "(6 % of cells) the prediction 0.010, without camera/render 0.250" in line
  assert "in the other cells the prediction 0.085, the mean image 0.040" in line
  assert np.isnan(demo.cell_summary([none])["pred_covered"])  # no covered cell: nothing to pool


def test_scores_and_table():
  rng = np.random.default_rng(0)
  target = rng.uniform(-1, 1, (5, 32, 48, 3)).astype(np.float32)
  videos = {"pred": target + 0.05 * rng.normal(size=target.shape),
            "no_condition": target + 0.5 * rng.normal(size=target.shape),
            "render": np.full_like(target, -1.0), "copy_source": target[::-1],
            "mean_image": np.zeros_like(target),
            "codec_ceiling": target + 0.01 * rng.normal(size=target.shape)}
  rows = [demo.score_pair(f"p{i}", target=target, **videos) for i in range(2)]
  mean = demo.mean_scores(rows)
  assert mean["codec_ceiling_psnr"] > mean["pred_psnr"] > mean["no_condition_psnr"]
  assert mean["pred_ssim"] > mean["no_condition_ssim"]
  assert set(mean) == {f"{k}_{m}" for k, _ in demo.SCORED for m in ("psnr", "ssim")}
  lines = demo.results_table(rows, mean)
  assert len(lines) == 2 + len(rows) + 1
  assert all(h in lines[0] for h in ("prediction", "no camera/render", "render", "copy source"))
  assert lines[-1].split()[0] == "mean"
  assert f"{mean['pred_psnr']:.2f} / {mean['pred_ssim']:>6.3f}" in lines[-1]
  assert len({len(line) for line in lines}) == 1  # columns stay aligned
  negative = demo.results_table([dict(rows[0], mean_image_ssim=-0.0104)], mean)
  assert "/ -0.010" in negative[2] and len({len(line) for line in negative}) == 1
  assert "mean image" in lines[0]
  line = demo.mean_image_line(mean)
  gain = mean["pred_psnr"] - mean["mean_image_psnr"]
  assert gain > 0 and f"PSNR {gain:+.2f} dB" in line and "no better" not in line
  worse = dict(mean, pred_psnr=mean["mean_image_psnr"] - 0.15)
  assert "PSNR -0.15 dB" in demo.mean_image_line(worse)
  assert "no better than that flat guess" in demo.mean_image_line(worse)


def test_camera_layout_of_the_config_reaches_the_generated_scenes(tmp_path):
  """``data.camera_spread_deg`` / ``camera_distance_m`` generate the scenes with those cameras,
  under their own folder and cache key (the dataset's layout keeps the old ones)."""
  size = dict(num_scenes=1, num_cameras=2, num_frames=9, height=32, width=48)
  data = common.data_synthetic(batch_size=1, cache_dir=str(tmp_path), camera_spread_deg=30.0,
                               camera_distance_m=7.0, **size)
  default = common.data_synthetic(batch_size=1, cache_dir=str(tmp_path), **size)
  assert train_data.camera_layout(data) == {"camera_spread_deg": 30.0, "camera_distance_m": 7.0}
  assert train_data.camera_layout(default) == {}
  assert (train_data._cache_path(data, "train")  # pylint: disable=protected-access
          != train_data._cache_path(default, "train"))  # pylint: disable=protected-access
  assert len(train_data.pixel_examples(data, "train")) == 2
  (root,) = [d for d in (tmp_path).iterdir() if d.name.startswith("scenes_")]
  scene = multicam.scan_dataset(str(root), "train").scenes[0]
  spec = synthetic.build_scene(synthetic.GeneratorConfig(
      seed=0, camera_spread_deg=30.0, camera_distance_m=7.0, **size), 0)
  with open(os.path.join(scene.path, synthetic.SCENE_MARKER)) as f:
    described = json.load(f)
  assert (described["camera_spread_deg"], described["camera_distance_m"]) == (30.0, 7.0)
  for cam in ("cam01", "cam02"):
    # through the file's text (centimetres, Unreal axes) and back: float64 rounding only
    assert np.abs(scene.c2w[cam] - spec.dataset_c2w(cam)).max() < 1e-9


class _PathOf:
  """A stand-in pose estimator: the requested path for the true target video, the camera held
  still for anything else (so only the prediction rows are wrong)."""

  def __init__(self, target, w2c):
    self.target, self.w2c = target, w2c

  def indices(self, num_frames):
    return np.arange(num_frames)

  def __call__(self, video):
    if np.array_equal(video, demo.poses.to_uint8(self.target)):
      return self.w2c
    return np.tile(np.eye(4), (len(video), 1, 1))


def test_camera_accuracy_rows_and_table():
  c2w = synthetic.make_trajectory("arc", np.random.default_rng(0), 9, np.array([0.0, 0.0, 1.0]))
  w2c = np.linalg.inv(c2w)
  rng = np.random.default_rng(1)
  target = rng.uniform(-1, 1, (9, 16, 24, 3)).astype(np.float32)
  examples = [{"name": "p0", "target": target, "target_w2c": w2c}]
  guess = [rng.uniform(-1, 1, target.shape).astype(np.float32)]
  rows = demo.camera_rows(examples, guess, guess, _PathOf(target, w2c))
  (row,) = rows
  assert row["target_rot_err"] < 1e-6 and row["target_trans_err"] < 1e-6
  still = camera_lib.camera_errors(w2c, np.tile(np.eye(4), (9, 1, 1))).scalars()
  assert still["rot_err"] > 0 and still["trans_err"] > 0  # an arc: a held camera is wrong
  for key in ("pred", "no_condition"):  # the estimator held these still
    assert all(row[f"{key}_{m}"] == still[m] for m in ("rot_err", "trans_err", "cam_mc"))
  mean = {k: v for k, v in row.items() if k != "pair"}
  lines = demo.camera_table(rows, mean)
  assert len(lines) == 2 + 1 + 1 and "RotErr / TransErr / CamMC" in lines[1]
  assert all(h in lines[0] for _, h in demo.CAMERA_VIDEOS)


def test_camera_accuracy_offline_by_alignment_to_the_source(tmp_path, xla_optimized):
  """Without ``--depth_model`` each pair's cameras are found from its source's exact depth: the
  true target is where it was asked to be, the source video where the source camera is (the
  requested path's distance to it), and the table says where each camera is in degrees and m."""
  (ex,) = demo.held_out_pairs(demo_config.get_config(), str(tmp_path), _ZeroCodec(), 1)
  (row,) = demo.camera_rows([ex], [ex["target"]], [ex["source"]])
  assert row["pred_place_deg"] < 0.5 and row["pred_place_m"] < 0.1
  assert row["pred_rot_err"] == row["target_rot_err"] < 0.01  # the same video, the same path
  degrees, metres = camera_lib.placement_errors(ex["target_w2c"], ex["source_w2c"])
  assert degrees.mean() > 20
  assert row["no_condition_place_deg"] == pytest.approx(degrees.mean(), abs=0.5)
  assert row["no_condition_place_m"] == pytest.approx(metres.mean(), abs=0.1)
  lines = demo.camera_table([row], {k: v for k, v in row.items() if k != "pair"})
  assert "| deg / m" in lines[1] and len(lines) == 4


def test_camera_summary_counts_only_pairs_whose_true_target_is_placed():
  keys = ("rot_err", "place_deg", "place_m")
  row = lambda pred, blind, target: {"pair": "p", **{f"pred_{k}": pred for k in keys},
                                     **{f"no_condition_{k}": blind for k in keys},
                                     **{f"target_{k}": target for k in keys}}
  line = demo.camera_summary_line([row(0.5, 40.0, 0.2), row(1.5, 60.0, 0.4), row(70, 80, 30)])
  assert line.startswith("On the 2 of 3 pairs") and "are 1.0 degrees and 1.00 m" in line, line
  assert "without camera/render 50.0 degrees and 50.00 m (RotErr 50.000)" in line, line
  assert "none of the 1" in demo.camera_summary_line([row(1, 2, 3)])


def test_wrong_depth_model_fails_at_once_in_one_line(tmp_path):
  import subprocess
  import sys
  workdir = tmp_path / "out"
  done = subprocess.run([sys.executable, "-m", "postcam_jax.demo", "--workdir", str(workdir),
                         "--depth_model", str(tmp_path / "missing")], capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 2
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "--depth_model" in errors[0], done.stderr[-2000:]
  assert not workdir.exists()  # nothing started


def test_camera_accuracy_with_a_depth_anything_model(tmp_path):
  from tests.evaluate_cli_test import save_tiny_da3
  estimator = demo.poses.PoseEstimator.load(str(save_tiny_da3(tmp_path / "da3")), process_res=28)
  c2w = synthetic.make_trajectory("pan", np.random.default_rng(0), 5, np.array([0.0, 0.0, 1.0]))
  rng = np.random.default_rng(2)
  target = rng.uniform(-1, 1, (5, 16, 24, 3)).astype(np.float32)
  examples = [{"name": "p0", "target": target, "target_w2c": np.linalg.inv(c2w)}]
  (row,) = demo.camera_rows(examples, [target[::-1]], [target], estimator)
  assert set(row) == {"pair"} | {f"{v}_{m}" for v, _ in demo.CAMERA_VIDEOS
                                 for m in ("rot_err", "trans_err", "cam_mc")}
  assert all(np.isfinite(v) for k, v in row.items() if k != "pair")
  assert row["no_condition_rot_err"] == row["target_rot_err"]  # the same video, the same path
