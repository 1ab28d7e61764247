"""Analytic FLOP counts of the Wan2.1 DiT and PostCam (matmuls and attention; 2 FLOPs per MAC).

Counted: every dense projection, the attention score and value products, the patch embedding, the
head, the text/time/camera MLPs. Not counted: norms, RoPE, softmax, activations and residual adds
(elementwise, < 1 % at 1.3B). Training FLOPs = forward + backward, where the backward of a matmul
is a data gradient (same FLOPs as the forward) where its input depends on a trainable parameter,
plus a weight gradient (same again) where its weight is trainable; the attention core's backward is
twice its forward. Remat recomputation is *not* counted: MFU is model FLOPs / peak (PaLM's
convention), so a remat policy shows up as lower MFU, not as more work.
"""

import dataclasses
import math

from postcam_jax.parallel import chips


@dataclasses.dataclass(frozen=True)
class Term:
  """One matmul family of one forward: FLOPs, whether it has a data / weight gradient."""
  name: str
  flops: float
  dgrad: bool
  wgrad: bool
  weightless: bool = False  # attention core: backward = 2 x forward


def _linear(name, tokens, din, dout, *, dgrad=True, wgrad=False):
  return Term(name, 2.0 * tokens * din * dout, dgrad, wgrad)


def _attn(name, lq, lk, dim):
  return Term(name, 4.0 * lq * lk * dim, True, False, weightless=True)


def token_counts(cfg, latent_shape, render_shape=None) -> tuple[int, int]:
  """(N target tokens, M render tokens) for latent [F, H, W] and render [F, h, w] grids."""
  pt, ph, pw = cfg.patch_size
  f, h, w = latent_shape[:3]
  n = (f // pt) * (h // ph) * (w // pw)
  m = 0
  if render_shape is not None:
    rf, rh, rw = render_shape[:3]
    m = (rf // pt) * (rh // ph) * (rw // pw)
  return n, m


def postcam_terms(cfg, latent_shape, render_shape=None, camera: bool = True) -> list[Term]:
  """Per-sample matmul terms of one PostCam forward (``render_shape`` None: pose-only stage)."""
  d, dff, layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
  n, m = token_counts(cfg, latent_shape, render_shape)
  l_text = cfg.text_len
  # Camera tokens: the 11 RT tokens, or one Plucker token per target token (cfg.plucker). The
  # terms follow the query-shared layout; the ablations' other layouts cost about the same.
  c = (n if getattr(cfg, "plucker", False) else 11) if camera else 0
  patch = cfg.in_dim * math.prod(cfg.patch_size)
  terms = [
      _linear("patch_embedding", 2 * n + m, patch, d, dgrad=False),
      _linear("text_embedding", l_text, cfg.text_dim, d, dgrad=False),
      _linear("text_embedding", l_text, d, d, dgrad=False),
      _linear("time_embedding", 1, cfg.freq_dim, d, dgrad=False),
      _linear("time_embedding", 1, d, d, dgrad=False),
      _linear("time_projection", 1, d, 6 * d, dgrad=False),
      _linear("head", n, d, cfg.out_dim * math.prod(cfg.patch_size)),
  ]
  if camera:
    h = cfg.camera_hidden
    widths = [cfg.camera_width, h, h, h, d]
    terms += [_linear("cam_encoder", c, widths[i], widths[i + 1], dgrad=i > 0, wgrad=True)
              for i in range(4)]
  block = []
  for stream, tokens in (("main", 2 * n), ("render", m)):
    if tokens:
      block += [_linear(f"self_attn.{p}.{stream}", tokens, d, d, wgrad=True) for p in "qkvo"]
      block += [_attn(f"self_attn.core.{stream}", tokens, tokens, d),
                _linear(f"ffn.{stream}", tokens, d, dff), _linear(f"ffn.{stream}", tokens, dff, d)]
  block += [_linear("cross_attn.q", n, d, d), _linear("cross_attn.o", n, d, d),
            _linear("cross_attn.kv", l_text, d, 2 * d, dgrad=False),
            _attn("cross_attn.core", n, l_text, d)]
  if c or m:
    block += [_linear("cross_attn_cam.q", n, d, d, wgrad=True),
              _linear("cross_attn_cam.o", n, d, d, wgrad=True),
              _linear("projector", n, d, d, wgrad=True),
              _attn("cross_attn_cam.core", n, c + m, d)]
    if c:
      block.append(_linear("cross_attn_cam.kv_camera", c, d, 2 * d, wgrad=True))
    if m:
      block.append(_linear("cross_attn_cam.kv_render", m, d, 2 * d, wgrad=True))
  terms += [dataclasses.replace(t, flops=t.flops * layers) for t in block]
  return terms


def wan_terms(cfg, latent_shape) -> list[Term]:
  """Per-sample terms of one plain Wan2.1 forward (every matmul; no training split)."""
  d, dff = cfg.dim, cfg.ffn_dim
  pt, ph, pw = cfg.patch_size
  f, h, w = latent_shape[:3]
  n = (f // pt) * (h // ph) * (w // pw)
  patch = cfg.in_dim * math.prod(cfg.patch_size)
  block = [_linear("self_attn", n, d, 4 * d), _attn("self_attn.core", n, n, d),
           _linear("cross_attn.qo", n, d, 2 * d), _linear("cross_attn.kv", cfg.text_len, d, 2 * d),
           _attn("cross_attn.core", n, cfg.text_len, d), _linear("ffn", n, d, 2 * dff)]
  terms = [_linear("patch_embedding", n, patch, d),
           _linear("text_embedding", cfg.text_len, cfg.text_dim + d, d),
           _linear("head", n, d, cfg.out_dim * math.prod(cfg.patch_size))]
  return terms + [dataclasses.replace(t, flops=t.flops * cfg.num_layers) for t in block]


def forward_flops(terms: list[Term]) -> float:
  return float(sum(t.flops for t in terms))


def train_flops(terms: list[Term]) -> float:
  """Forward + backward FLOPs (see the module docstring for what the backward contains)."""
  total = 0.0
  for t in terms:
    total += t.flops
    if t.weightless:
      total += 2 * t.flops
    else:
      total += t.flops * (int(t.dgrad) + int(t.wgrad))
  return total


def postcam_train_flops(cfg, batch: int, latent_shape, render_shape=None) -> float:
  """Model FLOPs of one training step of ``batch`` samples (all accumulation micro-steps)."""
  return batch * train_flops(postcam_terms(cfg, latent_shape, render_shape))


def postcam_forward_flops(cfg, batch: int, latent_shape, render_shape=None) -> float:
  return batch * forward_flops(postcam_terms(cfg, latent_shape, render_shape))


# Dense bf16 peak FLOP/s per GPU by jax ``device_kind`` prefix (vendor datasheets, no sparsity);
# TPU generations come from ``postcam_jax.parallel.chips``.
GPU_PEAK_FLOPS = {
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(device, override: float | None = None) -> float | None:
  """Peak FLOP/s of one device: ``override`` if given, else the tables (None: unknown, e.g. CPU)."""
  if override:
    return float(override)
  if device.platform == "tpu":
    try:
      return chips.chip_for_device(device).bf16_peak
    except ValueError:
      return None
  for name, value in GPU_PEAK_FLOPS.items():
    if device.device_kind.startswith(name):
      return value
  return None
