"""Held-out pairs sampled by a PostCam model and turned into :class:`report.Clip` s.

A :class:`HeldOutPair` is what the model needs (source and render latents, camera, text states)
plus what the result is measured against (source, render and target pixels, the requested target
poses). They come from a prepared latent dataset (:func:`record_pairs`: the held-out split of
``postcam_jax.data.arrayrecord`` records, decoded by the VAE the records were made with), or from
the trainer's data (``postcam_jax.training.camera_eval``: the synthetic scenes' true pixels).

:func:`sample_latents` runs the release's sampler (``postcam_jax.inference.sampling``) on batches
of pairs: under ``mesh`` the model is sharded as its parameters are and the batch over the data
axes; each pair's noise is seeded by its index, so a pair's sample does not depend on the batch
size. Only the model's inputs of its stage are fed (``camera`` / ``render``: a pose-only model
gets no render, a render-only one no camera).
"""

import contextlib
import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from postcam_jax.data import arrayrecord, codec, pipeline
from postcam_jax.evaluation import camera as camera_lib
from postcam_jax.evaluation import poses, report
from postcam_jax.inference import sampling
from postcam_jax.io import model_dir


@dataclasses.dataclass
class HeldOutPair:
  """One (source, target camera) pair: model inputs [F, h, w, C] latents, camera [11, 12] (RT)
  or [N, 24] (Plucker), context [L, D]; pixels uint8 [T, H, W, 3]; ``target_w2c`` [T, 4, 4]."""
  name: str
  kind: str
  target_w2c: np.ndarray
  source_latent: np.ndarray
  camera: np.ndarray
  context: np.ndarray
  source: np.ndarray
  render_latent: np.ndarray | None = None
  render: np.ndarray | None = None
  target: np.ndarray | None = None


@dataclasses.dataclass
class Subject:
  """A model to measure with its held-out pairs (a trainer workdir, ``training.camera_eval``).

  ``decode``: latent [F, h, w, C] -> video [T, H, W, 3] in [-1, 1]; ``camera``/``render``: the
  inputs of the model's last training stage; ``report``: the config's ``report`` block (the
  ablation row it is, the metrics its tables name), {} when the config has none."""
  label: str
  model: object
  pairs: list[HeldOutPair]
  decode: Callable[[np.ndarray], np.ndarray]
  camera: bool
  render: bool
  mesh: object = None
  report: dict = dataclasses.field(default_factory=dict)
  step: int = 0


def safe_name(text: str) -> str:
  """A file-name-safe version of ``text`` (letters, digits, ``_ . -``)."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "video"


def to_host(x) -> np.ndarray:
  """A (possibly sharded, possibly multi-host) array as one float32 host array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True), np.float32)
  return np.asarray(jax.device_get(x), np.float32)


def upsample4x(video: np.ndarray) -> np.ndarray:
  """A 4x-down render [T, h, w, 3] back to full size (nearest), for the render-only baseline."""
  return np.repeat(np.repeat(np.asarray(video), 4, axis=1), 4, axis=2)


# ----------------------------------------------------------------------------------------------
# Decoders.


def vae_decoder(vae, tile: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  """Latent [F, h, w, C] -> float32 video in [-1, 1] through a loaded Wan-VAE."""
  def decode(latent):
    z = jnp.asarray(latent, jnp.float32)[None].astype(vae.dtype)
    return np.clip(to_host(vae.decode(z, tile=tile))[0], -1.0, 1.0)
  return decode


def load_decoder(vae: str | None = None, codec_file: str | None = None, *, mesh=None,
                 tile: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
  """The decoder of a converted Wan-VAE directory, or of a PCA stand-in codec's state (an .npz
  of ``postcam_jax.data.codec.PCACodec.state()``, what tiny and demo runs encode with)."""
  if (vae is None) == (codec_file is None):
    raise ValueError("give one decoder: --vae DIR (a converted Wan-VAE) or --codec FILE.npz (a "
                     "PCA stand-in codec's state)")
  if vae is not None:
    return vae_decoder(model_dir.load_vae(vae, dtype=jnp.float32, mesh=mesh), tile)
  try:
    with np.load(codec_file) as state:
      return codec.PCACodec.from_state(dict(state)).decode
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f"--codec {codec_file}: not a PCA codec state (.npz with mean, components, "
                     f"scales): {e}") from None


# ----------------------------------------------------------------------------------------------
# Pairs from prepared latent records.


def _pad_text(text: np.ndarray, length: int | None) -> np.ndarray:
  text = np.asarray(text, np.float32)
  if length is None or text.shape[0] >= length:
    return text
  return np.concatenate([text, np.zeros((length - text.shape[0], text.shape[1]), text.dtype)])


def _text(value) -> str:
  """A record's text or number field as a string (TFDS returns text as bytes)."""
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  return str(np.asarray(value).item()) if np.ndim(value) == 0 else str(value)


def record_pairs(data_dir: str, split: str, count: int, decode, *, camera_input: str = "rt",
                 text_len: int | None = None) -> list[HeldOutPair]:
  """The first ``count`` records of ``split`` of a prepared latent dataset, with their pixels
  decoded by ``decode`` (the target's decoded latent is the ground truth: the VAE's own
  reconstruction, so fidelity measures the generation alone; the render baseline is the decoded
  render latent at 4x)."""
  try:
    source = arrayrecord.data_source(data_dir, split)
  except Exception as e:  # TFDS raises its own types for a folder that is no prepared dataset
    raise ValueError(f"--data-dir {data_dir}: no prepared dataset with a split {split!r} ({e})"
                     ) from None
  if len(source) == 0:
    raise ValueError(f"--data-dir {data_dir}: split {split!r} is empty")
  first = source[0]
  if "target_latent" not in first:
    raise ValueError(f"--data-dir {data_dir} holds pixel records; evaluation samples from latent "
                     f"records (python -m postcam_jax.data.prepare with the VAE and text encoder)")
  make_camera = None if camera_input == "rt" else pipeline.camera_map(camera_input)
  out = []
  for i in range(min(count, len(source))):
    record = dict(source[i])
    if make_camera is not None:
      record = make_camera.map(record)
    w2c = np.asarray(record["target_w2c"], np.float64)
    render_latent = record.get("render_latent")
    name = "_".join(safe_name(_text(record[k]))
                    for k in ("scene", "source_camera", "target_camera", "start"))
    out.append(HeldOutPair(
        name=f"{i:03d}_{name}", kind=camera_lib.trajectory_kind(w2c), target_w2c=w2c,
        source_latent=np.asarray(record["source_latent"], np.float32),
        camera=np.asarray(record["camera"], np.float32),
        context=_pad_text(record["text_embedding"], text_len),
        source=poses.to_uint8(decode(record["source_latent"])),
        target=poses.to_uint8(decode(record["target_latent"])),
        render_latent=None if render_latent is None else np.asarray(render_latent, np.float32),
        render=None if render_latent is None else upsample4x(poses.to_uint8(decode(
            render_latent)))))
  return out


# ----------------------------------------------------------------------------------------------
# Sampling and scoring.


def _stack_context(pairs: list[HeldOutPair]) -> np.ndarray:
  length = max(p.context.shape[0] for p in pairs)
  return np.stack([_pad_text(p.context, length) for p in pairs])


def sample_latents(model, pairs: list[HeldOutPair], *, camera: bool = True, render: bool = True,
                   steps: int = 50, shift: float = 5.0, solver: str = "euler",
                   guidance: float = 1.0, negative: np.ndarray | None = None, seed: int = 0,
                   batch: int = 1, mesh=None) -> list[np.ndarray]:
  """The sampled target latent [F, h, w, C] of each pair (module docstring). ``negative``: the
  negative prompt's states [L, D], needed when ``guidance`` != 1."""
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  if render and any(p.render_latent is None for p in pairs):
    raise ValueError("the model reads the render, but these pairs have no render latent")
  guided = float(guidance) != 1.0
  if guided and negative is None:
    raise ValueError("guidance != 1 needs the negative prompt's states")
  sampler = sampling.Sampler(model)
  out = []
  for start in range(0, len(pairs), batch):
    chunk = pairs[start:start + batch]
    padded = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled shape for every batch
    noise = jnp.concatenate([sampling.make_noise(seed + start + j, (1,) + p.source_latent.shape)
                             for j, p in enumerate(padded)])
    context = _stack_context(padded)
    neg = None
    if guided:
      neg = np.broadcast_to(_pad_text(negative, None), (len(padded),) + np.shape(negative))
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      latent = sampler.sample(
          noise=noise, source_latents=jnp.asarray(np.stack([p.source_latent for p in padded])),
          camera=jnp.asarray(np.stack([p.camera for p in padded])) if camera else None,
          render_latents=(jnp.asarray(np.stack([p.render_latent for p in padded])) if render
                          else None),
          context=jnp.asarray(context), negative_context=None if neg is None else jnp.asarray(
              neg), num_steps=steps, guidance_scale=guidance, shift=shift, solver=solver)
    out.extend(to_host(latent)[:len(chunk)])
  return out


def clips(pairs: list[HeldOutPair], latents: list[np.ndarray], decode) -> list[report.Clip]:
  """The generated videos (decoded, the release's uint8 pixels) with their references."""
  out = []
  for pair, latent in zip(pairs, latents):
    pred = poses.to_uint8(decode(latent))
    out.append(report.Clip(name=pair.name, kind=pair.kind, pred=pred,
                           requested_w2c=pair.target_w2c, source=pair.source, render=pair.render,
                           target=pair.target))
  return out


def run_subject(subject: Subject, estimator=None, *, steps: int, shift: float = 5.0,
                solver: str = "euler", seed: int = 0, batch: int = 1, cached=None):
  """Sample every pair of ``subject`` and score it: (clips, [report.Scored]). ``cached``:
  {pair name: {video: poses}} of baseline poses from an earlier call (filled in place)."""
  latents = sample_latents(subject.model, subject.pairs, camera=subject.camera,
                           render=subject.render, steps=steps, shift=shift, solver=solver,
                           seed=seed, batch=batch, mesh=subject.mesh)
  made = clips(subject.pairs, latents, subject.decode)
  scored = []
  for clip in made:
    known = None if cached is None else cached.setdefault(clip.name, {})
    result = report.score(clip, estimator, cached=known)
    if known is not None:
      known.update({v: p for v, p in result.estimates.items() if v != "pred"})
    scored.append(result)
  return made, scored
