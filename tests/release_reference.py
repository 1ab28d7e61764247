"""The PostCam release's forward in PyTorch, for parity checks and side-by-side benchmarks.

``ReleaseWanModel`` follows the code path of the release's ``WanModel.forward``
(``zju3dv/PostCam`` commit ``198ce6f``, ``diffsynth/models/wan_video_dit.py``, text-to-video
backbone: no image input), module for module so that the release's flat state dict
(``postcam.ckpt``, or ``convert.postcam.release_state_dict`` of a postcam-jax model) loads into it
with ``load_state_dict``: the float64 time sinusoid, RoPE as complex128 products on tables of 1024
positions, attention by ``F.scaled_dot_product_attention`` (the release's fallback when no flash
kernel is installed: the path it takes on CPU), the render stream through the block's own
self-attention and FFN, the release's render-RoPE slicing and the text cross-attention on the target
half only. It is checked against the fixture the release itself produced
(``tests/release_reference_test.py``).

``load_release_model(checkout)`` imports the release's own ``WanModel`` from a checkout instead
(``benchmarks/postcam_forward.py --release-checkout DIR``).
"""

import importlib
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(dim: int, t):
  """[cos, sin] of t * 10000^(-i / (dim/2)), computed in float64, returned in t's dtype."""
  half = dim // 2
  omega = torch.pow(10000, -torch.arange(half, dtype=torch.float64) / half)
  angles = torch.outer(t.to(torch.float64), omega)
  return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(t.dtype)


def rope_table(dim: int, positions: int = 1024, theta: float = 10000.0):
  """complex128 [positions, dim/2]: e^{i p w_j}, w_j = theta^(-2j/dim)."""
  w = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim)
  angles = torch.outer(torch.arange(positions).double(), w)
  return torch.polar(torch.ones_like(angles), angles)


def rope_3d_tables(head_dim: int):
  """(time, height, width) tables of dims head_dim - 2 s, s, s. The release takes s = head_dim // 3,
  whose tables only add up to head_dim / 2 frequencies when it is even (head_dim 128: 44/42/42;
  head_dim 64 would give 22/21/21 -> 11 + 10 + 10 = 31 of 32 and fail); s = 2 (head_dim // 6), the
  original Wan's split, is the same wherever the release runs and also defines head_dim 64."""
  third = 2 * (head_dim // 6)
  return rope_table(head_dim - 2 * third), rope_table(third), rope_table(third)


def rotate(x, table, heads: int):
  """x [B, L, heads * d] rotated by ``table`` [L, 1, d/2] (complex128), in x's dtype."""
  b, length, width = x.shape
  pairs = x.to(torch.float64).reshape(b, length, heads, -1, 2)
  rotated = torch.view_as_real(torch.view_as_complex(pairs) * table).flatten(2)
  return rotated.to(x.dtype)


def attend(q, k, v, heads: int):
  """[B, L, heads * d] in and out, by the fused SDPA kernel."""
  split = lambda t: t.unflatten(2, (heads, -1)).transpose(1, 2)  # noqa: E731
  out = F.scaled_dot_product_attention(split(q), split(k), split(v))
  return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.Module):
  def __init__(self, dim: int, eps: float):
    super().__init__()
    self.eps = eps
    self.weight = nn.Parameter(torch.ones(dim))

  def forward(self, x):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SelfAttention(nn.Module):
  def __init__(self, dim: int, heads: int, eps: float):
    super().__init__()
    self.heads = heads
    self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
    self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

  def forward(self, x, table):
    q = rotate(self.norm_q(self.q(x)), table, self.heads)
    k = rotate(self.norm_k(self.k(x)), table, self.heads)
    return self.o(attend(q, k, self.v(x), self.heads))


class CrossAttention(SelfAttention):
  def forward(self, x, context):
    q = self.norm_q(self.q(x))
    k = self.norm_k(self.k(context))
    return self.o(attend(q, k, self.v(context), self.heads))


class CameraRenderAttention(SelfAttention):
  """The release's ``cross_attn_cam``: one query, camera and render keys/values, one softmax."""

  def __init__(self, dim: int, heads: int, eps: float):
    super().__init__(dim, heads, eps)
    self.k_render, self.v_render = nn.Linear(dim, dim), nn.Linear(dim, dim)

  def forward(self, x, camera, render, q_table, camera_table, render_table):
    q = rotate(self.norm_q(self.q(x)), q_table, self.heads)
    k_cam = rotate(self.norm_k(self.k(camera)), camera_table, self.heads)
    k_ren = rotate(self.norm_k(self.k_render(render)), render_table, self.heads)
    k = torch.cat([k_cam, k_ren], dim=1)
    v = torch.cat([self.v(camera), self.v_render(render)], dim=1)
    return self.o(attend(q, k, v, self.heads))


class Block(nn.Module):
  def __init__(self, dim: int, heads: int, ffn: int, eps: float):
    super().__init__()
    self.self_attn = SelfAttention(dim, heads, eps)
    self.cross_attn = CrossAttention(dim, heads, eps)
    self.cross_attn_cam = CameraRenderAttention(dim, heads, eps)
    self.projector = nn.Linear(dim, dim)
    self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
    self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
    self.norm3 = nn.LayerNorm(dim, eps=eps)
    self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(approximate="tanh"), nn.Linear(ffn, dim))
    self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

  def forward(self, x, camera, render, context, t_mod, tables):
    main, target, cam_table, render_table = tables
    n = x.shape[1] // 2
    shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + t_mod).chunk(6, dim=1)
    x_in = self.norm1(x) * (1 + scale1) + shift1
    r_in = self.norm1(render) * (1 + scale1) + shift1
    x = x + gate1 * self.self_attn(x_in, main)
    render = render + gate1 * self.self_attn(r_in, render_table)
    y = self.norm3(x[:, :n])
    x[:, :n] = x[:, :n] + self.projector(self.cross_attn_cam(
        y, camera, r_in, target, cam_table, render_table)) + self.cross_attn(y, context)
    x = x + gate2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2)
    render = render + gate2 * self.ffn(self.norm2(render) * (1 + scale2) + shift2)
    return x, render


class ReleaseWanModel(nn.Module):
  """The release's PostCam DiT (see the module docstring); channels-first like the release."""

  def __init__(self, dim, ffn_dim, num_heads, num_layers, text_dim, freq_dim=256, in_dim=16,
               out_dim=16, eps=1e-6, patch_size=(1, 2, 2), camera_hidden=256, **unused):
    super().__init__()
    del unused
    self.dim, self.freq_dim, self.heads, self.patch_size = dim, freq_dim, num_heads, patch_size
    self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
    self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"),
                                        nn.Linear(dim, dim))
    self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
    self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
    self.blocks = nn.ModuleList(Block(dim, num_heads, ffn_dim, eps) for _ in range(num_layers))
    self.head = Head(dim, out_dim * math.prod(patch_size), eps)
    head_dim = dim // num_heads
    self.tables = rope_3d_tables(head_dim)
    self.camera_table = rope_table(head_dim)
    h = camera_hidden
    self.cam_encoder = nn.Sequential(nn.Linear(12, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                                     nn.Linear(h, h), nn.GELU(), nn.Linear(h, dim),
                                     nn.LayerNorm(dim, eps=eps))

  def patchify(self, x):
    x = self.patch_embedding(x)
    return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])

  def grid_table(self, frames, rows, cols):
    """[len(frames) * len(rows) * len(cols), 1, d/2]: the 3D angles of a token grid."""
    tf, th, tw = self.tables
    nf, nh, nw = len(frames), len(rows), len(cols)
    table = torch.cat([tf[frames].view(nf, 1, 1, -1).expand(nf, nh, nw, -1),
                       th[rows].view(1, nh, 1, -1).expand(nf, nh, nw, -1),
                       tw[cols].view(1, 1, nw, -1).expand(nf, nh, nw, -1)], dim=-1)
    return table.reshape(nf * nh * nw, 1, -1)

  def forward(self, x, timestep, cam_emb, render_emb, context):
    """x [B, 16, 2F, H, W] (target frames, then source), timestep [B], cam_emb [B, 11, 3|4, 4],
    render_emb [B, 16, F, h, w], context [B, L, text_dim] -> [B, 16, 2F, H, W]."""
    t = self.time_embedding(sinusoid(self.freq_dim, timestep))
    t_mod = self.time_projection(t).unflatten(1, (6, self.dim))
    context = self.text_embedding(context)
    x, (f, h, w) = self.patchify(x)
    half = f // 2
    target = self.grid_table(torch.arange(half), torch.arange(h), torch.arange(w))
    source = self.grid_table(torch.arange(half, f), torch.arange(h), torch.arange(w))
    render_emb, (rf, rh, rw) = self.patchify(render_emb)
    # The release's render positions: scale min(W // h_r, H // w_r) (h and w crossed), centred.
    scale = min(w // rh, h // rw)
    sw, sh = (w - scale * rw) // 2, (h - scale * rh) // 2
    rows = torch.arange(sh, h, scale)[:rh]
    cols = torch.arange(sw, w, scale)[:rw]
    render_table = self.grid_table(torch.arange(rf), rows, cols)
    cam_table = self.camera_table[:cam_emb.shape[1]].view(cam_emb.shape[1], 1, -1)
    camera = self.cam_encoder(cam_emb[:, :, :3].flatten(2))
    tables = (torch.cat([target, source], dim=0), target, cam_table, render_table)
    for block in self.blocks:
      x, render_emb = block(x, camera, render_emb, context, t_mod, tables)
    x = self.head(x, t)
    return self.unpatchify(x, (f, h, w))

  def unpatchify(self, x, grid):
    f, h, w = grid
    pt, ph, pw = self.patch_size
    b = x.shape[0]
    x = x.view(b, f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, -1, f * pt, h * ph, w * pw)


class Head(nn.Module):
  def __init__(self, dim: int, out: int, eps: float):
    super().__init__()
    self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
    self.head = nn.Linear(dim, out)
    self.modulation = nn.Parameter(torch.zeros(1, 2, dim))

  def forward(self, x, t):
    shift, scale = (self.modulation + t.unsqueeze(1)).chunk(2, dim=1)
    return self.head(self.norm(x) * (1 + scale) + shift)


def load_release_model(checkout: str, **arch):
  """The release's own ``WanModel`` (text-to-video: no image input) from a checkout of
  ``zju3dv/PostCam`` (the directory holding ``diffsynth/``)."""
  if not os.path.isdir(os.path.join(checkout, "diffsynth")):
    raise FileNotFoundError(f"{checkout}: no diffsynth/ package (pass the PostCam checkout root)")
  sys.path.insert(0, os.path.abspath(checkout))
  module = importlib.import_module("diffsynth.models.wan_video_dit")
  keys = ("dim", "in_dim", "ffn_dim", "out_dim", "text_dim", "freq_dim", "eps", "patch_size",
          "num_heads", "num_layers")
  return module.WanModel(has_image_input=False, **{k: arch[k] for k in keys})
