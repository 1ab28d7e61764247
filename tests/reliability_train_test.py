"""``python -m postcam_jax.train`` against reruns and bad flags: a resumed workdir's stored run is
compared with the new config (an incompatible model/data change is one line naming the fields,
a compatible one is logged), a ``--config.`` key that names no field or a value that does not
parse is one line, a workdir that is a file is refused, and ``metrics.jsonl`` survives a line
cut by a crash (the resumed writer ends it, the reader skips and reports it)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import logging

from configs import postcam_tiny
from postcam_jax import training
from postcam_jax.training import checkpointing, metrics, resume
from tests.conftest import REPO

TINY = os.path.join(REPO, "configs", "postcam_tiny.py")


def save_run(workdir, config, step=20):
  """A workdir with one checkpoint whose meta is what ``train_and_evaluate`` stores."""
  cfg = training.model_config(config)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, keep=1,
                                    async_save=False)
  meta = {"config": config.to_json(), "model": cfg.to_dict(),
          **resume.backbone_reference(config), "stage": "pose"}
  ckpt.save(step, {"step": np.int64(step), "x": np.zeros(3, np.float32)}, None, meta, force=True)
  ckpt.close()


def changed(**updates):
  """The tiny config with ``{"a.b": value}`` changes."""
  config = postcam_tiny.get_config()
  with config.unlocked():
    for path, value in updates.items():
      *parents, name = path.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[name] = value
  return config


def test_resume_compares_the_stored_run(tmp_path):
  save_run(tmp_path, postcam_tiny.get_config())
  same = postcam_tiny.get_config()
  assert resume.check_resume(str(tmp_path), same, training.model_config(same)) == {}
  # Compatible: learning rate, steps, logging, the remat policy: logged, returned.
  config = changed(**{"optim.lr": 5e-4, "stage_steps": (40, 40), "log_every": 5,
                      "model.remat": "full"})
  got = resume.check_resume(str(tmp_path), config, training.model_config(config))
  assert got == {"log_every": (same.log_every, 5), "model.remat": (same.model.remat, "full"),
                 "optim.lr": (same.optim.lr, 5e-4),
                 "stage_steps": (list(same.stage_steps), [40, 40])}
  # Incompatible: the architecture, the data, the optimizer state's structure, the random
  # backbone's seed: one error naming every field.
  config = changed(**{"model.variant": "kv_sum", "data.height": 64, "optim.accum_steps": 2,
                      "seed": 3, "optim.lr": 5e-4})
  with pytest.raises(resume.ResumeError) as error:
    resume.check_resume(str(tmp_path), config, training.model_config(config))
  message = str(error.value)
  assert len(message.splitlines()) == 1
  for field in (f"model.variant {same.model.variant!r} -> 'kv_sum'",
                f"data.height {same.data.height} -> 64",
                f"optim.accum_steps {same.optim.accum_steps} -> 2",
                f"seed (of the random backbone) {same.seed} -> 3"):
    assert field in message, message
  assert "optim.lr" not in message and "checkpoint step 20" in message
  assert "a new --workdir" in message
  # A fresh workdir has nothing to compare.
  assert resume.check_resume(str(tmp_path / "fresh"), config, training.model_config(config)) == {}


def run_trainer(workdir, *flags):
  return subprocess.run([sys.executable, "-m", "postcam_jax.train", "--config", TINY,
                         "--workdir", str(workdir), *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def assert_one_line(proc, needle):
  err = proc.stderr.strip()
  assert proc.returncode == 2, err[-3000:]
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and needle in lines[0], err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  return lines[0]


def test_resuming_with_another_model_is_one_line(tmp_path):
  save_run(tmp_path, postcam_tiny.get_config())
  proc = run_trainer(tmp_path, "--config.model.variant=kv_sum", "--config.data.height=64")
  line = assert_one_line(proc, "that this config cannot continue")
  base = postcam_tiny.get_config()
  assert f"model.variant {base.model.variant!r} -> 'kv_sum'" in line
  assert f"data.height {base.data.height} -> 64" in line
  assert sorted(os.listdir(tmp_path)) == ["checkpoints"]  # nothing else was started


@pytest.mark.parametrize("flag,needle", [
    ("--config.height=96", "has no field 'height' (overrides change the config's fields, they "
                           "do not add any); did you mean --config.data.height?"),
    ("--config.data.height=tall", "flag --config.data.height=tall"),
], ids=["misplaced", "bad_value"])
def test_bad_config_flags_are_one_line(tmp_path, flag, needle):
  """ml_collections' error for a key that names no field (a typo or a misplaced key; the
  wording and the suggestions: atomic_test::test_one_line_errors) and absl's for a value that
  does not parse, each one line."""
  assert_one_line(run_trainer(tmp_path / "w", flag), needle)
  assert os.listdir(tmp_path) == []


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "w").write_text("mine")
  assert_one_line(run_trainer(tmp_path / "w"), "is a file, not a folder")
  assert (tmp_path / "w").read_text() == "mine"


def test_a_metrics_line_cut_by_a_crash_is_ended_skipped_and_reported(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  writer = metrics.MetricWriter(str(tmp_path), active=True)
  writer.write_scalars(1, {"train/loss": 0.5}, console=False)
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:  # a crash in the middle of a record
    f.write('{"step": 2, "train/lo')
  # The resumed run's writer ends the cut line; its records start on their own lines.
  writer = metrics.MetricWriter(str(tmp_path), active=True)
  writer.write_scalars(2, {"train/loss": 0.25}, console=False)
  writer.close()
  assert any("was incomplete" in w for w in warnings)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert lines[1] == '{"step": 2, "train/lo' and json.loads(lines[2])["step"] == 2
  assert metrics.read_jsonl(str(tmp_path)) == [{"step": 1, "train/loss": 0.5},
                                               {"step": 2, "train/loss": 0.25}]
  assert any("line 2 is not a whole record" in w for w in warnings)
