"""``tools/convert_weights.py da3``: a ``DepthAnything3.save_pretrained`` directory of a random
da3-small converts, loads with ``load_da3`` and reproduces the release's outputs; bad input
(unknown model_name, missing key, wrong shape, no config) is one clear error and leaves nothing.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from postcam_jax.convert import da3 as convert_da3
from postcam_jax.convert.common import ConversionError
from postcam_jax.io import model_dir
from postcam_jax.models.da3 import DA3Config
from tests import da3_reference as ref

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
  """A save_pretrained directory of a random da3-small and its torch model."""
  path = tmp_path_factory.mktemp("da3") / "release"
  torch_model, _ = ref.build_torch(DA3Config.from_name("da3-small"), seed=21, preset=True)
  torch_model.save_pretrained(str(path))
  return str(path), torch_model


def tool(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_weights.py"), "da3",
                         *args], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def assert_nothing_left(parent, out):
  assert not os.path.exists(out)
  assert not [p for p in os.listdir(parent) if p.startswith(f".{os.path.basename(out)}")]


def test_tool_converts_and_the_model_reproduces_the_release(release_dir, tmp_path):
  src, torch_model = release_dir
  with open(os.path.join(src, "model.safetensors"), "rb") as f:  # the tied ray-head norm
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
  assert "model.head.scratch.output_conv2_aux.3.2.weight" in header["__metadata__"]
  out = str(tmp_path / "da3")
  proc = tool("--input", src, "--output", out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "converted da3-small" in proc.stdout
  model = model_dir.load_da3(out)
  assert model.cfg == DA3Config.from_name("da3-small")
  x = np.random.default_rng(0).standard_normal((1, 3, 28, 42, 3)).astype(np.float32)
  want = ref.net_forward(torch_model, x)
  got = jax.tree.map(np.asarray, jax.jit(lambda m, v: m(v))(model, jnp.asarray(x)))
  for key in ("depth", "depth_conf", "extrinsics", "intrinsics"):
    assert ref.relative_error(got[key], want[key]) < TOL, key
  np.testing.assert_array_equal(got["ref_view"], want["ref_view"])
  with pytest.raises(ValueError, match="holds a 'da3' model"):
    model_dir.load_vae(out)


def _copy(src, dst, tensors=None, config=None):
  os.makedirs(dst)
  if tensors is None:
    shutil.copy(os.path.join(src, "model.safetensors"), dst)
  else:
    save_file(tensors, os.path.join(dst, "model.safetensors"))
  if config is not False:
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(config or {"model_name": "da3-small"}, f)


def test_bad_inputs_are_one_error_and_leave_nothing(release_dir, tmp_path):
  src, _ = release_dir
  out = str(tmp_path / "out")
  # An unknown preset name: one line.
  _copy(src, tmp_path / "unknown", config={"model_name": "da3-huge"})
  proc = tool("--input", str(tmp_path / "unknown"), "--output", out)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "model_name 'da3-huge' is not a DA3 preset" in proc.stderr
  assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1  # head: problem
  assert_nothing_left(tmp_path, out)
  # A missing key, a wrong shape and an extra key: all in one error.
  tensors = load_file(os.path.join(src, "model.safetensors"))
  del tensors["model.backbone.pretrained.blocks.7.attn.qkv.weight"]
  tensors["model.cam_dec.fc_t.weight"] = np.zeros((5, 768), np.float32)
  tensors["model.head.bogus.weight"] = np.zeros((2,), np.float32)
  _copy(src, tmp_path / "broken", tensors=tensors)
  with pytest.raises(ConversionError) as err:
    convert_da3.convert_da3(str(tmp_path / "broken"), out)
  message = str(err.value)
  assert "3 problem(s)" in message
  assert "missing key 'model.backbone.pretrained.blocks.7.attn.qkv.weight'" in message
  assert "wrong shape for 'model.cam_dec.fc_t.weight'" in message and "got (5, 768)" in message
  assert "unexpected key 'model.head.bogus.weight'" in message
  assert_nothing_left(tmp_path, out)
  # No config.json, and not a directory of the release at all.
  _copy(src, tmp_path / "noconfig", config=False)
  with pytest.raises(ConversionError, match="no config.json"):
    convert_da3.convert_da3(str(tmp_path / "noconfig"), out)
  with pytest.raises(ConversionError, match="model.safetensors"):
    convert_da3.convert_da3(str(tmp_path), out)
  assert_nothing_left(tmp_path, out)
