"""VAE and umT5 conversion: both layouts from files, the CLI entry points, loaders, and malformed
checkpoints (one error listing every problem, nothing left behind)."""

import argparse
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import save_file
from transformers import UMT5Config as HFConfig
from transformers import UMT5EncoderModel

from postcam_jax import parallel
from postcam_jax.convert import t5 as convert_t5
from postcam_jax.convert import vae as convert_vae
from postcam_jax.convert.common import ConversionError
from postcam_jax.io import model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_SMALL = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
T5_SMALL = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                feed_forward_proj="gated-gelu", dropout_rate=0.0)


@pytest.fixture(scope="module")
def vae_sd():
  torch.manual_seed(0)
  return {k: v.clone() for k, v in AutoencoderKLWan(**VAE_SMALL).state_dict().items()}


@pytest.fixture(scope="module")
def t5_model():
  torch.manual_seed(0)
  return UMT5EncoderModel(HFConfig(**T5_SMALL)).eval()


def t5_wan_layout(sd):
  out = {}
  for e in convert_t5.T5_TABLE:
    for i in range(T5_SMALL["num_layers"] if "{i}" in e.wan else 1):
      out[e.wan.replace("{i}", str(i))] = sd[e.diffusers[0].replace("{i}", str(i))]
  return out


def vae_wan_layout(sd):
  cfg = convert_vae.infer_config(_dict_source(sd), "diffusers")
  return {e.wan: sd[e.diffusers] for e in convert_vae.vae_table(cfg)}


def _dict_source(sd):
  from postcam_jax.convert.common import DictSource  # pylint: disable=import-outside-toplevel
  return DictSource({k: v.numpy() for k, v in sd.items()})


def cli(module, argv):
  parser = argparse.ArgumentParser()
  module.add_arguments(parser)
  return module.run(parser.parse_args(argv))


def assert_nothing_left(parent, output):
  assert not os.path.exists(output)
  leftovers = [f for f in os.listdir(parent) if f.startswith(f".{os.path.basename(output)}")]
  assert not leftovers, leftovers


def test_vae_both_layouts_through_the_cli(vae_sd, tmp_path):
  save_file(vae_sd, tmp_path / "vae.safetensors")
  torch.save(vae_wan_layout(vae_sd), tmp_path / "Wan2.1_VAE.pth")
  assert cli(convert_vae, ["--input", str(tmp_path / "vae.safetensors"),
                           "--output", str(tmp_path / "a")]) == 0
  assert cli(convert_vae, ["--input", str(tmp_path / "Wan2.1_VAE.pth"),
                           "--output", str(tmp_path / "b"), "--dtype", "bfloat16"]) == 0
  a = model_dir.read_model_json(tmp_path / "a")
  b = model_dir.read_model_json(tmp_path / "b")
  assert (a["format"], b["format"], a["kind"]) == ("diffusers", "wan", "wan_vae")
  assert a["config"] == b["config"]
  va = model_dir.load_vae(str(tmp_path / "a"))
  vb = model_dir.load_vae(str(tmp_path / "b"))  # bf16 on disk, restored as float32
  fa, fb = model_dir.to_numpy_flat(va), model_dir.to_numpy_flat(vb)
  assert fb["decoder/conv_out/kernel"].dtype == np.float32
  w = vae_sd["decoder.conv_out.weight"].numpy()
  np.testing.assert_array_equal(fa["decoder/conv_out/kernel"], np.moveaxis(w, (0, 1), (-1, -2)))
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  for k in fa:  # the bf16 conversion holds exactly the bf16 rounding of each float32 weight
    np.testing.assert_array_equal(fb[k], fa[k].astype(ml_dtypes.bfloat16).astype(np.float32),
                                  err_msg=k)
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert_vae.convert_vae(str(tmp_path / "vae.safetensors"), str(tmp_path / "a"))
  convert_vae.convert_vae(str(tmp_path / "vae.safetensors"), str(tmp_path / "a"), overwrite=True)


def test_t5_both_layouts_and_bundled_tokenizer(t5_model, tmp_path):
  t5_model.save_pretrained(tmp_path / "text_encoder")  # safetensors + config.json
  torch.save(t5_wan_layout(t5_model.state_dict()), tmp_path / "umt5.pth")
  # A tokenizer folder is bundled into the output and loaded with the model.
  import sentencepiece  # pylint: disable=import-outside-toplevel
  (tmp_path / "tok").mkdir()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(["a cat on a mat", "the dog runs"] * 20), vocab_size=20,
      model_prefix=str(tmp_path / "tok" / "spiece"), pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2, hard_vocab_limit=False)
  assert cli(convert_t5, ["--input", str(tmp_path / "text_encoder"),
                          "--output", str(tmp_path / "a")]) == 0
  assert cli(convert_t5, ["--input", str(tmp_path / "umt5.pth"), "--output", str(tmp_path / "b"),
                          "--tokenizer", str(tmp_path / "tok")]) == 0
  assert model_dir.read_model_json(tmp_path / "b")["format"] == "wan"
  ea = model_dir.load_text_encoder(str(tmp_path / "a"))
  eb = model_dir.load_text_encoder(str(tmp_path / "b"))
  assert ea.tokenizer is None and eb.tokenizer is not None
  fa, fb = model_dir.to_numpy_flat(ea.model), model_dir.to_numpy_flat(eb.model)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
  states, lengths = eb.encode_text(["a cat", "the dog runs on a mat"])
  assert states.shape == (2, 512, 16) and np.asarray(lengths).tolist()[0] >= 2
  ids = np.array([[5, 9, 1, 0, 0]])
  mask = ids > 0
  mask[0, 2] = True
  with torch.no_grad():
    want = t5_model(input_ids=torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
  got = np.asarray(ea.encode_ids(ids, mask))
  np.testing.assert_allclose(got[0, :3], want.numpy()[0, :3], rtol=1e-5, atol=1e-5)
  # Restored straight into shards on a mesh (FSDP over the model width), same outputs.
  mesh = parallel.make_mesh({"fsdp": jax.device_count()})
  sharded = model_dir.load_text_encoder(str(tmp_path / "a"), mesh=mesh)
  kernel = sharded.model.blocks.q.kernel[...]
  if jax.device_count() > 1:
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  np.testing.assert_allclose(np.asarray(sharded.encode_ids(ids, mask)), got, rtol=1e-6,
                             atol=1e-6)


def _corrupt(sd, missing, wrong_shape):
  bad = dict(sd)
  del bad[missing]
  bad["encoder.bogus.weight"] = torch.zeros(3)
  bad[wrong_shape] = torch.zeros(7, 7)
  return bad


@pytest.mark.parametrize("kind", ["vae", "t5"])
def test_malformed_checkpoints_report_everything_and_leave_nothing(kind, vae_sd, t5_model,
                                                                   tmp_path):
  if kind == "vae":
    convert = convert_vae.convert_vae
    sd = vae_sd
    missing, wrong = "decoder.up_blocks.1.resnets.0.conv1.bias", "decoder.conv_out.weight"
  else:
    convert = convert_t5.convert_t5
    sd = dict(t5_model.state_dict())
    missing = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    wrong = "encoder.final_layer_norm.weight"
  out = str(tmp_path / "out")
  save_file({k: v.clone() for k, v in _corrupt(sd, missing, wrong).items()},
            tmp_path / "bad.safetensors")
  with pytest.raises(ConversionError) as err:
    convert(str(tmp_path / "bad.safetensors"), out)
  message = str(err.value)
  assert "3 problem(s)" in message
  assert "missing key" in message and "unexpected key 'encoder.bogus.weight'" in message
  assert f"wrong shape for '{wrong}'" in message and "got (7, 7)" in message
  assert_nothing_left(tmp_path, out)
  # The real tool prints the same single error and exits 2, leaving nothing.
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_weights.py"), kind,
                         "--input", str(tmp_path / "bad.safetensors"), "--output", out],
                        capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "3 problem(s)" in proc.stderr and "Traceback" not in proc.stderr
  assert_nothing_left(tmp_path, out)
  # Truncated files: safetensors and .pth.
  save_file({k: v.clone() for k, v in sd.items()}, tmp_path / "ok.safetensors")
  data = (tmp_path / "ok.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
  torch.save(sd, tmp_path / "ok.pth")
  data = (tmp_path / "ok.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
  for cut in ("cut.safetensors", "cut.pth"):
    with pytest.raises(ConversionError, match="unreadable|truncated|cannot"):
      convert(str(tmp_path / cut), out)
    assert_nothing_left(tmp_path, out)
  # The wrong layout forced by --format: every key is unexpected, in one error.
  with pytest.raises(ConversionError, match="problem"):
    convert(str(tmp_path / "ok.safetensors"), out, fmt="wan")
  assert_nothing_left(tmp_path, out)


def test_loaders_check_the_model_kind(vae_sd, tmp_path):
  save_file(vae_sd, tmp_path / "vae.safetensors")
  convert_vae.convert_vae(str(tmp_path / "vae.safetensors"), str(tmp_path / "vae"))
  with pytest.raises(ValueError, match="expected 'umt5'"):
    model_dir.load_text_encoder(str(tmp_path / "vae"))
  with pytest.raises(FileNotFoundError, match="convert"):
    model_dir.load_vae(str(tmp_path / "nothing"))
  with pytest.raises(ConversionError, match="cannot tell the key layout"):
    convert_vae.detect_format(["foo.weight"])
