"""tools/convert_weights.py against bad inputs and reruns: --overwrite never deletes a user's
folder or an input, a non-finite weight is refused at conversion and at load naming the tensor,
output paths are checked before any work, a killed run's staging is cleaned by the next one.
Every refusal is one line with exit status 2 and leaves nothing behind."""

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from postcam_jax.convert import postcam as postcam_convert
from postcam_jax.core import atomic
from postcam_jax.io import model_dir
from postcam_jax.models.postcam import PostCamConfig, PostCamModel
from tests.conftest import REPO

HOST = atomic._HOST  # pylint: disable=protected-access (staging names of other processes)


def load_tool():
  spec = importlib.util.spec_from_file_location(
      "convert_weights_tool", os.path.join(REPO, "tools", "convert_weights.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TOOL = load_tool()
CFG = PostCamConfig.tiny()


def random_params(seed=0) -> dict:
  rng = np.random.default_rng(seed)
  abstract = model_dir.abstract_params(lambda: PostCamModel(CFG, rngs=nnx.Rngs(0)))
  return {k: (rng.standard_normal(v.shape) * 0.05).astype(np.float32) for k, v in abstract.items()}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """A tiny PostCam in the release's layout (a .safetensors with config.json beside it), the
  user's folder of it."""
  folder = tmp_path_factory.mktemp("user") / "checkpoints"
  folder.mkdir()
  state = postcam_convert.release_state_dict(random_params(), CFG.num_layers)
  save_file(state, str(folder / "postcam.safetensors"))
  (folder / "config.json").write_text(json.dumps({"num_heads": CFG.num_heads,
                                                   "text_len": CFG.text_len}))
  return folder, state


def convert(capsys, *argv) -> tuple[int, str]:
  code = TOOL.main([str(a) for a in argv])
  return code, capsys.readouterr().err.strip()


def assert_refused(code, err, needle):
  assert code == 2, err
  assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err


def hidden(folder) -> list[str]:
  return [n for n in os.listdir(folder) if n.startswith(".")]


def test_nan_weight_is_refused_naming_the_tensor(release, tmp_path, capsys):
  _, state = release
  bad = dict(state)
  bad["blocks.1.ffn.0.weight"] = state["blocks.1.ffn.0.weight"].copy()
  bad["blocks.1.ffn.0.weight"][3, 5] = np.nan
  save_file(bad, str(tmp_path / "nan.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps({"num_heads": CFG.num_heads,
                                                     "text_len": CFG.text_len}))
  code, err = convert(capsys, "postcam", "--input", tmp_path / "nan.safetensors", "--output",
                      tmp_path / "out")
  assert_refused(code, err, "non-finite value (NaN or Inf) in 'blocks.1.ffn.0.weight' at index "
                            "(3, 5)")
  assert sorted(os.listdir(tmp_path)) == ["config.json", "nan.safetensors"]


def test_nan_weight_is_refused_at_load(tmp_path, capsys):
  """A model directory written with a NaN (by a bug, a bad disk): every load_* refuses it naming
  the first bad tensor and index; export-postcam, which loads it, says so in one line."""
  params = random_params()
  params["blocks/ffn/fc1/kernel"][1, 7, 2] = np.inf
  arch = {k: postcam_convert.arch_value(CFG, k) for k in postcam_convert.ARCH_FIELDS}
  model_dir.save_model(tmp_path / "model", kind="postcam", config=arch, params=params)
  with pytest.raises(model_dir.NonFiniteWeightsError, match=r"blocks/ffn/fc1/kernel\[1, 7, 2\]"):
    model_dir.load_postcam(tmp_path / "model")
  code, err = convert(capsys, "export-postcam", "--input", tmp_path / "model", "--output",
                      tmp_path / "postcam.ckpt")
  assert_refused(code, err, "parameter blocks/ffn/fc1/kernel[1, 7, 2] is NaN or Inf")
  assert sorted(os.listdir(tmp_path)) == ["model"]


def test_overwrite_never_deletes_the_folder_that_holds_the_input(release, capsys):
  folder, _ = release
  before = sorted(os.listdir(folder))
  code, err = convert(capsys, "postcam", "--input", folder / "postcam.safetensors", "--output",
                      folder, "--overwrite")
  assert_refused(code, err, "holds the input")
  assert sorted(os.listdir(folder)) == before and not hidden(folder.parent)


def test_overwrite_of_a_model_dir_holding_the_input_is_refused(release, tmp_path, capsys):
  """Even a folder the project made: the input copied into a converted model directory."""
  folder, _ = release
  out = tmp_path / "model"
  assert convert(capsys, "postcam", "--input", folder / "postcam.safetensors", "--output",
                 out)[0] == 0
  os.link(folder / "postcam.safetensors", out / "postcam.safetensors")
  code, err = convert(capsys, "postcam", "--input", out / "postcam.safetensors", "--output", out,
                      "--overwrite")
  assert_refused(code, err, f"output {out} holds the input {out / 'postcam.safetensors'}")
  assert (out / "postcam.safetensors").exists() and (out / model_dir.MODEL_JSON).exists()
  # init-postcam onto its own input.
  code, err = convert(capsys, "init-postcam", "--wan", out, "--output", out, "--overwrite")
  assert_refused(code, err, "is the input")


def test_overwrite_onto_a_plain_file_or_under_one(release, tmp_path, capsys):
  folder, _ = release
  (tmp_path / "notes.txt").write_text("mine")
  for output, needle in ((tmp_path / "notes.txt", "is a file, not a folder"),
                         (tmp_path / "notes.txt" / "model", "which is a file, not a folder")):
    code, err = convert(capsys, "postcam", "--input", folder / "postcam.safetensors", "--output",
                        output, "--overwrite")
    assert_refused(code, err, needle)
  assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_only_a_model_directory(release, tmp_path, capsys):
  folder, _ = release
  src = folder / "postcam.safetensors"
  user = tmp_path / "photos"
  user.mkdir()
  (user / "a.jpg").write_text("x")
  code, err = convert(capsys, "postcam", "--input", src, "--output", user, "--overwrite")
  assert_refused(code, err, "was not made by postcam-jax (no model.json in it)")
  assert os.listdir(user) == ["a.jpg"]
  out = tmp_path / "model"
  assert convert(capsys, "postcam", "--input", src, "--output", out)[0] == 0
  code, err = convert(capsys, "postcam", "--input", src, "--output", out)
  assert_refused(code, err, "exists; pass --overwrite to replace it")
  (out / "stale.txt").write_text("from an earlier conversion")
  assert convert(capsys, "postcam", "--input", src, "--output", out, "--overwrite")[0] == 0
  assert "stale.txt" not in os.listdir(out)
  assert sorted(os.listdir(tmp_path)) == ["model", "photos"]
  code, err = convert(capsys, "export-postcam", "--input", out, "--output", out)
  assert_refused(code, err, "is a folder, not a file")


def test_a_killed_conversions_staging_is_cleaned_by_the_next(release, tmp_path, capsys):
  folder, _ = release
  proc = subprocess.Popen(["true"])
  proc.wait()
  stale = tmp_path / f".model.partial-{HOST}-{proc.pid}-abcd_123"
  (stale / "params").mkdir(parents=True)
  code, err = convert(capsys, "postcam", "--input", folder / "postcam.safetensors", "--output",
                      tmp_path / "model")
  assert code == 0, err
  assert f"note: removed {stale}, left by an interrupted run (pid {proc.pid})" in err
  assert os.listdir(tmp_path) == ["model"]


def test_random_params_fill_every_parameter_with_the_documented_statistics():
  abstract = model_dir.abstract_params(lambda: PostCamModel(CFG, rngs=nnx.Rngs(0)))
  params = model_dir.random_params(lambda: PostCamModel(CFG, rngs=nnx.Rngs(0)), seed=4)
  assert params.keys() == abstract.keys()
  for key, leaf in abstract.items():
    value = params[key]
    assert value.shape == leaf.shape and value.dtype == np.float32, key
    if value.ndim == 1:  # vectors: biases 0, scales 1
      assert np.all(value == (0.0 if key.endswith("bias") else 1.0)), key
  kernel = max((v for v in params.values() if v.ndim == 2), key=lambda v: v.size)
  assert abs(kernel.std() * np.sqrt(kernel.shape[0]) - 1.0) < 0.05  # N(0, 1 / fan_in)
  again = model_dir.random_params(lambda: PostCamModel(CFG, rngs=nnx.Rngs(0)), seed=4)
  assert all(np.array_equal(params[k], again[k]) for k in params)  # the seed decides
