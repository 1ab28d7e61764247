"""benchmarks/demo_validation.py: a demo checkpoint scored on every validation pair of the recipe
it records (docs/experiments.md's held-out numbers), several noises per pair averaged, and the
cameras found in its videos (--camera)."""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from configs import demo as demo_config
from postcam_jax import demo, training
from postcam_jax.models.postcam import PostCamModel
from postcam_jax.training import data as train_data
from postcam_jax.training import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "demo_validation.py")
_spec = importlib.util.spec_from_file_location("demo_validation", SCRIPT)
demo_validation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_validation)


def _small_checkpoint(tmp_path, eval_scenes=1):
  """A random model of the demo's architecture on a small recipe (1 + 1 scenes of 2 cameras at
  32x48): what the benchmark reads is the recipe the sidecar records."""
  config = demo_config.get_config()
  with config.unlocked():
    config.data.update(num_scenes=1, num_eval_scenes=eval_scenes, num_cameras=2, height=32,
                       width=48, cache_dir=str(tmp_path / "fit"))
  recipe = demo.recipe_of(config, 0)
  model = PostCamModel(training.model_config(config), rngs=nnx.Rngs(0))
  path = str(tmp_path / f"small{eval_scenes}.safetensors")
  export.save_bundle(path, model, train_data.stand_in_codec(config.data),
                     {"command": "test", "seed": 0, "recipe": recipe, "train_seconds": 0,
                      "machine": "test", "made": "today", "metrics": {}})
  return path


def test_scores_every_validation_pair_and_averages_noise_draws(tmp_path):
  path = _small_checkpoint(tmp_path)
  one = demo_validation.score_validation(path, 0, 2, str(tmp_path / "a"))
  two = demo_validation.score_validation(path, 0, 2, str(tmp_path / "b"), draws=2)
  assert [r["pair"] for r in one] == [r["pair"] for r in two] == ["00", "01"]  # 2 ordered pairs
  for a, b in zip(one, two):
    assert set(a) == {"pair"} | {f"{k}_{m}" for k, _ in demo.SCORED
                                 for m in ("psnr", "ssim")} | demo_validation._SPLIT_KEYS
    for key in ("render", "copy_source", "mean_image", "codec_ceiling"):  # no noise in these
      assert a[f"{key}_psnr"] == b[f"{key}_psnr"], key
    assert a["pred_psnr"] != b["pred_psnr"]  # the second noise's sample enters the average
    # The latents are the recorded recipe's and the codec the checkpoint's: their decode is
    # the target's best reconstruction, far above the flat mean image.
    assert a["codec_ceiling_psnr"] > a["mean_image_psnr"] + 3.0
  _check_ssim_split(one)


def _check_ssim_split(rows):
  """The split weighs back to each video's whole SSIM, the render alone is the warp's exact
  pixels where it fills (so far better there than in its holes), and the best output through
  the codec is its ceiling where the warp fills with the prediction's holes."""
  for r in rows:
    f = r["filled_fraction"]
    assert 0.0 < f < 1.0
    for key in demo_validation.SPLIT_VIDEOS:
      whole = f * r[f"{key}_ssim_filled"] + (1 - f) * r[f"{key}_ssim_holes"]
      assert whole == pytest.approx(r[f"{key}_ssim"], abs=1e-9), key
    assert r["render_ssim_filled"] > r["render_ssim_holes"] + 0.3
    assert r["best_through_codec"] == pytest.approx(
        f * r["codec_ceiling_ssim_filled"] + (1 - f) * r["pred_ssim_holes"], abs=1e-12)
  line = demo_validation.split_line(rows)
  mean = lambda key: np.mean([r[key] for r in rows])
  assert (f"prediction {mean('pred_ssim_filled'):.3f} / {mean('pred_ssim_holes'):.3f}, render "
          f"alone {mean('render_ssim_filled'):.3f}") in line, line
  assert f"would score {mean('best_through_codec'):.3f} against" in line, line


def test_codec_ceiling_rises_with_channels(tmp_path):
  path = _small_checkpoint(tmp_path)
  _, _, data = demo_validation.recipe_data(path, str(tmp_path / "a"))
  lines = demo_validation.ceiling_by_channels(data, [2, 32])
  assert len(lines) == 2 and "2 channels" in lines[0] and "32 channels" in lines[1]
  ssim = [float(l.split("SSIM ")[1].split(",")[0]) for l in lines]
  filled = [float(l.rsplit(" ", 1)[1]) for l in lines]
  assert ssim[1] > ssim[0] + 0.1 and filled[1] > filled[0] + 0.1, lines


def test_other_held_out_scenes_by_count_and_seed(tmp_path):
  """--scenes/--scene_seed: a set of scenes common to checkpoints of several data seeds, encoded
  with each checkpoint's own codec; the training scenes' seed is refused."""
  path = _small_checkpoint(tmp_path)
  own = demo_validation.score_validation(path, 0, 2, str(tmp_path / "a"))
  other = demo_validation.score_validation(path, 0, 2, str(tmp_path / "b"), scenes=2,
                                           scene_seed=77)
  assert [r["pair"] for r in other] == ["00", "01", "02", "03"]  # 2 scenes x 2 ordered pairs
  # The training scene (seed 0, for the codec's fit) and the 2 scenes of seed 77.
  made = sorted(p.name.split("_")[1:3] for p in (tmp_path / "b").glob("scenes_*"))
  assert made == [["0", "1"], ["77", "2"]], made
  assert other[0]["copy_source_psnr"] != own[0]["copy_source_psnr"]  # other scenes
  assert all(r["codec_ceiling_psnr"] > r["mean_image_psnr"] + 3.0 for r in other)
  with pytest.raises(demo_validation.SceneSeedError, match="training scenes"):
    demo_validation.score_validation(path, 0, 2, str(tmp_path / "c"), scene_seed=0)
  pairs_held_out = _small_checkpoint(tmp_path, eval_scenes=0)  # held-out pairs, not scenes
  with pytest.raises(demo_validation.SceneSeedError, match="give --scenes N too"):
    demo_validation.score_validation(pairs_held_out, 0, 2, str(tmp_path / "d"), scene_seed=77)


def test_camera_accuracy_of_the_first_draw(tmp_path, monkeypatch, capsys, xla_optimized):
  """--camera: the demo's camera table for the first draw's videos, cameras found from the
  source's exact depth: the true target's where they were asked to be; a model whose camera and
  render layers are still zero (this random one) draws the same video with and without them,
  so its cameras are the same; then the summary over the pairs whose true target is placed."""
  path = _small_checkpoint(tmp_path)
  monkeypatch.setattr(sys, "argv", [SCRIPT, "--checkpoint", path, "--sample_steps", "2",
                                    "--camera"])
  demo_validation.main()
  out = capsys.readouterr().out
  table = out.split("Camera accuracy against the requested target path")[1].splitlines()
  assert "| deg / m" in table[2] and [l.split()[0] for l in table[3:6]] == ["00", "01", "mean"]
  for line in table[3:6]:  # per video: RotErr, TransErr, CamMC, degrees, metres
    pred, blind, target = np.array(re.findall(r"\d+\.\d+", line), float).reshape(3, 5)
    assert np.array_equal(pred, blind), line  # the same video with and without the conditions
    assert target[3] < 1.5, line  # the true target placed
  assert table[6].startswith("On the 2 of 2 pairs whose true target the finder places")


def test_the_command_line_fails_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, SCRIPT, "--checkpoint", str(tmp_path / "none.st")],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert done.returncode != 0 and len(errors) == 1 and "--train" in errors[0], done.stderr
  done = subprocess.run([sys.executable, SCRIPT, "--draws", "0"], capture_output=True,
                        text=True, timeout=300, cwd=REPO)
  assert done.returncode == 2 and "--draws" in done.stderr.splitlines()[-1]
  for bad in ("16,x", "16,0"):
    done = subprocess.run([sys.executable, SCRIPT, "--codec_channels", bad], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2 and "--codec_channels" in done.stderr.splitlines()[-1], bad
