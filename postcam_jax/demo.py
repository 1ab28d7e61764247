"""``make demo``: PostCam's whole job in miniature, on 2 CPU cores in a few minutes.

  python -m postcam_jax.demo --workdir demo_out            # samples with the shipped checkpoint
  python -m postcam_jax.demo --train --workdir demo_train  # remakes it (~1 h on 2 cores)

The repository ships the recipe's trained model (``configs/demo.py``, docs/experiments.md) as one
checksummed file, ``postcam_jax/assets/demo_postcam.safetensors`` (model + stand-in codec; its
SHA-256, seed, command and time on the machine that made it are in ``demo_postcam.json``
beside it). Without ``--train`` the demo checks that checksum, and that the file was made by
the current ``configs/demo.py``, before anything else, then runs steps 3-4. ``--train`` runs
1-4 and rewrites the checkpoint:

1. generates a small dataset in the MultiCamVideo layout (``postcam_jax.data.synthetic``: dynamic
   scenes, synchronised cameras, exact depth);
2. pretrains a tiny Wan DiT on the generated videos (the stand-in for the released Wan2.1
   weights), turns it into a trainable PostCam with ``init-postcam`` (projector zero), and trains
   the paper's trainable set through stage 1 (pose only) and stage 2 (pose + render) with the
   project's trainer (``postcam_jax.training``). Latents come from the PCA stand-in codec
   (``postcam_jax.data.codec``): a random Wan-VAE could not reconstruct pixels;
3. samples held-out (source, target camera) pairs of an unseen scene with the release's Euler
   sampler, the render made by the release's warp from the source video and its depth;
4. samples each pair twice with the same noise, with and without the camera and the render, and
   writes ``<pair>_{source,render,pred,pred_no_condition,target}_video.mp4`` and a contact sheet
   (those five rows, and above the target the target through the codec: the sharpest any
   prediction can be); prints PSNR and SSIM against the true target video of the prediction, the
   same model without camera and render, the render alone, copy-the-source, the mean image (the
   codec's mean block everywhere) and the codec's own ceiling (the target encoded and decoded).
   Then camera accuracy: RotErr, TransErr and CamMC of the camera path found in the prediction,
   the prediction without camera/render and the true target (the finder's own error) against the
   requested target path (``postcam_jax.evaluation``); the path is found by aligning each video to
   the source's exact depth (``evaluation.alignment``: offline, no network), or with
   ``--depth_model`` (a converted Depth Anything 3 folder) by DA3 as the paper's protocol.
"""

import dataclasses
import datetime
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx, traverse_util
from ml_collections import config_flags
from PIL import Image
from tqdm import tqdm

from postcam_jax import training
from postcam_jax.convert import postcam as postcam_convert
from postcam_jax.core import cli
from postcam_jax.data import arrayrecord, multicam, pairs, synthetic
from postcam_jax.data import codec as codec_lib
from postcam_jax.evaluation import camera as camera_lib
from postcam_jax.evaluation import alignment, fidelity, poses, report
from postcam_jax.inference import cli as sample_cli
from postcam_jax.inference import sampling
from postcam_jax.io import model_dir, video
from postcam_jax.models.wan import WanConfig, WanModel
from postcam_jax.training import data as train_data
from postcam_jax.training import export, losses

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "demo_out", "where everything is written")
flags.DEFINE_bool("train", False, "train the recipe from scratch (data, backbone, both stages) and "
                  "rewrite --checkpoint with the result, instead of sampling with it")
flags.DEFINE_string("checkpoint", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "assets", "demo_postcam.safetensors"),
                    "the recipe's trained model + codec (checked against the SHA-256 in the .json "
                    "beside it); written by --train")
flags.DEFINE_integer("sample_steps", 25, "Euler steps of the sampler (the release: 50)")
flags.DEFINE_integer("num_pairs", 12, "held-out pairs to sample and score (12: every ordered "
                     "camera pair of the unseen scene)")
flags.DEFINE_integer("backbone_steps", 3000, "steps of the stand-in backbone's pretraining")
flags.DEFINE_string("depth_model", "", "a converted Depth Anything 3 folder (tools/"
                    "convert_weights.py da3): also print the camera accuracy of each video's "
                    "DA3 path; empty: skip")
flags.DEFINE_integer("process_res", 504, "the longest side Depth Anything 3 sees (the release's)")
config_flags.DEFINE_config_file("config", os.path.join(_REPO, "configs", "demo.py"),
                                "the demo's training config", lock_config=True)


def pair_videos(pixel: dict, data) -> dict:
  """A pixel example's ``source`` and ``target`` videos in [-1, 1], the release's render of the
  source as the model gets it (``render_input``, at ``data.render_scale``), that render at the
  video's size (``render``, the baseline scored) and its ``holes`` [T, H, W]."""
  f = {k: pixel[k].astype(np.float32) / 127.5 - 1.0 for k in ("source_video", "target_video")}
  scale = train_data.render_scale(data)
  rendered, holes = train_data.release_render(dict(pixel, **f), scale=scale, with_holes=True)
  return {"source": f["source_video"], "target": f["target_video"], "render_input": rendered,
          "render": np.repeat(np.repeat(rendered, scale, axis=1), scale, axis=2), "holes": holes}


def held_out_pairs(config, workdir, codec, num_pairs):
  """Pixel and latent examples of pairs from scenes the model never saw."""
  data = config.data
  root = os.path.join(workdir, "heldout_scenes")
  if not os.path.exists(os.path.join(root, "train")):
    synthetic.generate(synthetic.GeneratorConfig(
        root=root, num_scenes=1, num_cameras=data.num_cameras, num_frames=data.num_frames,
        height=data.height, width=data.width, seed=data.seed + 5000,
        **train_data.camera_layout(data)))
  scenes = multicam.scan_dataset(root, "train").scenes
  chosen = pairs.enumerate_pairs(scenes, data.num_frames)[:num_pairs]
  pc = arrayrecord.PairsConfig(name="demo", root=root, clip_frames=data.num_frames,
                               height=data.height, width=data.width)
  text = train_data.HashTextEncoder(data.text_len, data.text_dim, data.seed)
  out = []
  for pair in chosen:
    pixel = arrayrecord.make_pixel_example(scenes[pair.scene], pair, pc)
    videos = pair_videos(pixel, data)
    out.append({
        "name": f"{pair.scene}_{pair.source}_to_{pair.target}", **videos,
        "source_latent": codec.encode(videos["source"]),
        "render_latent": codec.encode(videos["render_input"]),
        "target_latent": codec.encode(videos["target"]),
        "context": text(pixel["caption"]), "camera": np.asarray(pixel["camera"], np.float32),
        "target_w2c": np.asarray(pixel["target_w2c"], np.float64),
        **{k: pixel[k] for k in ("source_depth", "source_w2c", "intrinsics")}})
  return out


# "mean image": the codec's mean block in every cell (a zero latent), the best guess that looks
# at nothing; on these scenes it scores about as high a PSNR as the samples (docs/experiments.md).
SCORED = (("pred", "prediction"), ("no_condition", "no camera/render"), ("render", "render"),
          ("copy_source", "copy source"), ("mean_image", "mean image"),
          ("codec_ceiling", "codec ceiling"))
SHEET_ROWS = ("source", "render", "prediction", "prediction without camera/render",
              "target through the codec", "target")


def score_pair(name, *, target, **videos):
  """PSNR and SSIM (videos in [-1, 1]) against ``target`` of each video named in SCORED."""
  row = {"pair": name}
  for key, _ in SCORED:
    row[f"{key}_psnr"] = fidelity.psnr(videos[key], target, peak=2.0)
    row[f"{key}_ssim"] = fidelity.ssim(videos[key], target, peak=2.0)
  return row


def mean_scores(rows):
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "pair"}


def results_table(rows, mean):
  """Lines of the printed table: one row per pair and the mean, PSNR dB / SSIM per column."""
  lines = [f"  {'pair':<24}" + "".join(f"{h:>20}" for _, h in SCORED),
           f"  {'':<24}" + "".join(f"{'PSNR dB / SSIM':>20}" for _ in SCORED)]
  for r in rows + [dict(mean, pair="mean")]:
    lines.append(f"  {r['pair']:<24}" + "".join(
        f"{r[k + '_psnr']:>11.2f} / {r[k + '_ssim']:>6.3f}" for k, _ in SCORED))  # SSIM may be < 0
  return lines


def mean_image_line(mean):
  """How the prediction compares with the mean image: a sample is scored against one true
  target, so where the target is uncertain it pays twice the variance a flat guess pays; PSNR
  alone cannot tell a blur from a scene."""
  d_psnr = mean["pred_psnr"] - mean["mean_image_psnr"]
  d_ssim = mean["pred_ssim"] - mean["mean_image_ssim"]
  return (f"Against the mean image (the codec's mean block everywhere, a guess that looks at "
          f"nothing): PSNR {d_psnr:+.2f} dB, SSIM {d_ssim:+.3f}"
          + ("; the samples' PSNR is no better than that flat guess: at this budget they carry "
             "the render's colours in place, not a recognisable scene (docs/experiments.md)."
             if d_psnr <= 0 else "."))


# The cell-by-cell view (docs/experiments.md, "Where the samples lose"): errors pooled over the
# latent cells the warp covers in every pixel, where the render can be copied, and over the rest.
CELL_VIDEOS = ("pred", "no_condition", "mean_image", "codec_ceiling")


def cell_errors(holes, target, videos):
  """Per latent cell of the codec's geometry (4 frames x 8 x 8 pixels, frame 0 alone as the
  Wan-VAE has it): whether the warp covers it whole (``holes`` [T, H, W] all False there) and the
  mean squared error against ``target`` of each video of ``videos`` (videos in [-1, 1])."""
  filled = np.repeat(~np.asarray(holes, bool)[..., None], 3, axis=-1).astype(np.float32)
  cells = {"covered": codec_lib.video_blocks(filled).min(axis=-1) > 0}
  for key, frames in videos.items():
    cells[key] = codec_lib.video_blocks((np.asarray(frames) - target) ** 2).mean(axis=-1)
  return cells


def cell_summary(cells):
  """Errors of ``cell_errors`` pooled over every pair's covered cells and over the rest (every
  cell holds as many pixels, so these are pixel MSEs), and the fraction of cells covered."""
  covered = np.concatenate([c["covered"].ravel() for c in cells])
  out = {"covered_fraction": float(covered.mean())}
  for key in CELL_VIDEOS:
    err = np.concatenate([c[key].ravel() for c in cells])
    for part, mask in (("covered", covered), ("rest", ~covered)):
      out[f"{key}_{part}"] = float(err[mask].mean()) if mask.any() else float("nan")
  return out


def cell_line(summary):
  """The printed line of :func:`cell_summary`."""
  s = summary
  return (f"Cell by cell (pixel MSE over latent cells of 4 frames x 8 x 8): where the warp covers "
          f"a cell whole ({100 * s['covered_fraction']:.0f} % of cells) the prediction "
          f"{s['pred_covered']:.3f}, without camera/render {s['no_condition_covered']:.3f}, codec "
          f"ceiling {s['codec_ceiling_covered']:.3f}; in the other cells the prediction "
          f"{s['pred_rest']:.3f}, the mean image {s['mean_image_rest']:.3f}, codec ceiling "
          f"{s['codec_ceiling_rest']:.3f}.")


CAMERA_VIDEOS = (("pred", "prediction"), ("no_condition", "no camera/render"),
                 ("target", "true target"))


def camera_rows(examples, predictions, blind_predictions, estimator=None):
  """Camera accuracy per pair: RotErr, TransErr, CamMC (``evaluation.camera``) of the path found
  in the prediction, the prediction without camera/render and the true target (the estimator's
  own error), against the pair's requested target path. ``estimator``: a ``poses.PoseEstimator``
  (Depth Anything 3), or None for each pair's ``alignment.SourceAlignment`` (the source's exact
  depth), whose poses are in the requested path's world and metres: its rows also hold where
  each camera is, ``*_place_deg`` / ``*_place_m`` (``camera.placement_errors``, frame means)."""
  rows = []
  for ex, pred, blind in tqdm(list(zip(examples, predictions, blind_predictions)),
                              desc="finding the cameras", unit="pair", leave=False):
    row = {"pair": ex["name"]}
    finder = estimator or alignment.SourceAlignment(ex["source"], ex["source_depth"],
                                                    ex["source_w2c"], ex["intrinsics"])
    for key, frames in (("pred", pred), ("no_condition", blind), ("target", ex["target"])):
      clip = report.Clip(ex["name"], camera_lib.trajectory_kind(ex["target_w2c"]),
                         pred=poses.to_uint8(frames), requested_w2c=ex["target_w2c"])
      scored = report.score(clip, finder)
      row.update({f"{key}_{m}": scored.row[f"pred_{m}"] for m in report.CAMERA})
      if estimator is None:
        degrees, metres = camera_lib.placement_errors(ex["target_w2c"], scored.estimates["pred"])
        row[f"{key}_place_deg"], row[f"{key}_place_m"] = np.mean(degrees), np.mean(metres)
    rows.append(row)
  return rows


def camera_table(rows, mean):
  """Lines of the camera table: RotErr (rad) / TransErr / CamMC per video, per pair and mean,
  and where the rows have them the placement errors (degrees / metres)."""
  placed = "pred_place_deg" in rows[0]
  width, head = (40, "RotErr / TransErr / CamMC | deg / m") if placed else (
      26, "RotErr / TransErr / CamMC")
  lines = [f"  {'pair':<24}" + "".join(f"{h:>{width}}" for _, h in CAMERA_VIDEOS),
           f"  {'':<24}" + "".join(f"{head:>{width}}" for _ in CAMERA_VIDEOS)]
  for r in rows + [dict(mean, pair="mean")]:
    lines.append(f"  {r['pair']:<24}" + "".join(
        f"{r[k + '_rot_err']:>10.3f} / {r[k + '_trans_err']:.3f} / {r[k + '_cam_mc']:.3f}"
        + (f" | {r[k + '_place_deg']:5.1f} / {r[k + '_place_m']:4.2f}" if placed else "")
        for k, _ in CAMERA_VIDEOS))
  return lines


PLACED_DEG = 1.0  # a pair counts when the finder places its true target this close


def camera_summary_line(rows) -> str:
  """Rows of :func:`camera_rows` with placements, summed up over the pairs whose true target the
  finder itself places (a target that shows too little of the source cannot be placed, and then
  neither can a prediction of it: those pairs say nothing about the model)."""
  placed = [r for r in rows if r["target_place_deg"] < PLACED_DEG]
  mean = lambda key: np.mean([r[key] for r in placed])
  if not placed:
    return (f"The finder places none of the {len(rows)} true targets within {PLACED_DEG:g} "
            f"degree: no camera verdict on these pairs.")
  return (f"On the {len(placed)} of {len(rows)} pairs whose true target the finder places within "
          f"{PLACED_DEG:g} degree: the prediction's cameras are {mean('pred_place_deg'):.1f} "
          f"degrees and {mean('pred_place_m'):.2f} m from the requested ones (RotErr "
          f"{mean('pred_rot_err'):.3f}), without camera/render {mean('no_condition_place_deg'):.1f}"
          f" degrees and {mean('no_condition_place_m'):.2f} m (RotErr "
          f"{mean('no_condition_rot_err'):.3f}).")


def pretrain_backbone(config, workdir, steps):
  """A tiny Wan DiT trained on the generated videos' latents (all parameters, flow matching):
  the demo's stand-in for the pretrained Wan2.1 that PostCam starts from. Returns the directory
  of the trainable PostCam made from it by ``init-postcam``."""

  out = os.path.join(workdir, "postcam_init")
  if os.path.exists(out):
    return out
  cfg = training.model_config(config)
  wan_fields = {f.name for f in dataclasses.fields(WanConfig)}
  wcfg = WanConfig(**{k: v for k, v in cfg.to_dict().items() if k in wan_fields})
  examples = train_data.synthetic_examples(config.data, "train")
  videos = np.stack([e[k] for e in examples for k in ("target_latent", "source_latent")])
  texts = np.stack([e["text_embedding"] for e in examples for _ in range(2)])
  model = WanModel(wcfg, rngs=nnx.Rngs(config.seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 30, steps, 2e-5)
  opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule)),
                      wrt=nnx.Param)
  loss_cfg = losses.LossConfig(timesteps="logit_normal")

  @nnx.jit
  def step(model, opt, x0, ctx, key):
    k1, k2 = jax.random.split(key)
    sigma, w = losses.sample_sigmas(k1, x0.shape[0], loss_cfg)
    xt, target = losses.noisy_latents(x0, jax.random.normal(k2, x0.shape), sigma)
    loss, grads = nnx.value_and_grad(
        lambda m: losses.weighted_mse(m(xt, 1000.0 * sigma, ctx), target, w))(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(config.seed)
  key = jax.random.key(config.seed)
  bar = tqdm(range(steps), desc="backbone pretraining", unit="step")
  for i in bar:
    idx = rng.choice(len(videos), size=min(8, len(videos)), replace=False)
    loss = step(model, opt, jnp.asarray(videos[idx]), jnp.asarray(texts[idx]),
                jax.random.fold_in(key, i))
    if i % 50 == 0 or i == steps - 1:
      bar.set_postfix(loss=f"{float(loss):.3f}")
  arch = {k: v for k, v in wcfg.to_dict().items() if k not in ("precision", "remat", "attention")}
  wan_dir = os.path.join(workdir, "wan_backbone")
  model_dir.save_model(wan_dir, kind="wan_dit", config=arch,
                         params=model_dir.to_numpy_flat(model), overwrite=True)
  postcam_convert.init_postcam(wan_dir, out, seed=config.seed)
  return out


def machine() -> str:
  """The CPU model and count (what a time on "this machine" means), e.g. for the checkpoint."""
  name = platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{name}, {os.cpu_count()} CPU cores ({jax.devices()[0].platform})"


def load_shipped(path, recipe: dict):
  """The shipped (model, codec, info), once its SHA-256 matches and it was made by ``recipe``
  (the current configs/demo.py); ``export.BundleError`` naming the fix otherwise."""
  model, codec, info = export.load_bundle(path)
  made_by = flatten_recipe(info.get("recipe", {}))
  current = flatten_recipe(recipe)
  differ = sorted(k for k in set(made_by) | set(current) if made_by.get(k) != current.get(k))
  if differ:
    raise export.BundleError(
        f"{path} was made by another recipe than the current config (differs in "
        f"{', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''}); remake it with python -m "
        f"postcam_jax.demo --train")
  return model, codec, info


def recipe_of(config, backbone_steps: int) -> dict:
  """What the checkpoint records and ``make demo`` compares: every config value (before run-time
  paths are set) and the backbone's steps."""
  return dict(json.loads(config.to_json(sort_keys=True)), backbone_steps=backbone_steps)


def flatten_recipe(recipe: dict) -> dict:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(recipe).items()}


def train_recipe(config, workdir, recipe: dict):
  """Steps 1-2 from scratch; writes the checkpoint (``--checkpoint``) and returns (model, codec,
  info) as ``load_shipped`` would."""
  t0 = time.time()
  # A rerun in a workdir with finished steps picks them up: its time is then not the recipe's.
  resumed = os.path.isdir(os.path.join(workdir, "postcam_init"))
  print(f"[1/4] data and the stand-in backbone ({FLAGS.backbone_steps} steps) in {workdir}",
        flush=True)
  backbone = pretrain_backbone(config, workdir, FLAGS.backbone_steps)
  with config.unlocked():
    config.backbone = backbone
  print(f"[2/4] training PostCam's trainable set, stages {tuple(config.stage_steps)}",
        flush=True)
  result = training.train_and_evaluate(config, os.path.join(workdir, "train"))
  codec = train_data.stand_in_codec(config.data)
  info = {"command": "python -m postcam_jax.demo --train", "seed": config.seed,
          "backbone_steps": FLAGS.backbone_steps, "recipe": recipe,
          "train_seconds": round(time.time() - t0), "resumed_in_workdir": resumed,
          "machine": machine(),
          "made": datetime.date.today().isoformat(), "jax": jax.__version__,
          "metrics": {k: float(v) for k, v in result.metrics.items()}}
  digest = export.save_bundle(FLAGS.checkpoint, result.model, codec, info)
  print(f"wrote {FLAGS.checkpoint} (SHA-256 {digest}) and {export.sidecar(FLAGS.checkpoint)}",
        flush=True)
  return result.model, codec, dict(info, sha256=digest)


def main(argv):
  del argv

  config = FLAGS.config
  recipe = recipe_of(config, FLAGS.backbone_steps)
  estimator = None
  if FLAGS.depth_model:  # checked before any work: a wrong folder fails in one line, at once
    try:
      estimator = poses.PoseEstimator.load(FLAGS.depth_model, process_res=FLAGS.process_res)
    except (model_dir.ModelDirError, ValueError) as e:
      print(f"error: --depth_model {FLAGS.depth_model}: {e}", file=sys.stderr)
      return 2
  if not FLAGS.train:  # the checksum too, before any work
    try:
      model, codec, info = load_shipped(FLAGS.checkpoint, recipe)
    except export.BundleError as e:
      print(f"error: --checkpoint {e}", file=sys.stderr)
      return 2
  workdir = os.path.abspath(FLAGS.workdir)
  os.makedirs(workdir, exist_ok=True)
  with config.unlocked():
    config.data.cache_dir = os.path.join(workdir, "data")
  t0 = time.time()
  if FLAGS.train:
    model, codec, info = train_recipe(config, workdir, recipe)
  else:
    print(f"[1-2/4] the recipe's trained model: {FLAGS.checkpoint} (SHA-256 checked; made by "
          f"`{info['command']}`, seed {info['seed']}, in {info['train_seconds'] / 60:.0f} min on "
          f"{info['machine']}, {info['made']})", flush=True)

  print(f"[3/4] sampling {FLAGS.num_pairs} held-out pair(s) of an unseen scene", flush=True)
  examples = held_out_pairs(config, workdir, codec, FLAGS.num_pairs)
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  rows, cells, predictions, blind_predictions = [], [], [], []
  for i, ex in enumerate(examples):
    batch = lambda a: jnp.asarray(a, jnp.float32)[None]
    noise = sampling.make_noise(i, (1,) + ex["target_latent"].shape)
    latent = sampling.sample_latents(
        model, noise=noise, source_latents=batch(ex["source_latent"]),
        camera=batch(ex["camera"]), render_latents=batch(ex["render_latent"]),
        context=batch(ex["context"]), negative_context=jnp.zeros_like(batch(ex["context"])),
        num_steps=FLAGS.sample_steps, guidance_scale=1.0)
    pred = codec.decode(np.asarray(jax.device_get(latent))[0])
    # The same model and noise with the camera zeroed and no render: what the conditions add.
    blind = sampling.sample_latents(
        model, noise=noise, source_latents=batch(ex["source_latent"]),
        camera=jnp.zeros_like(batch(ex["camera"])), render_latents=None,
        context=batch(ex["context"]), negative_context=jnp.zeros_like(batch(ex["context"])),
        num_steps=FLAGS.sample_steps, guidance_scale=1.0)
    blind = codec.decode(np.asarray(jax.device_get(blind))[0])
    ceiling = codec.decode(ex["target_latent"])
    mean_image = codec.decode(np.zeros_like(ex["target_latent"]))
    for name, frames in (("source", ex["source"]), ("render", ex["render"]), ("pred", pred),
                         ("pred_no_condition", blind), ("target", ex["target"])):
      video.write_video(os.path.join(out_dir, f"{ex['name']}_{name}_video.mp4"),
                        sample_cli.to_uint8(frames), fps=sample_cli.OUTPUT_FPS)
    # One row per SHEET_ROWS; the target through the codec is the sharpest any prediction can
    # be (the stand-in codec blurs), so a prediction is judged against it, not the raw target.
    sheet = sample_cli.contact_sheet([sample_cli.to_uint8(v) for v in
                                      (ex["source"], ex["render"], pred, blind, ceiling,
                                       ex["target"])])
    Image.fromarray(sheet).save(os.path.join(out_dir, f"{ex['name']}_contact_sheet.png"))
    cells.append(cell_errors(ex["holes"], ex["target"], {
        "pred": pred, "no_condition": blind, "mean_image": mean_image, "codec_ceiling": ceiling}))
    rows.append(score_pair(ex["name"], target=ex["target"], pred=pred, no_condition=blind,
                           render=ex["render"], copy_source=ex["source"], mean_image=mean_image,
                           codec_ceiling=ceiling))
    predictions.append(pred)
    blind_predictions.append(blind)

  print(f"[4/4] results against the true target video (files in {out_dir}; contact sheets, "
        f"top to bottom: {', '.join(SHEET_ROWS)})")
  mean = mean_scores(rows)
  print("\n".join(results_table(rows, mean)))
  verdict = "beats" if mean["pred_psnr"] > mean["copy_source_psnr"] else "does NOT beat"
  effect = mean["pred_psnr"] - mean["no_condition_psnr"]
  made = "this run" if FLAGS.train else "when the checkpoint was made"
  print(f"The prediction {verdict} copying the source "
        f"({mean['pred_psnr'] - mean['copy_source_psnr']:+.2f} dB). What the camera and the render "
        f"add over the same model and noise without them: {effect:+.2f} dB PSNR, "
        f"{mean['pred_ssim'] - mean['no_condition_ssim']:+.3f} SSIM"
        + (" (under 2 dB: without them this model's samples are a blur of mean colours, which "
           "PSNR scores near the mean image; docs/experiments.md)" if effect < 2.0 else "")
        + (f". Final train loss {info['metrics']['train/loss']:.4f}" if "train/loss" in
           info["metrics"] else "")
        + f"; training {info['train_seconds']} s ({made}), this run {time.time() - t0:.0f} s.")
  print(mean_image_line(mean))
  cell_mean = cell_summary(cells)
  print(cell_line(cell_mean))
  results = {"pairs": rows, "mean": mean, "cells": cell_mean, "condition_effect_db": effect,
             "train_seconds": info["train_seconds"], "total_seconds": time.time() - t0,
             "checkpoint_sha256": info["sha256"]}
  cam_rows = camera_rows(examples, predictions, blind_predictions, estimator)
  cam_mean = {k: float(np.mean([r[k] for r in cam_rows])) for k in cam_rows[0] if k != "pair"}
  print("Camera accuracy against the requested target path (RotErr rad, TransErr, CamMC: "
        "relative to the first frame, scale-free, as the paper; " + (
            f"Depth Anything 3 poses of each video, {FLAGS.depth_model}):" if FLAGS.depth_model
            else "each video's cameras found by aligning it to the source's exact depth, "
            "evaluation.alignment; deg / m: where those cameras are against the requested ones; "
            "--depth_model for Depth Anything 3's poses):"))
  print("\n".join(camera_table(cam_rows, cam_mean)))
  if estimator is None:
    print(camera_summary_line(cam_rows))
  results.update(camera_pairs=cam_rows, camera_mean=cam_mean, total_seconds=time.time() - t0)
  with open(os.path.join(workdir, "demo_results.json"), "w") as f:
    json.dump(results, f, indent=1)
  return 0 if mean["pred_psnr"] > mean["copy_source_psnr"] else 1


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_absl_flags)
