"""Wan DiT conversion: input kinds (sharded, single file, .pth), malformed checkpoints."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from postcam_jax.convert import wan as wan_convert
from postcam_jax.convert.common import ConversionError
from postcam_jax.io import model_dir
from tests import reference
from tests.wan_parity_test import run_cli


@pytest.fixture(scope="module")
def original(tmp_path_factory):
  """A tiny model's weights under the original Wan names, as one safetensors file + config."""
  d = tmp_path_factory.mktemp("orig")
  cfg = reference.tiny_wan_kwargs()
  ref = reference.diffusers_wan(cfg, seed=11)
  sd = reference.original_state_dict(ref)
  save_file(sd, str(d / "diffusion_pytorch_model.safetensors"))
  (d / "config.json").write_text(json.dumps({"dim": cfg["dim"], "num_heads": cfg["num_heads"]}))
  ref.save_pretrained(d / "sharded", max_shard_size="100KB")
  return d, sd


def leftovers(parent):
  return [p for p in os.listdir(parent) if p.startswith(".")]


def test_sharded_and_pth_inputs_convert_to_the_same_weights(original, tmp_path):
  d, sd = original
  assert any(f.endswith(".index.json") for f in os.listdir(d / "sharded"))
  a = wan_convert.convert_dit(d / "sharded", tmp_path / "a")
  pth = tmp_path / "w" / "model.pth"
  pth.parent.mkdir()
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, pth)
  (pth.parent / "config.json").write_text((d / "config.json").read_text())
  b = wan_convert.convert_dit(pth, tmp_path / "b")
  assert a == b
  pa = model_dir.to_numpy_flat(model_dir.load_dit(tmp_path / "a"))
  pb = model_dir.to_numpy_flat(model_dir.load_dit(tmp_path / "b"))
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
  # bfloat16 output
  wan_convert.convert_dit(d / "sharded", tmp_path / "c", dtype="bfloat16")
  assert model_dir.read_model_json(tmp_path / "c")["dtype"] == "bfloat16"


def write_variant(tmp_path, sd, mutate):
  sd = dict(sd)
  mutate(sd)
  path = tmp_path / "bad.safetensors"
  save_file(sd, str(path))
  (tmp_path / "config.json").write_text(json.dumps({"num_heads": 2}))
  return path


@pytest.mark.parametrize("mutate,needle", [
    (lambda sd: sd.pop("blocks.1.ffn.2.weight"), "missing key 'blocks.1.ffn.2.weight'"),
    (lambda sd: sd.__setitem__("blocks.0.self_attn.extra", np.zeros(3, np.float32)),
     "unexpected key 'blocks.0.self_attn.extra'"),
    (lambda sd: sd.__setitem__("head.head.bias", np.zeros(5, np.float32)),
     "wrong shape for 'head.head.bias'"),
])
def test_malformed_checkpoint_one_error_no_output(original, tmp_path, mutate, needle):
  _, sd = original
  path = write_variant(tmp_path, sd, mutate)
  out = tmp_path / "out"
  proc = run_cli("dit", "--input", str(path), "--output", str(out))
  assert proc.returncode == 2
  assert needle in proc.stderr and "1 problem" in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr
  assert not out.exists() and not leftovers(tmp_path)


def test_all_problems_reported_together(original, tmp_path):
  _, sd = original
  def mutate(sd):
    sd.pop("patch_embedding.bias")
    sd["junk"] = np.zeros(1, np.float32)
    sd["blocks.0.norm3.weight"] = np.zeros(3, np.float32)
  path = write_variant(tmp_path, sd, mutate)
  with pytest.raises(ConversionError) as e:
    wan_convert.convert_dit(path, tmp_path / "out")
  assert len(e.value.problems) == 3
  assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_truncated_file(original, tmp_path):
  d, _ = original
  data = (d / "diffusion_pytorch_model.safetensors").read_bytes()
  bad = tmp_path / "trunc.safetensors"
  bad.write_bytes(data[: len(data) // 2])
  proc = run_cli("dit", "--input", str(bad), "--output", str(tmp_path / "out"))
  assert proc.returncode == 2 and "unreadable" in proc.stderr, proc.stderr
  assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_existing_output_is_not_clobbered(original, tmp_path):
  d, _ = original
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  proc = run_cli("dit", "--input", str(d / "sharded"), "--output", str(out))
  assert proc.returncode == 2 and "--overwrite" in proc.stderr
  assert (out / "keep.txt").exists()


def test_failure_while_writing_leaves_nothing(original, tmp_path, monkeypatch):
  """The output is written beside its final place and renamed at the end: a failure in the
  middle of the Orbax save (here: a full disk) leaves neither the output nor a partial one."""
  d, _ = original
  real_save = model_dir.ocp.Checkpointer.save

  def save_then_fail(self, path, *args, **kwargs):
    real_save(self, path, *args, **kwargs)  # the parameters are on disk, in the staging dir
    assert os.listdir(tmp_path) and leftovers(tmp_path)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(model_dir.ocp.Checkpointer, "save", save_then_fail)
  with pytest.raises(OSError, match="No space left"):
    wan_convert.convert_dit(d / "diffusion_pytorch_model.safetensors", tmp_path / "out")
  assert os.listdir(tmp_path) == []
