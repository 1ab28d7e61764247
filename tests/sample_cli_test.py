"""The sampling CLI end to end on the release's real clip, and its failure modes."""

import io
import os

import numpy as np
import pytest
import sentencepiece
from flax import nnx
from PIL import Image

from postcam_jax import checkpoints, sample, video
from postcam_jax.convert import t5 as t5_convert
from postcam_jax.convert.postcam import convert_postcam
from postcam_jax.convert.vae import KIND as VAE_KIND
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder
from postcam_jax.models.vae import WanVAE, WanVAEConfig
from tests.conftest import FIXTURES

CLIP = os.path.join(FIXTURES, "official-render-tiny", "official-inputs", "test1.mp4")
POSTCAM_CKPT = os.path.join(FIXTURES, "postcam-official-tiny", "postcam.ckpt")
CLIP_FRAMES, CLIP_HW = 41, (480, 832)
TEXT_DIM = 32  # the fixture checkpoint's


def write_release_depth(folder, num_frames=CLIP_FRAMES, hw=(480, 832)):
  """A depth folder as the release's depth step writes it: a tilted plane seen by a camera that
  drifts right, 16-bit PNGs quantised between the global min and max."""
  h, w = hw
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                           indexing="ij")
  depth = np.stack([2.0 + 1.5 * rows / h + 0.3 * cols / w + 0.01 * t for t in range(num_frames)])
  d_min, d_max = np.float32(depth.min()), np.float32(depth.max())
  q = np.clip((depth - d_min) / (d_max - d_min) * 65535, 0, 65535).astype(np.uint16)
  os.makedirs(os.path.join(folder, "depth"))
  for i, qi in enumerate(q):
    Image.fromarray(qi).save(os.path.join(folder, "depth", f"{i:06d}.png"))
  with open(os.path.join(folder, "metadata.txt"), "w") as f:
    f.write(f"{float(d_min)!r} {float(d_max)!r}\n")
  with open(os.path.join(folder, "extrinsics.txt"), "w") as f:
    for t in range(num_frames):
      w2c = np.hstack([np.eye(3), [[-0.01 * t], [0.0], [0.0]]])
      f.write(np.array2string(w2c, separator=", ", suppress_small=True).replace("\n", "") + "\n")
  k = np.array([[560.0, 0, 416.0], [0, 560.0, 240.0], [0, 0, 1.0]])
  with open(os.path.join(folder, "intrinsics.txt"), "w") as f:
    f.write(np.array2string(k, separator=", ", suppress_small=True).replace("\n", "") + "\n")
  return folder


def random_params(module_factory, seed=0):
  """Random weights drawn in numpy from the module's abstract shapes (eager NNX init of the many
  small VAE convolutions is slow on CPU): kernels N(0, 1/fan_in), biases 0, norm scales 1."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, leaf in checkpoints.abstract_params(module_factory).items():
    if len(leaf.shape) >= 2:
      fan_in = int(np.prod(leaf.shape[:-1]))
      out[key] = (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    else:
      out[key] = np.full(leaf.shape, 0.0 if key.endswith("bias") else 1.0, np.float32)
  return out


def save_tiny_vae(directory):
  cfg = WanVAEConfig.tiny()
  params = random_params(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)))
  checkpoints.save_model(directory, kind=VAE_KIND, config=cfg.to_dict(), params=params)


def save_tiny_text_encoder(directory):
  """The tiny umT5 (width 32 = the fixture's text_dim) with a SentencePiece vocabulary trained
  here on a few captions (EOS 1, pad 0, as umT5's)."""
  cfg = UMT5Config.tiny()
  params = random_params(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0), dtype=np.float32,
                                             param_dtype=np.float32))
  checkpoints.save_model(directory, kind=t5_convert.KIND, config=cfg.to_dict(), params=params)
  corpus = ["a girl holding a magic wand in front of a glowing star",
            "the camera orbits to the left around the scene"] * 20
  spm = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=spm, vocab_size=30, hard_vocab_limit=False,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
  os.makedirs(os.path.join(directory, t5_convert.TOKENIZER_DIR))
  with open(os.path.join(directory, t5_convert.TOKENIZER_DIR, "spiece.model"), "wb") as f:
    f.write(spm.getvalue())


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("sample_cli")
  convert_postcam(POSTCAM_CKPT, root / "postcam")
  save_tiny_vae(root / "vae")
  save_tiny_text_encoder(root / "t5")
  rng = np.random.default_rng(0)
  # The tiny text encoder's length (16): both CLI runs then share one compiled step.
  np.savez(root / "embeds.npz", context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32),
           negative_context=rng.standard_normal((16, TEXT_DIM)).astype(np.float32))
  write_release_depth(root / "depth")
  return root


def base_args(assets, out, **changes):
  args = {"--checkpoint": assets / "postcam", "--vae": assets / "vae", "--video": CLIP,
          "--depth": assets / "depth", "--trajectory": "y_left_30",
          "--prompt-embeds": assets / "embeds.npz", "--out": out, "--size": "64x128",
          "--steps": "2", "--precision": "float32"}
  args.update(changes)
  argv = ["--no-progress"]
  for key, value in args.items():
    if value is not None:
      argv += [key, *map(str, value if isinstance(value, list) else [value])]
  return argv


def test_cli_end_to_end_on_the_release_clip(assets, tmp_path, capsys):
  # The text encoder path: --prompt, and the release's (Chinese) negative prompt by default.
  out = tmp_path / "out"
  argv = base_args(assets, out, **{"--prompt-embeds": None, "--text-encoder": assets / "t5",
                                   "--prompt": "a girl holding a magic wand"})
  assert sample.main(argv) == 0, capsys.readouterr().err
  names = sorted(os.listdir(out))
  assert names == ["test1_contact_sheet.png", "test1_pred_video.mp4", "test1_render_video.mp4",
                   "test1_source_video.mp4"]
  for kind in ("source", "render", "pred"):
    info = video.video_info(str(out / f"test1_{kind}_video.mp4"))
    assert (info["num_frames"], info["fps"]) == (41, 15.0)
    assert (info["height"], info["width"]) == (64, 128)
  sheet = np.asarray(Image.open(out / "test1_contact_sheet.png"))
  assert sheet.shape == (3 * 64, 6 * 128, 3)
  # The source row is the clip itself (resized); the render has black holes, the source none.
  source = video.read_video(str(out / "test1_source_video.mp4"))
  clip = video.read_video(CLIP)
  assert abs(float(source.mean()) - float(clip.mean())) < 4.0
  rendered = video.read_video(str(out / "test1_render_video.mp4"))
  assert (rendered[-1].max(axis=-1) < 8).mean() > (source[-1].max(axis=-1) < 8).mean() + 0.05


def test_cli_prompt_embeds_and_several_trajectories(assets, tmp_path, capsys):
  out = tmp_path / "out"
  # One folder per trajectory (the release's results_<checkpoint>_<trajectory>).
  argv = base_args(assets, out, **{"--trajectory": ["zoom_in", "arc_left"]})
  assert sample.main(argv) == 0, capsys.readouterr().err
  assert sorted(os.listdir(out)) == ["results_postcam_arc_left", "results_postcam_zoom_in"]
  for folder in os.listdir(out):
    assert len(os.listdir(out / folder)) == 4
    assert video.video_info(str(out / folder / "test1_pred_video.mp4"))["num_frames"] == 41
  printed = capsys.readouterr().out.split()
  assert len(printed) == 8 and all(p.startswith(str(out)) for p in printed)


FAILURES = [
    ("missing_depth", {"--depth": None}, "provide --depth DIR in the release's layout"),
    ("unknown_trajectory", {"--trajectory": "y_left_31"}, "unknown trajectory 'y_left_31'"),
    ("frame_count", {"--num-frames": "40"}, "--num-frames must be 4k+1"),
    ("unreadable_video", {"--video": "BAD"}, "unreadable video"),
    ("depth_count", {"--depth": "FEW"}, "holds 40 depth maps but the video has 41 frames"),
    ("depth_size", {"--depth": "SMALL"}, "depth maps are 240x416 (HxW) but the video is 480x832"),
]


@pytest.mark.parametrize("name,changes,message", FAILURES, ids=[f[0] for f in FAILURES])
def test_failure_modes_give_one_message_and_no_output(assets, tmp_path, capsys, name, changes,
                                                      message):
  if changes.get("--video") == "BAD":
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    changes = {"--video": bad}
  if changes.get("--depth") == "FEW":
    changes = {"--depth": write_release_depth(tmp_path / "few", num_frames=40)}
  if changes.get("--depth") == "SMALL":
    changes = {"--depth": write_release_depth(tmp_path / "small", hw=(240, 416))}
  out = tmp_path / "out"
  assert sample.main(base_args(assets, out, **changes)) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err, err
  assert len(err.splitlines()) == 1, err
  assert not out.exists()
  leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".out")]
  assert not leftovers
