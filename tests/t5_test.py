"""umT5 encoder and text pipeline: parity with transformers' UMT5EncoderModel (random weights,
small config, padded batches), position buckets, Wan's text cleaning, the tokenizer backends."""

import numpy as np
import pytest
import sentencepiece
import torch
from flax import nnx
from transformers import T5Tokenizer, UMT5EncoderModel
from transformers import UMT5Config as HFConfig
from transformers.models.umt5.modeling_umt5 import UMT5Attention

from postcam_jax.convert import common
from postcam_jax.convert import t5 as convert_t5
from postcam_jax.io import model_dir
from postcam_jax.models import tokenizer
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder, relative_position_buckets

HF_SMALL = dict(vocab_size=300, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0)


def make_reference(seed=0):
  torch.manual_seed(seed)
  ref = UMT5EncoderModel(HFConfig(**HF_SMALL)).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if "layer_norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return ref


def load_from_state_dict(sd) -> UMT5Encoder:
  """Convert an in-memory state dict with the converter's table and build the model."""
  source = common.DictSource({k: v.numpy() for k, v in sd.items()})
  fmt = convert_t5.detect_format(source.keys())
  cfg = convert_t5.infer_config(source, fmt)
  abstract = model_dir.abstract_params(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
  params = common.convert_tensors(source, convert_t5.rules(fmt), abstract)
  model = UMT5Encoder(cfg, rngs=nnx.Rngs(1))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, model_dir.unflatten(params))
  nnx.update(model, state)
  return model


@pytest.fixture(scope="module")
def reference():
  return make_reference()


def test_buckets_match_transformers():
  attn = UMT5Attention(HFConfig(**HF_SMALL), has_relative_attention_bias=True)
  length = 600  # every distance up to 599, far past max_distance
  pos = torch.arange(length)
  rel = pos[None, :] - pos[:, None]
  want = attn._relative_position_bucket(rel).numpy()  # pylint: disable=protected-access
  np.testing.assert_array_equal(relative_position_buckets(length, 32, 128), want)


def test_parity_with_transformers_padded_batch(reference):
  model = load_from_state_dict(reference.state_dict())
  length = 160  # longer than max_distance: the far buckets are used
  lengths = np.array([160, 97, 5, 1])
  rng = np.random.default_rng(0)
  mask = np.arange(length)[None, :] < lengths[:, None]
  ids = np.where(mask, rng.integers(1, HF_SMALL["vocab_size"], (4, length)), 0)
  with torch.no_grad():
    want = reference(input_ids=torch.from_numpy(ids),
                     attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state
  want = want.numpy()
  got = np.asarray(tokenizer.TextEncoder(model, None).encode_ids(ids, mask))
  assert got.shape == (4, length, 32)
  for b, n in enumerate(lengths):
    err = np.abs(got[b, :n] - want[b, :n]).max() / np.abs(want[b, :n]).max()
    assert err <= 1e-5, (b, err)
    assert np.all(got[b, n:] == 0.0)  # exactly zero, not small


def test_wan_layout_gives_the_same_model(reference):
  sd = reference.state_dict()
  renamed = {}
  for e in convert_t5.T5_TABLE:
    for i in range(HF_SMALL["num_layers"] if "{i}" in e.wan else 1):
      renamed[e.wan.replace("{i}", str(i))] = sd[e.diffusers[0].replace("{i}", str(i))]
  assert convert_t5.detect_format(renamed) == "wan"
  a = model_dir.to_numpy_flat(load_from_state_dict(renamed))
  b = model_dir.to_numpy_flat(load_from_state_dict(sd))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_presets():
  cfg = UMT5Config.umt5_xxl()
  assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.ffn_dim) == (
      4096, 24, 64, 64, 10240)
  abstract = model_dir.abstract_params(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)))
  assert abs(sum(int(np.prod(v.shape)) for v in abstract.values()) - 5.68e9) < 0.01e9
  assert abstract["blocks/q/kernel"].shape == (24, 4096, 4096)
  assert UMT5Config.from_dict(UMT5Config.tiny().to_dict()) == UMT5Config.tiny()


def test_clean_text():
  assert tokenizer.clean_text("  a &amp;amp; b\n\t c  ") == "a & b c"
  assert tokenizer.clean_text("schÃ¶n") == "schön"  # ftfy repairs mojibake


CORPUS = ["A cat sits on the mat.", "The quick brown fox jumps over the lazy dog.",
          "Camera pans left across a snowy mountain at sunset.", "Zwei Hunde spielen im Park."]


@pytest.fixture(scope="module")
def spm_dirs(tmp_path_factory):
  """A tiny SentencePiece vocabulary with T5's special ids, as a spiece.model folder and as the
  transformers tokenizer files saved from it."""
  root = tmp_path_factory.mktemp("tok")
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS * 20), model_prefix=str(root / "spiece"), vocab_size=40,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
      hard_vocab_limit=False)
  (root / "sp").mkdir()
  (root / "spiece.model").rename(root / "sp" / "spiece.model")
  T5Tokenizer.from_pretrained(str(root / "sp"), extra_ids=0).save_pretrained(str(root / "hf"))
  return root / "sp", root / "hf"


def test_tokenizer_backends_agree(spm_dirs):
  sp_dir, hf_dir = spm_dirs
  a = tokenizer.Tokenizer(sp_dir, text_len=24)
  b = tokenizer.Tokenizer(hf_dir, text_len=24)
  assert (a.backend, b.backend) == ("sentencepiece", "transformers")
  prompts = ["A cat  jumps over the &amp;amp; dog.", "snowy park", "x" * 200]
  ids_a, mask_a = a(prompts)
  ids_b, mask_b = b(prompts)
  np.testing.assert_array_equal(ids_a, ids_b)
  np.testing.assert_array_equal(mask_a, mask_b)
  assert ids_a.shape == (3, 24) and ids_a.dtype == np.int32
  lengths = mask_a.sum(axis=1)
  for row, n in enumerate(lengths):
    assert ids_a[row, n - 1] == 1  # EOS last, also when truncated
    assert np.all(ids_a[row, n:] == 0)  # pad id 0
  assert lengths[2] == 24  # truncated to text_len with the EOS kept


def test_encode_text_end_to_end(spm_dirs, tmp_path):
  sp_dir, _ = spm_dirs
  cfg = UMT5Config.tiny()
  model = UMT5Encoder(cfg, rngs=nnx.Rngs(0))
  encoder = tokenizer.TextEncoder(model, tokenizer.Tokenizer(sp_dir, text_len=cfg.text_len))
  states, lengths = encoder.encode_text(["A cat sits.", "The quick brown fox jumps over"])
  assert states.shape == (2, cfg.text_len, cfg.dim)
  lengths = np.asarray(lengths)
  assert lengths[0] < lengths[1] <= cfg.text_len
  for row, n in enumerate(lengths):
    assert np.all(np.asarray(states)[row, n:] == 0.0)
    assert np.all(np.abs(np.asarray(states)[row, :n]).sum(-1) > 0)
  with pytest.raises(ValueError, match="no tokenizer"):
    tokenizer.TextEncoder(model, None).encode_text("a")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tokenizer.Tokenizer(tmp_path / "nothing")
  with pytest.raises(TypeError, match="prompts must be strings"):
    encoder.encode_text([1, 2])
