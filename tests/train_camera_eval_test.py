"""The trainer's camera-evaluation hook (``config.eval.camera``) on the tiny config, and one
command reproducing an ablation table's columns from tiny trainer workdirs."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import ablations, common, postcam_tiny
from postcam_jax import training
from postcam_jax.evaluation import cli, heldout, poses
from postcam_jax.training import camera_eval, metrics
from tests.evaluate_cli_test import save_tiny_da3

HOOK = dict(enabled=True, every=1, num_pairs=2, sample_steps=2, process_res=56, pose_frames=5)
MODEL_TAGS = ("val/rot_err", "val/trans_err", "val/cam_mc", "val/psnr", "val/ssim")
BASELINE_TAGS = ("val/psnr_copy_source", "val/psnr_render", "val/ssim_copy_source",
                 "val/rot_err_copy_source", "val/rot_err_render", "val/rot_err_target",
                 "val/trans_err_target")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("camera_eval_data")


@pytest.fixture(scope="module")
def da3(tmp_path_factory):
  return save_tiny_da3(tmp_path_factory.mktemp("camera_eval_da3") / "da3")


def tiny_config(cache_dir, config=None, *, encoder="pca", stage_steps=(1, 1)):
  """``config`` (default the tiny config) on one small scene (64x96, 4 cameras: 9 training
  pairs, every 4th of the 12 held out), encoded by the PCA stand-in codec (which decodes), one
  device, logs every step."""
  config = config or postcam_tiny.get_config()
  config.data.update(cache_dir=str(cache_dir), height=64, width=96, num_scenes=1,
                     encoder=encoder)
  config.update(mesh_devices=1, log_every=1, stage_steps=stage_steps)
  config.checkpoint.every = 1000
  config.eval.update(every=0, zero_camera_baseline=False)
  return config


@pytest.fixture(scope="module")
def hooked_run(cache_dir, da3, tmp_path_factory):
  """The tiny config (pose 1 step, joint 1 step) with the hook every step and the validation loss
  at the end, counting the pose estimator's calls."""
  config = tiny_config(cache_dir)
  config.eval.every, config.eval.num_batches = 2, 1
  config.eval.camera = common.camera_eval(depth_model=str(da3), **HOOK)
  workdir = tmp_path_factory.mktemp("hooked") / "postcam"
  calls = []
  original = poses.PoseEstimator.__call__

  def counting(self, frames):
    calls.append(len(frames))
    return original(self, frames)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(poses.PoseEstimator, "__call__", counting)
    result = training.train_and_evaluate(config, str(workdir))
  return config, workdir, result, calls


def test_hook_logs_camera_accuracy_and_fidelity_beside_the_validation_loss(hooked_run):
  config, workdir, result, calls = hooked_run
  assert result.step == 2
  records = {r["step"]: r for r in metrics.read_jsonl(str(workdir)) if "val/psnr" in r}
  assert sorted(records) == [1, 2]
  val_loss = {r["step"] for r in metrics.read_jsonl(str(workdir)) if "val/loss" in r}
  assert val_loss == {2}
  for step, record in records.items():
    for tag in MODEL_TAGS + BASELINE_TAGS:
      assert np.isfinite(record[tag]), (step, tag)
    assert 0.0 <= record["val/rot_err"] <= np.pi and -1.0 <= record["val/ssim"] <= 1.0
  # The baselines do not change while training; the model's numbers are its own.
  for tag in BASELINE_TAGS:
    assert records[1][tag] == records[2][tag], tag
  # 2 pairs: the first evaluation estimates 4 videos each (generated, source, render, target),
  # the second only the generated ones (the baselines' poses are kept).
  assert calls == [9] * 8 + [9] * 2
  # TensorBoard holds them beside val/loss (tensorboard.summary.Writer's scalars are tensors).
  events = EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  tags = set(events.Tags()["tensors"])
  assert {"val/loss", *MODEL_TAGS, *BASELINE_TAGS} <= tags
  logged = [(e.step, e.tensor_proto.float_val[0]) for e in events.Tensors("val/rot_err")]
  assert logged == [(s, pytest.approx(records[s]["val/rot_err"], rel=1e-6)) for s in (1, 2)]
  print(f"hook cost on the tiny config: {records[2]['val/camera_eval_seconds']:.1f} s per "
        f"evaluation after the first ({records[1]['val/camera_eval_seconds']:.1f} s, compiles)")


def test_hook_numbers_are_those_of_the_trained_model(hooked_run, da3):
  """The last evaluation's PSNR and RotErr are what the final model gives on the same pairs."""
  config, workdir, result, _ = hooked_run
  settings = camera_eval.camera_settings(config)
  decode = camera_eval.decoder_of(config, settings)
  pairs = camera_eval.held_out_pairs(config, 2, decode)
  estimator = camera_eval.estimator_of(settings)
  subject = heldout.Subject("final", result.model, pairs, decode, camera=True, render=True,
                            mesh=training.make_run_mesh(config))  # the hook's (compiled) case
  _, scored = heldout.run_subject(subject, estimator, steps=2, batch=2)
  means = {k: np.mean([s.row[k] for s in scored]) for k in ("pred_psnr", "pred_rot_err")}
  last = [r for r in metrics.read_jsonl(str(workdir)) if "val/psnr" in r][-1]
  assert last["val/psnr"] == pytest.approx(means["pred_psnr"], rel=1e-6)
  assert last["val/rot_err"] == pytest.approx(means["pred_rot_err"], rel=1e-5, abs=1e-7)


def test_hook_needs_a_decodable_codec(cache_dir):
  assert dict(common.camera_eval()) == camera_eval.DEFAULTS  # the config's fields, the defaults
  config = tiny_config(cache_dir, encoder="patch")
  config.eval.camera = common.camera_eval(enabled=True, every=1)
  with pytest.raises(ValueError, match="set data.encoder='pca'"):
    camera_eval.CameraEvaluator.from_config(config, None)
  config.eval.camera.enabled = False
  assert camera_eval.CameraEvaluator.from_config(config, None) is None  # off by default


@pytest.fixture(scope="module")
def pose_only_run(cache_dir, tmp_path_factory):
  config = tiny_config(cache_dir, ablations.get_config("pose_only,tiny"), stage_steps=(1,))
  workdir = tmp_path_factory.mktemp("pose_only") / "pose_only"
  training.train_and_evaluate(config, str(workdir))
  return workdir


def evaluate(argv):
  access = cli.WorkdirAccess(report=camera_eval.workdir_report, load=camera_eval.load_subject)
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main([str(a) for a in argv], workdirs=access)
  return code, out.getvalue().splitlines(), err.getvalue()


def test_table_reproduces_the_columns_of_table_3(hooked_run, pose_only_run, da3, tmp_path):
  """``--table 3 --workdirs`` on a pose-only and a PostCam run: rows in the paper's order with its
  labels, the columns the configs name, the paper's numbers beside; the PostCam row measures the
  workdir's final model exactly as the hook did at its last step."""
  _, postcam_run, _, _ = hooked_run
  out = tmp_path / "table"
  code, printed, err = evaluate(["--workdirs", postcam_run, pose_only_run, "--table", "3",
                                 "--depth-model", da3, "--num-pairs", 2, "--steps", 2,
                                 "--process-res", 56, "--pose-frames", 5, "--out", out])
  assert code == 0, err
  assert sorted(os.listdir(out)) == [".postcam-jax", "pose_only", "postcam", "table3.csv",
                                     "table3.md"]
  for run in ("pose_only", "postcam"):
    assert {"videos.csv", "kinds.csv", "summary.json", "summary.png", "pictures"} <= set(
        os.listdir(out / run))
  lines = (out / "table3.csv").read_text().splitlines()
  header = lines[0].split(",")
  assert header == ["label", "workdir", "step", "videos", *common.REPORT_METRICS,
                    "paper_pred_rot_err", "paper_pred_trans_err"]
  rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
  assert [r["label"] for r in rows] == ["Pose-only", "PostCam (RT+Render)"]
  assert [r["step"] for r in rows] == ["1", "2"]
  assert [float(r["paper_pred_rot_err"]) for r in rows] == [0.0841, 0.0495]
  for r in rows:
    for m in common.REPORT_METRICS:
      assert np.isfinite(float(r[m])), (r["label"], m)
  hook_last = [r for r in metrics.read_jsonl(str(postcam_run)) if "val/psnr" in r][-1]
  assert float(rows[1]["pred_psnr"]) == pytest.approx(hook_last["val/psnr"], rel=1e-6)
  markdown = (out / "table3.md").read_text()
  assert "Table 3: camera conditioning strategies" in markdown and "| Pose-only | 1 |" in markdown
  assert printed[0] == str(out) and printed[-1].startswith("| PostCam (RT+Render) | 2 |")
  summary = json.loads((out / "pose_only" / "summary.json").read_text())
  assert summary["all"]["videos"] == 2


def test_table_refuses_a_run_that_is_not_one_of_its_rows(pose_only_run, tmp_path):
  code, _, err = evaluate(["--workdirs", pose_only_run, "--table", "4", "--out",
                           tmp_path / "t4"])
  assert code == 2 and "is not a row of table 4: its config is 'pose_only', a row of table(s) " \
                        "['3']" in err, err
  assert os.listdir(tmp_path) == []
