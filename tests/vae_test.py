"""Wan-VAE: parity with diffusers' AutoencoderKLWan (random weights, small config), both key
layouts through the converter, input validation, tiling."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from flax import nnx

from postcam_jax.convert import vae as convert_vae
from postcam_jax.io import model_dir
from postcam_jax.models import vae as vae_lib
from postcam_jax.models.vae import WanVAE, WanVAEConfig

# Wan2.1's structure (multipliers, 2 residual blocks per level, so the original flat layer indices
# and the one decoder shortcut are where they are in the real model) at base width 4.
SMALL = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)


def make_reference(seed=0):
  """A small diffusers Wan-VAE with random weights, norm gains and biases (not saturating)."""
  torch.manual_seed(seed)
  ref = AutoencoderKLWan(**SMALL).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
    ref.decoder.conv_out.weight.mul_(0.3)
  return ref


def wan_layout(diffusers_sd: dict, cfg: WanVAEConfig) -> dict:
  """The same tensors under the original Wan2.1_VAE.pth names (from the converter's table)."""
  return {e.wan: diffusers_sd[e.diffusers] for e in convert_vae.vae_table(cfg)}


@pytest.fixture(scope="module")
def reference():
  return make_reference()


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory):
  """The reference saved as a diffusers folder, converted and loaded; plus the wan layout."""
  root = tmp_path_factory.mktemp("vae")
  reference.save_pretrained(root / "diffusers")
  convert_vae.convert_vae(str(root / "diffusers"), str(root / "from_diffusers"))
  return root, model_dir.load_vae(str(root / "from_diffusers"))


def torch_encode(ref, video):
  with torch.no_grad():
    mu = ref.encode(torch.from_numpy(video).permute(0, 4, 1, 2, 3)).latent_dist.mean
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    return ((mu - mean) / std).permute(0, 2, 3, 4, 1).numpy()


def torch_decode(ref, latent):
  with torch.no_grad():
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    z = torch.from_numpy(latent).permute(0, 4, 1, 2, 3) * std + mean
    return ref.decode(z).sample.permute(0, 2, 3, 4, 1).numpy()


def rel_err(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


# 9 frames = 3 latents (the first chunk, the second-chunk "Rep" path, one cached chunk); 13 frames
# = 4 latents. Two resolutions each.
CLIPS = [(2, 9, 16, 24), (1, 9, 32, 16), (1, 13, 16, 24), (1, 13, 24, 32)]


@pytest.mark.parametrize("shape", CLIPS)
def test_parity_with_diffusers(reference, converted, shape):
  _, vae = converted
  rng = np.random.default_rng(sum(shape))
  video = rng.uniform(-1, 1, (*shape, 3)).astype(np.float32)
  want = torch_encode(reference, video)
  got = vae.encode(video)
  assert got.shape == (shape[0], 1 + (shape[1] - 1) // 4, shape[2] // 8, shape[3] // 8, 16)
  assert rel_err(got, want) <= 1e-4
  latent = rng.standard_normal(want.shape).astype(np.float32)
  want_video = torch_decode(reference, latent)
  # The output must not be mostly clamped, or the comparison would be weak.
  assert np.mean(np.abs(want_video) < 1) > 0.8
  got_video = vae.decode(latent)
  assert got_video.shape == want_video.shape == (*shape, 3)
  assert rel_err(got_video, want_video) <= 1e-4


def test_rep_quirk_is_reproduced(reference, converted):
  """Decoding with the *first* chunk's features as the second chunk's upsampler history (what a
  whole-sequence causal conv would do) must differ from the reference: the quirk matters, and
  the parity above covers it."""
  _, vae = converted
  latent = np.random.default_rng(5).standard_normal((1, 3, 2, 3, 16)).astype(np.float32)
  want = torch_decode(reference, latent)
  original_call = vae_lib.Resample.__call__

  def no_rep(self, x, cache=None):
    if self.mode == "upsample3d" and cache is None:
      y, _ = original_call(self, x, None)
      return y, jnp.concatenate([jnp.zeros_like(x), x], axis=1)
    return original_call(self, x, cache)

  vae_lib.Resample.__call__ = no_rep
  try:
    # A fresh jit (its own trace cache) of the un-jitted chunk loop.
    wrong = np.asarray(nnx.jit(vae_lib._decode_chunks)(vae, latent))  # pylint: disable=W0212
  finally:
    vae_lib.Resample.__call__ = original_call
  assert rel_err(wrong, want) > 1e-2
  assert rel_err(vae.decode(latent), want) <= 1e-4


def test_wan_layout_converts_to_the_same_model(reference, converted):
  root, vae = converted
  cfg = vae.cfg
  diffusers_sd = {k: v.clone() for k, v in reference.state_dict().items()}
  wan_sd = wan_layout(diffusers_sd, cfg)
  # The original names of the table are the ones diffusers' own single-file converter reads.
  back = convert_wan_vae_to_diffusers(dict(wan_sd))
  assert set(back) == set(diffusers_sd)
  for k, v in back.items():
    assert torch.equal(v, diffusers_sd[k]), k
  torch.save(wan_sd, root / "Wan2.1_VAE.pth")
  convert_vae.convert_vae(str(root / "Wan2.1_VAE.pth"), str(root / "from_wan"))
  meta = model_dir.read_model_json(str(root / "from_wan"))
  assert meta["format"] == "wan" and meta["kind"] == "wan_vae"
  from_wan = model_dir.load_vae(str(root / "from_wan"))
  a = model_dir.to_numpy_flat(from_wan)
  b = model_dir.to_numpy_flat(vae)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_full_config_has_wan_parameter_count():
  abstract = model_dir.abstract_params(lambda: WanVAE(WanVAEConfig.full(), rngs=nnx.Rngs(0)))
  assert sum(int(np.prod(v.shape)) for v in abstract.values()) == 126_892_531
  cfg = WanVAEConfig.full()
  assert WanVAEConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_inputs_are_rejected():
  # Inputs are checked before any computation: an abstract model suffices.
  vae = nnx.eval_shape(lambda: WanVAE(WanVAEConfig.tiny(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="4k\\+1"):
    vae.encode(np.zeros((1, 8, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match="multiples of 8, got 12x16"):
    vae.encode(np.zeros((1, 5, 12, 16, 3), np.float32))
  with pytest.raises(ValueError, match="3 channels .* got 4"):
    vae.encode(np.zeros((1, 5, 16, 16, 4), np.float32))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    vae.encode(np.zeros((5, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match="16 channels, got 4"):
    vae.decode(np.zeros((1, 2, 2, 2, 4), np.float32))
  with pytest.raises(ValueError, match="temporal downsamplings"):
    WanVAEConfig(temporal_downsample=(False, False, True))
  with pytest.raises(ValueError, match="unknown WanVAEConfig field"):
    WanVAEConfig.from_dict({"base": 3})


def test_tiling_blends_exactly_for_local_functions():
  """Overlapping tiles blended by weights reproduce any per-pixel function exactly (so the
  blending itself adds nothing), also with a scale change (8x nearest upsampling)."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 40, 56, 3)), jnp.float32)
  out = vae_lib._tiled(lambda t: 2 * t + 1, x, 16, 8, 8, 1)  # pylint: disable=protected-access
  np.testing.assert_allclose(out, 2 * x + 1, rtol=1e-6, atol=1e-6)
  up = lambda t: jnp.repeat(jnp.repeat(t, 8, axis=2), 8, axis=3)
  out = vae_lib._tiled(up, x, 24, 16, 1, 8)  # pylint: disable=protected-access
  np.testing.assert_allclose(out, up(x), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="multiples of 8"):
    vae_lib._tiled(up, x, 20, 8, 8, 1)  # pylint: disable=protected-access


def test_tiled_encode_decode(converted):
  _, vae = converted
  video = np.random.default_rng(1).uniform(-1, 1, (1, 5, 32, 48, 3)).astype(np.float32)
  whole = np.asarray(vae.encode(video))
  # A tile as large as the frame is the untiled computation.
  np.testing.assert_array_equal(vae.encode(video, tile=48), whole)
  tiled = np.asarray(vae.encode(video, tile=24, tile_stride=16))
  assert tiled.shape == whole.shape and np.isfinite(tiled).all()
  video_tiled = np.asarray(vae.decode(whole, tile=4, tile_stride=2))
  assert video_tiled.shape == (1, 5, 32, 48, 3)
  assert np.abs(video_tiled).max() <= 1.0


def test_single_frame_is_one_chunk(converted, reference):
  _, vae = converted
  image = np.random.default_rng(2).uniform(-1, 1, (1, 1, 16, 16, 3)).astype(np.float32)
  assert rel_err(vae.encode(image), torch_encode(reference, image)) <= 1e-4


if __name__ == "__main__":
  pytest.main([os.path.abspath(__file__), "-q"])
