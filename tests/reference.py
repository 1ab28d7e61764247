"""PyTorch references for parity tests (diffusers' Wan transformer with random weights)."""

import numpy as np
import torch

from postcam_jax.convert import wan as wan_convert


def tiny_wan_kwargs(**overrides):
  cfg = dict(dim=64, num_heads=2, ffn_dim=96, num_layers=2, text_dim=24, text_len=512,
             freq_dim=256, in_dim=16, out_dim=16)
  cfg.update(overrides)
  return cfg


def diffusers_wan(cfg, seed=0):
  """A diffusers WanTransformer3DModel with every parameter random (norm weights included)."""
  from diffusers import WanTransformer3DModel  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  model = WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=cfg["num_heads"],
      attention_head_dim=cfg["dim"] // cfg["num_heads"], in_channels=cfg["in_dim"],
      out_channels=cfg["out_dim"], text_dim=cfg["text_dim"], freq_dim=cfg["freq_dim"],
      ffn_dim=cfg["ffn_dim"], num_layers=cfg["num_layers"], cross_attn_norm=True,
      qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model.eval().float()


class ExactTimeSinusoid(torch.nn.Module):
  """The original Wan2.1's time sinusoid (wan2.1.md 1.2): ``t * omega`` and its cos/sin in
  float64, cos first, then float32. diffusers' ``Timesteps`` rounds ``t * omega`` to float32,
  which moves the embedding by ~1e-6 relative; swapping this in isolates that difference."""

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, timesteps):
    half = self.dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    angles = torch.outer(timesteps.to(torch.float64), omega)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def with_exact_time_sinusoid(model):
  """``model`` (a diffusers Wan transformer) with the original's float64 time sinusoid."""
  model.condition_embedder.timesteps_proj = ExactTimeSinusoid(
      model.condition_embedder.timesteps_proj.num_channels)
  return model


def diffusers_forward(model, latents, t, ctx, text_len):
  """Channels-last numpy in/out; the context is zero-padded to text_len as Wan's pipeline does."""
  ctx = np.pad(ctx, ((0, 0), (0, text_len - ctx.shape[1]), (0, 0)))
  param = next(model.parameters())  # inputs follow the model's device and dtype
  put = lambda a: torch.from_numpy(a).to(param.device, param.dtype)  # noqa: E731
  with torch.no_grad():
    out = model(hidden_states=put(latents).permute(0, 4, 1, 2, 3),
                timestep=torch.from_numpy(t).to(param.device), encoder_hidden_states=put(ctx),
                return_dict=False)[0]
  return out.permute(0, 2, 3, 4, 1).float().cpu().numpy()


def original_state_dict(model) -> dict[str, np.ndarray]:
  """The diffusers model's weights under the original Wan2.1 key names (the spec's table)."""
  to_wan = {}
  for e in wan_convert.WAN_TABLE:
    to_wan[e.diffusers] = e.wan
  out = {}
  for key, value in model.state_dict().items():
    parts = key.split(".")
    if parts[0] == "blocks":
      generic = ".".join(["blocks", "{i}"] + parts[2:])
      name = to_wan[generic].replace("{i}", parts[1])
    else:
      name = to_wan[key]
    out[name] = value.detach().numpy().copy()
  return out


def save_as_original_layout(model, path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  save_file(original_state_dict(model), str(path))
