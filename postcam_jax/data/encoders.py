"""The encoders behind latent records, batched and sharded over this process's own devices.

:class:`Encoders` holds the converted Wan-VAE, umT5 (with its tokenizer) and, optionally, Depth
Anything 3, each restored onto :func:`local_mesh` (this process's devices on the ``data`` axis;
parameters replicated). Every call takes a list of items of one kind and runs them in batches of
``batch_per_device`` x local devices, each batch padded to that fixed size (one compilation per
kind) and split over the devices along the batch axis; nothing crosses processes, so N processes
encode N disjoint slices of a dataset at once.

- :meth:`Encoders.encode_videos`: videos [T, H, W, 3] (uint8, or float in [-1, 1]) -> the
  VAE's normalised latent means [F, H/8, W/8, 16] float32. Frames are cast to bfloat16 before the
  VAE, as the sampler feeds it (``inference.cli.Pipeline.encode_video``).
- :meth:`Encoders.encode_captions`: captions -> umT5 states [L, D] float32 without the padding
  (L = the caption's tokens, EOS included; the model's padded positions are exactly zero).
- :meth:`Encoders.render_latents`: the release's render condition of (source clip, depth,
  poses, K), ``geometry.render.forward_warp_batch`` then ``render.downsample4x``
  (:func:`render_batch`, over a sharded batch of pairs: equal to the sampler's render to float32
  rounding), and its VAE latent, without leaving the devices.

``counts`` tallies what went through each model (items, not padding): the preparation's summary
and the test that every video is encoded once read it.
"""

import collections
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from postcam_jax import parallel
from postcam_jax.data import depth_scale
from postcam_jax.geometry import render
from postcam_jax.io import model_dir


def local_mesh() -> jax.sharding.Mesh:
  """This process's devices on the ``data`` axis (the project's mesh builder)."""
  devices = jax.local_devices()
  return parallel.make_mesh({"data": len(devices)}, devices=devices)


def render_batch(frames, depth, source_w2c, target_w2c, intrinsics):
  """The release's render of a batch of pairs, 4x down: ``geometry.render.forward_warp_batch``
  (holes -1; each clip's render equals the sampler's ``forward_warp`` to float32 rounding) then
  ``render.downsample4x``: [B, T, H, W, 3] -> [B, T, H/4, W/4, 3] float32, one program each for a
  batch split over the devices. Not to be wrapped in another jit (see forward_warp_batch)."""
  warped, _ = render.forward_warp_batch(frames, depth, source_w2c, target_w2c, intrinsics)
  return render.downsample4x(warped)


def to_unit_range(video: np.ndarray) -> np.ndarray:
  """uint8 frames -> float32 in [-1, 1] (x / 127.5 - 1); float frames pass as float32."""
  video = np.asarray(video)
  if video.dtype == np.uint8:
    return video.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
  return video.astype(np.float32)


class Encoders:
  """Wan-VAE, umT5 and (optionally) DA3 on this process's devices; see the module docstring."""

  def __init__(self, vae, text, depth_model=None, *, mesh=None, batch_per_device: int = 1,
               depth_process_res: int = 504):
    if batch_per_device < 1:
      raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
    self.mesh = mesh if mesh is not None else local_mesh()
    self.vae, self.text, self.depth_model = vae, text, depth_model
    self.depth_process_res = depth_process_res
    self.batch = self.mesh.size * batch_per_device
    self.sharding = NamedSharding(self.mesh, P("data"))
    self.devices = list(self.mesh.devices.flat)
    self.counts = collections.Counter()
    self.seconds = collections.Counter()

  @classmethod
  def load(cls, vae: str, text_encoder: str, depth_model: str | None = None, *,
           vae_dtype: str = "float32", batch_per_device: int = 1, depth_process_res: int = 504,
           mesh=None) -> "Encoders":
    """The models of three converted model directories, restored onto ``mesh`` (default
    :func:`local_mesh`)."""
    mesh = mesh if mesh is not None else local_mesh()
    text = model_dir.load_text_encoder(text_encoder, mesh=mesh)
    if text.tokenizer is None:
      raise model_dir.ModelDirError(
          f"{text_encoder} has no tokenizer folder; convert the text encoder again with "
          f"--tokenizer (tools/convert_weights.py t5)")
    depth = model_dir.load_da3(depth_model, mesh=mesh) if depth_model else None
    return cls(model_dir.load_vae(vae, dtype=jnp.dtype(vae_dtype), mesh=mesh), text, depth,
               mesh=mesh, batch_per_device=batch_per_device, depth_process_res=depth_process_res)

  # -- batching -------------------------------------------------------------------------------

  def _batches(self, items: list, fn, kind: str) -> list[np.ndarray]:
    """``fn`` on stacked, padded, sharded batches of ``items`` (arrays, or tuples of arrays
    stacked component-wise); one host array per item."""
    out = []
    start = time.perf_counter()
    for i in range(0, len(items), self.batch):
      chunk = items[i:i + self.batch]
      parts = list(zip(*chunk)) if isinstance(chunk[0], tuple) else [chunk]
      arrays = []
      for part in parts:
        stacked = np.stack(part)
        pad = self.batch - len(chunk)
        if pad:
          stacked = np.concatenate([stacked, np.zeros((pad, *stacked.shape[1:]), stacked.dtype)])
        arrays.append(jax.device_put(stacked, self.sharding))
      result = np.asarray(jax.device_get(fn(*arrays)))
      out.extend(result[:len(chunk)])
    self.counts[kind] += len(items)
    self.seconds[kind] += time.perf_counter() - start
    return out

  # -- models ---------------------------------------------------------------------------------

  def _vae(self, clips):
    """Normalised latents of a batch of clips in [-1, 1], cast to bf16 first (the sampler's)."""
    return self.vae.encode(clips.astype(jnp.bfloat16)).astype(jnp.float32)

  def encode_videos(self, videos: list[np.ndarray]) -> list[np.ndarray]:
    """Videos [T, H, W, 3] (uint8, or float in [-1, 1]) -> latents [F, h, w, C] float32."""
    clips = [to_unit_range(v).astype(jnp.bfloat16) for v in videos]
    return self._batches(clips, self._vae, "videos")

  def encode_captions(self, captions: list[str]) -> list[np.ndarray]:
    """Captions -> umT5 states [L_i, D] float32, each cut to its tokens (EOS included)."""
    if not captions:
      return []
    ids, mask = self.text.tokenizer(list(captions))
    lengths = np.asarray(mask).sum(axis=1)

    def encode(ids, mask):
      return self.text.encode_ids(ids, mask).astype(jnp.float32)

    rows = [(np.asarray(i, np.int32), np.asarray(m, bool)) for i, m in zip(ids, mask)]
    states = self._batches(rows, encode, "captions")
    return [s[:n] for s, n in zip(states, lengths)]

  def render_latents(self, pairs: list[tuple]) -> list[np.ndarray]:
    """(source frames [T, H, W, 3] in [-1, 1], depth [T, H, W], source_w2c, target_w2c
    [T, 4, 4], K [3, 3]) per pair -> the VAE latent of the release's render (forward warp from
    the target camera, 4x down), float32 [F, H/32, W/32, C]; the render stays on the devices."""
    items = [tuple(np.asarray(a, np.float32) for a in pair) for pair in pairs]
    return self._batches(items, lambda *batch: self._vae(render_batch(*batch)), "renders")

  def metric_depth(self, frames: np.ndarray, dataset_w2c: np.ndarray,
                   num_source: int) -> depth_scale.MetricDepth:
    """DA3 depth of a source clip in the dataset's metres (``depth_scale.metric_depth``)."""
    if self.depth_model is None:
      raise ValueError("this video has no depth file and no --depth-model was given to "
                       "estimate it")
    start = time.perf_counter()
    out = depth_scale.metric_depth(self.depth_model, frames, dataset_w2c, num_source,
                                   process_res=self.depth_process_res, mesh=self.mesh)
    self.counts["depth_estimates"] += 1
    self.seconds["depth"] += time.perf_counter() - start
    return out
