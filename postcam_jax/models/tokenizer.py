"""Prompts -> umT5 text states, as Wan2.1 prepares them.

Text is cleaned as Wan does (``ftfy.fix_text``, ``html.unescape`` twice, whitespace collapsed),
tokenized with the umT5 SentencePiece vocabulary (through ``transformers``' tokenizer when it is
installed and the folder has its files, else ``sentencepiece`` directly), truncated so the EOS
always fits, EOS appended, padded with id 0 to ``text_len`` (512). The encoder's states at padded
positions are exactly zero, which equals Wan's "trim to the real length, zero-pad to 512".
"""

import html
import importlib.util
import os
import re
from collections.abc import Sequence

import ftfy
import jax.numpy as jnp
import numpy as np
import sentencepiece

from postcam_jax.models.t5 import encode_ids

PAD_ID = 0


def clean_text(text: str) -> str:
  """Wan's prompt cleaning: fix mojibake, unescape HTML twice, collapse whitespace."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
  """umT5 tokenizer: ``tokenizer(prompts) -> (ids [B, text_len] int32, mask [B, text_len] bool)``.

  ``path``: a tokenizer folder (``tokenizer.json``/``tokenizer_config.json`` for transformers,
  or ``spiece.model``) or a SentencePiece ``.model`` file. Nothing is downloaded.
  """

  def __init__(self, path: str, text_len: int = 512, *, backend: str = "auto"):
    path = os.fspath(path)
    if not os.path.exists(path):
      raise FileNotFoundError(f"tokenizer {path} does not exist")
    if backend not in ("auto", "transformers", "sentencepiece"):
      raise ValueError(f"unknown tokenizer backend {backend!r}; choose auto, transformers or "
                       "sentencepiece")
    self.path = path
    self.text_len = text_len
    self._hf = None
    self._sp = None
    hf_files = ("tokenizer.json", "tokenizer_config.json")
    has_hf = os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in hf_files)
    if backend == "transformers" or (backend == "auto" and has_hf and _has_transformers()):
      from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
      self._hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
      return
    model_file = os.path.join(path, "spiece.model") if os.path.isdir(path) else path
    if not os.path.exists(model_file):
      raise FileNotFoundError(f"{path}: no spiece.model (and no transformers tokenizer files "
                              f"{hf_files} usable)")
    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    if self._sp.eos_id() < 0:
      raise ValueError(f"{model_file}: the SentencePiece model defines no EOS token")

  @property
  def backend(self) -> str:
    return "transformers" if self._hf is not None else "sentencepiece"

  def __call__(self, prompts: str | Sequence[str]):
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not all(isinstance(p, str) for p in prompts):
      raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
    texts = [clean_text(p) for p in prompts]
    if self._hf is not None:
      enc = self._hf(texts, padding="max_length", truncation=True, max_length=self.text_len,
                     add_special_tokens=True, return_tensors="np")
      return (np.asarray(enc["input_ids"], np.int32),
              np.asarray(enc["attention_mask"]).astype(bool))
    ids = np.full((len(texts), self.text_len), PAD_ID, np.int32)
    mask = np.zeros((len(texts), self.text_len), bool)
    for row, t in enumerate(texts):
      tokens = self._sp.encode(t)[: self.text_len - 1] + [self._sp.eos_id()]
      ids[row, : len(tokens)] = tokens
      mask[row, : len(tokens)] = True
    return ids, mask


def _has_transformers() -> bool:
  return importlib.util.find_spec("transformers") is not None


class TextEncoder:
  """A umT5 encoder with its tokenizer: ``encode_text(prompts) -> (states, lengths)``."""

  def __init__(self, model, tokenizer: Tokenizer | None):
    self.model = model
    self.tokenizer = tokenizer

  def encode_ids(self, ids, mask):
    """Token ids and mask [B, L] -> states [B, L, D], exactly zero at padded positions."""
    return encode_ids(self.model, ids, mask)

  def encode_text(self, prompts: str | Sequence[str]):
    """Prompts -> (states [B, text_len, D] with padded positions zero, lengths [B] (EOS
    included))."""
    if self.tokenizer is None:
      raise ValueError("this TextEncoder has no tokenizer: convert with --tokenizer, or pass "
                       "tokenizer=<folder or spiece.model> to load_text_encoder")
    ids, mask = self.tokenizer(prompts)
    states = self.encode_ids(ids, mask)
    return states, jnp.asarray(mask.sum(axis=1), jnp.int32)
