"""``python -m postcam_jax.data.prepare --latents``: generated scenes -> latent records with a tiny
random Wan-VAE and umT5 -> the trainer's two stages; each video encoded once; 1 process and 2
processes x 4 devices (killed with -9 and resumed) give the same records; bad scenes; reruns
into a prepared directory; Depth Anything 3 depth scaled to the dataset's poses."""

import csv
import glob
import importlib.util
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import sentencepiece
from flax import nnx

from configs import common, postcam_tiny
from postcam_jax import training
from postcam_jax.convert import t5 as t5_convert
from postcam_jax.convert.vae import KIND as VAE_KIND
from postcam_jax.data import (
                              arrayrecord,
                              depth_scale,
                              encoders,
                              latent_job,
                              latents,
                              multicam,
                              pairs,
                              prepare,
                              records,
                              synthetic,
)
from postcam_jax.geometry import cameras, image_ops, render
from postcam_jax.io import model_dir
from postcam_jax.models.da3.config import BackboneConfig, DA3Config, HeadConfig, NetConfig
from postcam_jax.models.da3.model import DA3Model
from postcam_jax.models.t5 import UMT5Config, UMT5Encoder
from postcam_jax.models.vae import WanVAE, WanVAEConfig
from postcam_jax.training import data as train_data
from postcam_jax.training import metrics
from tests.conftest import REPO, readable_tail

T, H, W = 9, 64, 96
CAMERAS = 3
SCENES = {"train": 3, "test": 1}
PAIRS = CAMERAS * (CAMERAS - 1)  # ordered pairs of one window per scene
# Per scene, cameras 1 and 2 share a caption: 2 distinct captions for 3 videos.
CAPTIONS = {"cam01": "a red ball rolls", "cam02": "a red ball rolls", "cam03": "a blue box spins"}
TEXT_LEN = 16  # the tiny umT5's and the tiny PostCam's


def save_models(base):
  """A tiny random Wan-VAE, a tiny random umT5 with a word-level SentencePiece vocabulary of the
  captions (EOS 1, pad 0, as umT5's), and a tiny random Depth Anything 3."""
  vae = WanVAEConfig.tiny()
  model_dir.save_model(base / "vae", kind=VAE_KIND, config=vae.to_dict(),
                       params=model_dir.random_params(lambda: WanVAE(vae, rngs=nnx.Rngs(0))))
  t5 = UMT5Config.tiny()
  model_dir.save_model(base / "t5", kind=t5_convert.KIND, config=t5.to_dict(),
                       params=model_dir.random_params(lambda: UMT5Encoder(t5, rngs=nnx.Rngs(0))))
  spm = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(list(CAPTIONS.values()) * 10), model_writer=spm, vocab_size=12,
      model_type="word", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      minloglevel=2)
  (base / "t5" / t5_convert.TOKENIZER_DIR).mkdir()
  (base / "t5" / t5_convert.TOKENIZER_DIR / "spiece.model").write_bytes(spm.getvalue())
  da3 = DA3Config(model_name="tiny", net=NetConfig(
      backbone=BackboneConfig(embed_dim=32, depth=4, num_heads=2, out_layers=(0, 1, 2, 3),
                              alt_start=2, qknorm_start=2, rope_start=2, pos_grid=4),
      head=HeadConfig(features=16, out_channels=(8, 16, 16, 32)), cam_enc_heads=2,
      cam_enc_depth=1))
  model_dir.save_model(base / "da3", kind=model_dir.DA3_KIND, config=da3.to_dict(),
                       params=model_dir.random_params(lambda: DA3Model(da3, rngs=nnx.Rngs(0))))


def write_captions(root, split):
  """metadata.csv with the short CAPTIONS (file_name relative to <root>/<split>/)."""
  rows = []
  for scene in multicam.list_scene_dirs(root, split):
    rel = os.path.relpath(scene, os.path.join(root, split))
    rows += [(f"{rel}/videos/{cam}.mp4", text) for cam, text in CAPTIONS.items()]
  with open(os.path.join(root, split, "metadata.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file_name", "text"])
    writer.writerows(rows)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  base = tmp_path_factory.mktemp("latents")
  save_models(base)
  root = str(base / "multicam")
  for split, n in SCENES.items():
    synthetic.generate(synthetic.GeneratorConfig(
        root=root, split=split, num_scenes=n, num_cameras=CAMERAS, num_frames=T, height=H,
        width=W, seed=7 if split == "train" else 8, crf=0))
    write_captions(root, split)
  return base


def argv(assets, data_dir, *extra, root=None):
  return ["--latents", "--root", str(root or assets / "multicam"), "--data_dir", str(data_dir),
          "--splits", "train,test", "--clip_frames", str(T), "--height", str(H), "--width",
          str(W), "--vae", str(assets / "vae"), "--text-encoder", str(assets / "t5"),
          "--scenes_per_shard", "1", "--no-progress", *extra]


class Spy:
  """Counts what reaches the models: items per Encoders call (with a digest of each video), and
  the Wan-VAE's own calls."""

  def __init__(self, mp):
    self.videos, self.renders, self.captions, self.vae_calls = [], 0, [], 0
    videos, renders, captions, vae_encode = (
        encoders.Encoders.encode_videos, encoders.Encoders.render_latents,
        encoders.Encoders.encode_captions, WanVAE.encode)

    def encode_videos(enc, clips):
      self.videos += [hash(np.asarray(c).tobytes()) for c in clips]
      return videos(enc, clips)

    def render_latents(enc, items):
      self.renders += len(items)
      return renders(enc, items)

    def encode_captions(enc, texts):
      self.captions += list(texts)
      return captions(enc, texts)

    def vae(model, video, **kw):
      self.vae_calls += 1
      return vae_encode(model, video, **kw)

    mp.setattr(encoders.Encoders, "encode_videos", encode_videos)
    mp.setattr(encoders.Encoders, "render_latents", render_latents)
    mp.setattr(encoders.Encoders, "encode_captions", encode_captions)
    mp.setattr(WanVAE, "encode", vae)


@pytest.fixture(scope="module")
def prepared(assets, tmp_path_factory):
  """The preparation in this process (8 devices), with the spy on the encoders."""
  data_dir = tmp_path_factory.mktemp("records")
  out = io.StringIO()
  with pytest.MonkeyPatch.context() as mp:
    spy = Spy(mp)
    mp.setattr(sys, "stdout", out)
    assert prepare.main(argv(assets, data_dir)) == 0
  return {"dir": records.prepared_dir(str(data_dir), "latents"), "data_dir": data_dir,
          "spy": spy, "printed": out.getvalue()}


def by_pair(directory, split):
  source = arrayrecord.data_source(directory, split)
  return {(r["scene"].decode(), r["source_camera"].decode(), r["target_camera"].decode(),
           int(r["start"])): r for r in source}


def test_every_pair_once_with_the_trainers_keys_and_a_summary(prepared):
  for split, n in SCENES.items():
    assert len(by_pair(prepared["dir"], split)) == n * PAIRS
  ex = arrayrecord.data_source(prepared["dir"], "train")[0]
  bf16 = records.BF16
  for key, shape in (("target_latent", (3, 8, 12, 16)), ("source_latent", (3, 8, 12, 16)),
                     ("render_latent", (3, 2, 3, 16))):
    assert ex[key].shape == shape and ex[key].dtype == bf16, key
  # Stored without the padding: the caption's words and EOS (4 + 1 of TEXT_LEN rows).
  assert ex["text_embedding"].shape == (5, 32) and ex["text_embedding"].dtype == bf16
  assert ex["camera"].shape == (11, 12) and ex["intrinsics"].shape == (3, 3)
  printed = prepared["printed"]
  assert "[p0/1] 4 shard(s) written, 0 already finished; 24 pairs written, 0 scene(s) skipped" \
      in printed and "s per video" in printed
  assert "train: 18 records in 3 shard(s)" in printed and "test: 6 records in 1 shard(s)" in printed


def test_each_video_and_caption_is_encoded_once(prepared):
  spy = prepared["spy"]
  scenes = sum(SCENES.values())
  assert len(spy.videos) == scenes * CAMERAS == len(set(spy.videos))  # one per video, no repeat
  assert spy.renders == scenes * PAIRS  # only the render is per pair
  assert len(spy.captions) == scenes * 2  # the distinct captions of each scene
  # The VAE itself: per scene, batched calls for its videos, then for its renders (one each
  # with the test's 8 devices).
  batch = jax.local_device_count()
  assert spy.vae_calls == scenes * (-(-CAMERAS // batch) - (-PAIRS // batch))


def test_records_are_the_models_outputs(assets, prepared):
  """A record's latents, text and camera recomputed from the scene on one device."""
  key = ("f18_aperture10/scene1", "cam01", "cam03", 0)
  record = by_pair(prepared["dir"], "train")[key]
  scene = multicam.open_scene(os.path.join(assets / "multicam", "train", key[0]))
  pair = pairs.Pair(0, "cam01", "cam03", 0)
  vae = model_dir.load_vae(str(assets / "vae"))
  text = model_dir.load_text_encoder(str(assets / "t5"))

  def clip(camera):
    rgb = scene.read_video(camera)
    arrays, k = image_ops.fit_arrays({"video": rgb}, scene.intrinsics(*rgb.shape[1:3]), (H, W))
    return arrays["video"], k

  def encode(frames):
    return np.asarray(vae.encode(np.asarray(frames, np.float32)[None].astype(records.BF16)))[0]

  target, k = clip("cam03")
  source, _ = clip("cam01")
  unit = lambda v: v.astype(np.float32) / 127.5 - 1.0  # noqa: E731
  cams = pairs.pair_cameras(scene, pair, T)
  depth = image_ops.fit_arrays({"d": scene.read_depth("cam01")}, None, (H, W))[0]["d"]
  warped, _ = render.forward_warp(unit(source), depth, cams["source_w2c"], cams["target_w2c"], k)
  # The preparation's batched render is the sampler's, to float32 rounding (atol 1e-5 on values
  # in [-1, 1]: the batched warp accumulates its splats in another order).
  batched = encoders.render_batch(*(np.asarray(x)[None] for x in (
      unit(source), depth, cams["source_w2c"], cams["target_w2c"], k)))
  np.testing.assert_allclose(np.asarray(batched)[0], render.downsample4x(warped), rtol=0,
                             atol=1e-5)
  states, lengths = text.encode_text([CAPTIONS["cam03"]])
  want = {"target_latent": encode(unit(target)), "source_latent": encode(unit(source)),
          "render_latent": encode(render.downsample4x(warped)),
          "text_embedding": np.asarray(states)[0, :int(lengths[0])]}
  # bf16 storage of float32 values: equal to one bf16 rounding step (the float32 values of a
  # batch of 8 on 8 devices and of one on one device differ at float32 rounding).
  for name, value in want.items():
    np.testing.assert_allclose(np.asarray(record[name], np.float32), value, rtol=2 ** -8,
                               atol=2 ** -8 * np.abs(value).max(), err_msg=name)
  assert not np.any(np.asarray(states)[0, int(lengths[0]):])  # the dropped rows were padding
  np.testing.assert_array_equal(record["camera"], cams["camera"])
  np.testing.assert_array_equal(record["target_w2c"], cams["target_w2c"])
  np.testing.assert_allclose(record["intrinsics"], k, rtol=1e-6)
  assert record["caption"].decode() == CAPTIONS["cam03"]


# ------------------------------------------------------------------------------------------------
# Several processes, kill -9, resume.


def _launcher():
  spec = importlib.util.spec_from_file_location("launch_local",
                                                os.path.join(REPO, "launch", "local.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def subprocess_env(cache_dir):
  """The child processes share a compilation cache (the second and third runs compile nothing)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  return env


def launch(args, processes, env, log):
  cmd = [sys.executable, os.path.join(REPO, "launch", "local.py"), "-n", str(processes), "-d",
         "4", "--timeout", "500", "--", "-m", "postcam_jax.data.prepare", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)


def shard_files(directory):
  return {os.path.basename(p): (os.stat(p).st_ino, os.stat(p).st_mtime_ns)
          for p in glob.glob(os.path.join(directory, "multi_cam_pairs-*"))}


def test_two_processes_killed_and_resumed_equal_one_process(assets, tmp_path):
  """2 processes x 4 devices, both killed with -9 right after process 1 finished its first shard,
  rerun with the same command: finished shards are kept as they are, the rest is written, and
  the records equal those of 1 process x 4 devices, record by record."""
  local = _launcher()
  env = subprocess_env(tmp_path / "jax_cache")
  args = argv(assets, tmp_path / "two")
  directory = records.prepared_dir(str(tmp_path / "two"), "latents")
  coordinator = f"127.0.0.1:{local.free_port()}"
  log = open(tmp_path / "killed.log", "w")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "postcam_jax.data.prepare", *args], cwd=REPO, stdout=log,
      stderr=subprocess.STDOUT,
      env=local.process_env(env, index=i, count=2, devices=4, coordinator=coordinator))
      for i in range(2)]
  # Units in order: train 0, 1, 2, test 0; process 1 takes train-00001 and test-00000.
  first = os.path.join(directory, "_units", "train-00001-of-00003.json")
  deadline = time.monotonic() + 400
  while not os.path.exists(first):
    assert all(p.poll() is None for p in procs), readable_tail(open(tmp_path / "killed.log").read())
    assert time.monotonic() < deadline, "process 1 finished no shard in time"
    time.sleep(0.02)
  for p in reversed(procs):
    os.kill(p.pid, signal.SIGKILL)
  for p in procs:
    p.wait()
  assert not os.path.exists(os.path.join(directory, "_units", "test-00000-of-00001.json"))
  assert not os.path.exists(os.path.join(directory, records.INFO_FILE))
  kept = {name: stat for name, stat in shard_files(directory).items()
          if os.path.exists(os.path.join(directory, "_units",
                                         latents.Unit(*_unit_of(name), ()).label + ".json"))}
  assert "multi_cam_pairs-train.array_record-00001-of-00003" in kept

  with open(tmp_path / "resumed.log", "w") as log:
    proc = launch(args, 2, env, log)
  out = open(tmp_path / "resumed.log").read()
  assert proc.returncode == 0, readable_tail(out)
  assert "[p1] [p1/2] 1 shard(s) written, 1 already finished" in out
  after = shard_files(directory)
  assert {name: after[name] for name in kept} == kept  # finished shards were not redone
  assert not glob.glob(os.path.join(directory, "**", ".*partial*"), recursive=True)
  with open(tmp_path / "one.log", "w") as log:
    proc = launch(argv(assets, tmp_path / "one"), 1, env, log)
  assert proc.returncode == 0, readable_tail(open(tmp_path / "one.log").read())
  one = records.prepared_dir(str(tmp_path / "one"), "latents")
  for split, n in SCENES.items():
    a, b = by_pair(directory, split), by_pair(one, split)
    assert sorted(a) == sorted(b) and len(a) == n * PAIRS
    for key, record in a.items():
      for name, value in record.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(b[key][name]),
                                      err_msg=f"{key} {name}")


def test_every_process_checks_the_directory_before_process_0_writes_it(assets, tmp_path,
                                                                      monkeypatch):
  """A job's processes read the prepared directory (``records.claim``) before process 0 writes
  its marker: CI once saw process 1 look between process 0's staging file and its rename ("not a
  prepared directory"), and the job died at jax.distributed's shutdown barrier. Two processes as
  threads; process 1 holds its check back until process 0 starts writing (1 s at most)."""
  events, lock, writing = [], threading.Lock(), threading.Event()
  meeting = threading.Barrier(2, timeout=30)
  claim, write_marker = records.claim, records.write_marker

  def log(what):
    with lock:
      events.append((threading.current_thread().name, what))

  def checking(directory, settings, overwrite=False, remove=True):
    if threading.current_thread().name == "p1":
      writing.wait(1.0)
    log(f"claim remove={remove}")
    return claim(directory, settings, overwrite=overwrite, remove=remove)

  def writing_marker(directory, settings):
    writing.set()
    log("write marker")
    write_marker(directory, settings)

  def barrier(name, timeout_s):
    del timeout_s
    log(f"barrier {name}")
    meeting.wait()

  class Reached(Exception):
    """Raised where the set-up ends (the encoders come next)."""

  def features_of(config):
    raise Reached

  monkeypatch.setattr(records, "claim", checking)
  monkeypatch.setattr(records, "write_marker", writing_marker)
  monkeypatch.setattr(latent_job, "_barrier", barrier)
  monkeypatch.setattr(latent_job, "features_of", features_of)
  config = latents.LatentConfig(
      root=str(assets / "multicam"), data_dir=str(tmp_path), vae=str(assets / "vae"),
      text_encoder=str(assets / "t5"), splits=("train", "test"), clip_frames=T, height=H,
      width=W, scenes_per_shard=1, progress=False)
  outcome = {}

  def process(index):
    try:
      latent_job.run(config, process_index=index, process_count=2)
    except BaseException as e:  # pylint: disable=broad-exception-caught (reported below)
      outcome[index] = e

  threads = [threading.Thread(target=process, args=(i,), name=f"p{i}") for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert [type(outcome.get(i)) for i in range(2)] == [Reached, Reached], (outcome, events)
  written = events.index(("p0", "write marker"))
  checks = [k for k, (who, what) in enumerate(events) if what.startswith("claim")]
  assert {events[k][0] for k in checks} == {"p0", "p1"} and max(checks) < written, events
  assert records.read_marker(config.directory) == config.settings()


def _unit_of(shard: str):
  """(split, index, count) of a TFDS shard file name."""
  head, index, _, count = shard.rsplit("-", 3)
  return head.split("-", 1)[1].split(".")[0], int(index), int(count)


# ------------------------------------------------------------------------------------------------
# The trainer on the records: both stages.


def test_both_stages_train_from_the_records(prepared, tmp_path):
  """Stage 1 (pose) then stage 2 (pose + render) of the tiny PostCam on the prepared records
  (text padded at load to the model's length): finite losses that fall in each stage."""
  config = postcam_tiny.get_config()
  config.data = common.data_arrayrecord(batch_size=2, num_frames=T, height=H, width=W,
                                        text_len=TEXT_LEN, data_dir=prepared["dir"],
                                        eval_split="test", shuffle=False)
  steps = 12
  config.schedule, config.stage_steps = "two_stage", (steps, steps)
  config.optim.lr, config.optim.warmup_steps = 3e-3, 1
  config.loss.fixed_noise = True
  config.mesh_devices, config.log_every = 1, 1
  config.checkpoint.every = 2 * steps
  config.eval.every = 0
  result = training.train_and_evaluate(config, str(tmp_path))
  assert result.step == 2 * steps
  losses = [r["train/loss"] for r in metrics.read_jsonl(str(tmp_path)) if "train/grad_norm" in r]
  assert len(losses) == 2 * steps and np.all(np.isfinite(losses))
  for stage in (losses[:steps], losses[steps:]):
    assert np.mean(stage[-3:]) < np.mean(stage[:3]), stage
  # The held-out batches (the test split) are padded the same way: zero rows after the caption.
  config.eval.num_batches = 1
  batch = train_data.eval_batches(config, 0, 1)[0]
  assert batch["text_embedding"].shape == (2, TEXT_LEN, 32)
  assert batch["text_embedding"].dtype == np.float32 and not np.any(batch["text_embedding"][:, 5:])
  assert np.any(batch["text_embedding"][:, :5])


# ------------------------------------------------------------------------------------------------
# Bad scenes, reruns, the prepared directory.


def run_cli(args, capsys):
  code = prepare.main(args)
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.fixture(scope="module")
def broken_root(assets, tmp_path_factory):
  """The training scenes with one scene's extrinsics file truncated, and no test split."""
  root = tmp_path_factory.mktemp("broken") / "multicam"
  shutil.copytree(assets / "multicam" / "train", root / "train")
  bad = root / "train" / "f24_aperture5" / "scene1" / multicam.EXTRINSICS_FILE
  bad.write_text(bad.read_text()[:100])
  return root


def test_a_bad_scene_is_skipped_and_listed_or_stops_the_job_in_one_line(assets, broken_root,
                                                                        tmp_path, capsys):
  bad = str(broken_root / "train" / "f24_aperture5" / "scene1")
  args = argv(assets, tmp_path / "raise", root=broken_root)
  args[args.index("--splits") + 1] = "train"
  code, _, err = run_cli(args, capsys)
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ") and "unreadable" in lines[0]
  assert "--on_error skip" in lines[0]
  directory = records.prepared_dir(str(tmp_path / "raise"), "latents")
  assert not os.path.exists(os.path.join(directory, records.INFO_FILE))
  code, out, _ = run_cli(args + ["--on_error", "skip"], capsys)
  assert code == 0
  assert f"skipped {bad}: " in out and "1 scene(s) skipped in all" in out
  assert "train: 12 records in 3 shard(s)" in out  # the bad scene's shard is empty
  assert len(arrayrecord.data_source(directory, "train")) == 2 * PAIRS


def test_a_rerun_resumes_and_other_settings_are_refused_naming_them(assets, prepared, tmp_path,
                                                                   capsys):
  data_dir = prepared["data_dir"]
  directory = prepared["dir"]
  before = shard_files(directory)
  code, out, _ = run_cli(argv(assets, data_dir), capsys)  # the same command: nothing to do
  assert code == 0 and "0 shard(s) written, 4 already finished" in out
  assert shard_files(directory) == before
  code, _, err = run_cli(argv(assets, data_dir, "--pairs_per_scene", "2", "--height", "32",
                              root=tmp_path), capsys)
  assert code == 2 and len(err.strip().splitlines()) == 1
  assert "is already prepared and it was made with other settings: height: 64 -> 32; " \
         f"pairs_per_scene: None -> 2; root: {str(assets / 'multicam')!r} -> {str(tmp_path)!r}" \
         in err
  assert "--overwrite" in err and shard_files(directory) == before
  # A directory that is not a prepared one is never removed, even with --overwrite.
  foreign = tmp_path / "foreign"
  other = records.prepared_dir(str(foreign), "latents")
  os.makedirs(other)
  open(os.path.join(other, "notes.txt"), "w").close()
  code, _, err = run_cli(argv(assets, foreign, "--overwrite"), capsys)
  assert code == 2 and "is not a prepared directory of postcam-jax" in err
  assert os.listdir(other) == ["notes.txt"]


def test_overwrite_rebuilds_with_the_new_settings(assets, tmp_path, capsys):
  """... and, with the progress bar on (stderr not a terminal: whole lines), the bar shows the
  scenes done, the ETA and the seconds per video."""
  args = argv(assets, tmp_path, "--pairs_per_scene", "1")
  args[args.index("--splits") + 1] = "test"
  assert run_cli(args, capsys)[0] == 0
  args[args.index("--pairs_per_scene") + 1] = "2"
  assert run_cli(args, capsys)[0] == 2
  with_bar = [a for a in args if a != "--no-progress"]
  code, out, err = run_cli(with_bar + ["--overwrite"], capsys)
  assert code == 0 and "test: 2 records in 1 shard(s)" in out
  bar = [line for line in err.splitlines() if line.startswith("prepare [p0/1]:")]
  assert bar and "\r" not in err, err
  assert "0/1 [" in bar[0] and "1/1 [" in bar[-1], bar  # scenes done of this process's
  assert "<00:00" in bar[-1] and "s_per_video=" in bar[-1], bar  # elapsed<ETA, s per video
  directory = records.prepared_dir(str(tmp_path), "latents")
  assert records.read_marker(directory)["pairs_per_scene"] == 2


def test_pixel_records_refuse_another_root_or_size(assets, tmp_path, capsys):
  """The same check for pixel records (the TFDS builder path)."""
  base = ["--root", str(assets / "multicam"), "--data_dir", str(tmp_path), "--splits", "test",
          "--clip_frames", "5", "--height", "32", "--width", "48", "--pairs_per_scene", "1"]
  assert run_cli(base, capsys)[0] == 0
  code, _, err = run_cli(base[:-2] + ["--height", "16"] + base[-2:], capsys)
  assert code == 2 and "height: 32 -> 16" in err
  code, out, _ = run_cli(base[:-2] + ["--height", "16", "--overwrite"] + base[-2:], capsys)
  assert code == 0 and "test: 1 records" in out
  record = arrayrecord.data_source(arrayrecord.prepared_dir(str(tmp_path), "pixels"), "test")[0]
  assert record["target_video"].shape == (5, 16, 48, 3)


def test_help_explains_the_latent_command(capsys):
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for flag in ("--latents", "--vae", "--text-encoder", "--depth-model", "--on_error",
               "--scenes_per_shard", "--overwrite", "--coordinator", "launch/local.py",
               "kill", "Depth Anything 3"):
    assert flag in text, flag


# ------------------------------------------------------------------------------------------------
# Depth Anything 3 for videos without depth.


def scene_views(scene, camera, start=0):
  """The dataset's world-to-camera of the source clip's frames and of the other cameras' anchor
  frame, relative to the source camera at the clip start (what the fit aligns to)."""
  frames = np.arange(start, start + T)
  others = [c for c in scene.cameras if c != camera]
  views = np.concatenate([scene.c2w[camera][frames],
                          np.stack([scene.c2w[c][start] for c in others])])
  return cameras.relative_target_w2c(scene.c2w[camera][start], views)


def test_similarity_fit_brings_a_prediction_to_the_dataset_scale(assets):
  """A stand-in for DA3's output made from a scene's exact depth and poses in another world and
  scale (any rotation, translation and factor): the fit recovers the factor and the exact depth."""
  scene = multicam.open_scene(str(assets / "multicam" / "train" / "f18_aperture10" / "scene1"))
  w2c = scene_views(scene, "cam02")
  exact = scene.read_depth("cam02")
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  rot = q * np.sign(np.linalg.det(q))  # a rotation
  similarity = np.eye(4)  # the prediction's world -> the dataset's: y = s R x + t
  similarity[:3, :3], similarity[:3, 3] = 4.0 * rot, rng.standard_normal(3)
  # w2c_pred = diag(1/s) w2c similarity (the camera's frame shrinks with the world), as [3, 4].
  predicted = np.stack([(np.diag([0.25, 0.25, 0.25, 1.0]) @ m @ similarity)[:3] for m in w2c])
  depth = np.concatenate([exact, np.ones((len(w2c) - T, H, W))]).astype(np.float32) / 4.0
  fitted = depth_scale.align_prediction(depth, predicted, w2c, T, (H, W))
  assert fitted.fit.scale == pytest.approx(4.0, rel=1e-9)
  assert fitted.fit.residual < 1e-9 * fitted.fit.spread
  np.testing.assert_allclose(fitted.depth, exact, rtol=1e-6)
  # The source clip alone, from a camera that does not move: no baseline, refused by name.
  still = np.repeat(w2c[:1], T, axis=0)
  with pytest.raises(ValueError, match="no baseline to fix the depth scale"):
    depth_scale.align_prediction(depth[:T], predicted[:T], still, T, (H, W))


def test_videos_without_depth_use_depth_anything_3(assets, tmp_path, capsys):
  """The test scene without its depth files: a tiny random DA3 estimates each source clip's
  depth (with the other cameras' anchor frames), scaled by the fit; records as usual."""
  root = tmp_path / "multicam"
  shutil.copytree(assets / "multicam" / "test", root / "test")
  for depth in glob.glob(str(root / "test" / "*" / "*" / "depth")):
    shutil.rmtree(depth)
  args = argv(assets, tmp_path / "records", "--depth-model", str(assets / "da3"),
              "--depth_process_res", "98", root=root)
  args[args.index("--splits") + 1] = "test"
  no_model = [a for a in args if a not in ("--depth-model", str(assets / "da3"))]
  code, _, err = run_cli(no_model + ["--name", "nodepth"], capsys)
  assert code == 2 and "no depth file and no --depth-model" in err
  code, out, _ = run_cli(args, capsys)
  assert code == 0 and "test: 6 records in 1 shard(s)" in out
  directory = records.prepared_dir(str(tmp_path / "records"), "latents")
  unit = latents.read_unit_record(directory, latents.Unit("test", 0, 1, ()))
  depths = unit["scenes"][0]["depth"]
  assert [d["camera"] for d in depths] == ["cam01", "cam02", "cam03"]
  for d in depths:
    assert d["depth"] == "da3" and np.isfinite(d["scale"]) and d["scale"] > 0
    assert d["spread_m"] > 0.1  # the anchors spread the views over metres
  for record in arrayrecord.data_source(directory, "test"):
    assert np.all(np.isfinite(np.asarray(record["render_latent"], np.float32)))
