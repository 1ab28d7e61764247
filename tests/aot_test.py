"""The AOT planner: tiny PostCam training step compiled for a v5p slice, and the clear no-fit exit.

libtpu compiles for abstract TPU devices on this CPU host; nothing runs on a TPU.
"""

import math
import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from postcam_jax import parallel, planning
from postcam_jax.parallel import chips

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "postcam_tiny.py")
BIG = os.path.join(REPO, "configs", "postcam_14b.py")


def _analytic_param_bytes(config, sizes) -> int:
  """Per-chip parameter bytes from the logical names alone: each dimension whose logical axis
  maps to mesh axes (and divides) is split by their sizes."""
  from postcam_jax import training  # pylint: disable=import-outside-toplevel
  from postcam_jax.models.postcam import PostCamModel  # pylint: disable=import-outside-toplevel
  cfg = training.model_config(config)
  model = nnx.eval_shape(lambda: PostCamModel(cfg, rngs=nnx.Rngs(0)))
  rules = parallel.rules_dict()
  total = 0
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    used, elems = set(), 1
    for dim, name in zip(var.shape, names):
      axes = rules.get(name) if name else None
      axes = [a for a in ((axes,) if isinstance(axes, str) else tuple(axes or ()))
              if a not in used]
      split = 1
      for a in axes:
        if dim % (split * sizes[a]) == 0:
          split *= sizes[a]
          used.add(a)
      elems *= dim // split
    total += elems * jnp.dtype(var.dtype).itemsize
  return total


def test_tiny_train_step_compiles_for_v5p_with_data_and_sequence_sharding():
  config = planning.load_config(TINY, ["--config.model.precision=mixed"])  # bf16: splash kernels
  sizes = parallel.parse_mesh_spec("data=2,sequence=2", 4)
  req = planning.Request(config=config, topology="v5p:2x2x1", mesh=sizes,
                    latent=planning.video_latent(config), render=(3, 4, 6))
  report = planning.plan(req, price=False)
  assert report["fits"] and report["chips"] == 4 and report["mesh"].startswith("data=2,fsdp=1")
  assert report["param_bytes"] == _analytic_param_bytes(config, sizes)
  mem = report["memory"]
  assert mem["argument"] >= report["param_bytes"] + report["opt_state_bytes"]
  assert report["raw_cost"]["kernel_launches"].get("splash_mha_fwd_residuals", 0) > 0


def test_train_plan_lowers_the_loops_accumulated_step_and_prices_one_micro_batch():
  """With optim.accum_steps=2 the planner lowers the trainer's own step: the micro-batches come
  stacked [2, micro, ...] and the step's scan sums them; its price is the same step's on one
  micro-batch without accumulation (planning.one_micro_step), times 2."""
  config = planning.load_config(TINY, ["--config.optim.accum_steps=2"])
  sizes = parallel.parse_mesh_spec("fsdp=4", 4)
  req = planning.Request(config=config, topology="v5p:2x2x1", mesh=sizes,
                         latent=planning.video_latent(config), render=(3, 4, 6))
  batch = int(config.data.batch_size)
  mesh = planning.abstract_mesh(req.topology, sizes)
  _, args, _, facts = planning.build(req, mesh)
  assert args[-1]["target_latent"].shape[:2] == (2, batch // 2) and facts["repeats"] == 2
  lowered, _ = planning.lower_step(req)  # what the plan compiles for memory
  assert f"tensor<2x{batch // 2}x" in lowered.as_text()
  micro = planning.one_micro_step(req)
  assert (int(micro.config.optim.accum_steps), int(micro.config.data.batch_size)) == (
      1, batch // 2)
  assert int(req.config.optim.accum_steps) == 2  # the request itself is left as it was
  sample = req.replace(step="sample")
  assert planning.one_micro_step(sample) is sample


def test_fsdp_sharded_parameter_bytes_are_exact():
  config = planning.load_config(TINY, [])
  sizes = parallel.parse_mesh_spec("fsdp=2,sequence=2", 4)
  mesh = planning.abstract_mesh("v5p:2x2x1", sizes)
  req = planning.Request(config=config, topology="v5p:2x2x1", mesh=sizes,
                    latent=planning.video_latent(config), render=(3, 4, 6))
  _, _, _, facts = planning.build(req, mesh)
  want = _analytic_param_bytes(config, sizes)
  assert facts["param_bytes"] == want
  assert want < facts["global_param_bytes"]  # the embed axes really are split


def test_14b_training_on_one_v5p_chip_exits_with_the_gap(capsys):
  code = planning.main(["--config", BIG, "--topology", "v5p:1x1x1", "--mesh", "fsdp=1"])
  err = capsys.readouterr().err
  assert code == 2
  assert "GiB over per chip" in err and "try fsdp>=" in err
  gap = float(err.split("does not fit: ")[1].split(" GiB over")[0])
  assert gap > 0


def test_hlo_kernel_flops_weights_by_trip_count():
  hlo = "\n".join([
      "%body (p: f32[]) -> f32[] {",
      '  %splash_mha_fwd_residuals.1 = (bf16[2,256,64]) custom-call(%a), '
      'custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,2,2]{2,1,0}, '
      'bf16[2,256,64]{2,1,0}, bf16[2,128,64]{2,1,0}, bf16[2,128,64]{2,1,0}}, x=1',
      "}",
      "ENTRY %main (p: f32[]) -> f32[] {",
      '  %w = f32[] while(%p), condition=%cond, body=%body, '
      'backend_config={"known_trip_count":{"n":"3"}}',
      "}"])
  flops, launches = planning.hlo_kernel_flops(hlo)
  assert launches == {"splash_mha_fwd_residuals": 3}
  assert flops == 3 * 4.0 * 2 * 256 * 128 * 64


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match="unknown TPU generation"):
    chips.chip_for_topology("v9x:2x2")
  with pytest.raises(ValueError, match="needs 8 devices, 4 are available"):
    parallel.parse_mesh_spec("data=2,sequence=4", 4)
  with pytest.raises(ValueError, match="AXIS=SIZE"):
    parallel.parse_mesh_spec("pipeline=2", 4)
  assert math.isclose(chips.CHIPS["v5p"].usable_hbm_gib, 95.74, rel_tol=1e-6)


def test_sweep_prices_the_smallest_fitting_accumulation_and_prunes_policies():
  """With a stand-in planner: remat=full fits from accum 2, dots_no_batch from accum 4, none
  never; the sweep prices exactly those and skips none after dots_no_batch fails at accum < 2."""
  config = planning.load_config(TINY, ["--config.data.batch_size=16"])
  sizes = parallel.parse_mesh_spec("fsdp=4", 4)
  req = planning.Request(config=config, topology="v5p:2x2x1", mesh=sizes,
                    latent=planning.video_latent(config), render=(3, 4, 6))
  need = {"full": 2, "dots_no_batch": 4, "none": 99}
  seconds = {"full": 2.0, "dots_no_batch": 1.0}
  calls = []

  def fake_plan(cand):
    remat = planning.remat_of(cand)
    accum = int(cand.config.optim.accum_steps)
    calls.append((remat, accum))
    fits = accum >= need[remat]
    r = {"fits": fits, "need_bytes": planning.GIB, "mesh": parallel.mesh_spec_str(cand.mesh),
         "remat": remat, "accum_steps": accum}
    if fits:
      r.update(step_seconds=seconds[remat], mfu=0.5, tokens_per_second=1.0)
    return r

  rows = planning.sweep(req, accums=(1, 2, 4), meshes=[sizes], log=lambda *_: None,
                   plan_fn=fake_plan)
  assert calls == [("full", 1), ("full", 2), ("dots_no_batch", 2), ("dots_no_batch", 4),
                   ("none", 4)]
  assert [(r["remat"], r["accum_steps"]) for r in rows] == [("dots_no_batch", 4), ("full", 2)]
  text = planning.format_sweep(rows, "configs/x.py")
  assert text.splitlines()[1].startswith("*") and "--config.model.remat=dots_no_batch" in text
  assert "--config.optim.accum_steps=4" in text


def test_candidate_meshes_cover_sequence_tensor_and_batch_rules():
  config = planning.load_config(TINY, [])
  req = planning.Request(config=config, topology="v5p:2x2x1", mesh=parallel.parse_mesh_spec("", 4),
                    latent=planning.video_latent(config), render=(3, 4, 6))
  meshes = planning.candidate_meshes(4, req, batch=4)
  assert {"data": 1, "fsdp": 4, "tensor": 1, "sequence": 1} in meshes
  assert {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 4} in meshes
  assert {"data": 1, "fsdp": 2, "tensor": 2, "sequence": 1} in meshes  # tiny: 2 heads
  assert all(4 % (m["data"] * m["fsdp"]) == 0 for m in meshes)
  assert all(m["data"] * m["fsdp"] * m["tensor"] * m["sequence"] == 4 for m in meshes)
  assert not any(m["tensor"] == 4 for m in meshes)  # 4 does not divide the 2 heads


def test_sweep_journal_resumes_without_replanning(tmp_path):
  config = planning.load_config(TINY, ["--config.data.batch_size=16"])
  sizes = parallel.parse_mesh_spec("fsdp=4", 4)
  req = planning.Request(config=config, topology="v5p:2x2x1", mesh=sizes,
                    latent=planning.video_latent(config), render=(3, 4, 6))
  calls = []

  def fake_plan(cand):
    accum = int(cand.config.optim.accum_steps)
    calls.append((planning.remat_of(cand), accum))
    fits = planning.remat_of(cand) == "full" and accum >= 2
    return {"fits": fits, "need_bytes": planning.GIB, "mesh": parallel.mesh_spec_str(cand.mesh),
            "remat": planning.remat_of(cand), "accum_steps": accum, "step_seconds": 1.0, "mfu": 0.5,
            "tokens_per_second": 1.0}

  path = str(tmp_path / "sweep_candidates.jsonl")
  first = planning.sweep(req, meshes=[sizes], log=lambda *_: None, plan_fn=fake_plan,
                    journal=planning.Journal(path))
  planned = list(calls)
  assert planned == [("full", 1), ("full", 2), ("dots_no_batch", 2), ("dots_no_batch", 4)]
  calls.clear()
  again = planning.sweep(req, meshes=[sizes], log=lambda *_: None, plan_fn=fake_plan,
                    journal=planning.Journal(path))
  assert calls == [] and again == first  # everything came from the journal
  other = req.replace(latent=(5, 16, 24))  # a different request reuses nothing
  planning.sweep(other, meshes=[sizes], log=lambda *_: None, plan_fn=fake_plan,
            journal=planning.Journal(path))
  assert calls == planned


def test_sweep_restricted_to_several_meshes_from_the_command_line(tmp_path, monkeypatch):
  """`--sweep --mesh 'fsdp=4;data=4'` plans exactly those meshes (a sweep split across hosts or
  finished in parts); several meshes without --sweep are refused."""
  planned = []

  def fake_plan(cand, **_):
    planned.append(parallel.mesh_spec_str(cand.mesh))
    return {"fits": True, "need_bytes": planning.GIB, "mesh": parallel.mesh_spec_str(cand.mesh),
            "remat": planning.remat_of(cand), "accum_steps": int(cand.config.optim.accum_steps),
            "step_seconds": 2.0 if cand.mesh["data"] == 4 else 1.0, "mfu": 0.5,
            "tokens_per_second": 1.0}

  monkeypatch.setattr(planning.planner, "plan", fake_plan)
  argv = ["--config", TINY, "--topology", "v5p:2x2x1", "--sweep", "--mesh", "fsdp=4;data=4",
          "--out", str(tmp_path), "--config.data.batch_size=16"]
  assert planning.main(argv) == 0
  assert sorted(set(planned)) == ["data=1,fsdp=4,tensor=1,sequence=1",
                                  "data=4,fsdp=1,tensor=1,sequence=1"]
  text = (tmp_path / "sweep.txt").read_text()
  assert "--config.mesh=data=1,fsdp=4,tensor=1,sequence=1" in text  # the faster one is best
  assert [m["fsdp"] for m in planning.parse_meshes("fsdp=4; data=4 ;", 4)] == [4, 1]
  with pytest.raises(SystemExit, match="for --sweep"):
    planning.main(["--config", TINY, "--topology", "v5p:2x2x1", "--mesh", "fsdp=4;data=4"])


def test_v6e_concat_bitcast_sentinels_are_taken_out_of_the_cost():
  """On v6e the cost model prices each ConcatBitcast custom call at -1 s. A 0-block 1.3B forward
  at latent [3, 30, 52] compiles one (the full-size steps have dozens): its reported time is
  negative; the planner's is the rest of the program, about its bytes at HBM bandwidth."""
  config = planning.with_layers(
      planning.load_config(os.path.join(REPO, "configs", "postcam_1p3b.py"),
                      ["--config.model.remat=none"]), 0)
  req = planning.Request(config=config, topology="v6e:1x1", mesh=parallel.parse_mesh_spec("fsdp=1", 1),
                    step="forward", latent=(3, 30, 52), render=None, batch=1)
  lowered, _ = planning.lower_step(req)
  cost = planning.cost_of(lowered.compile())
  assert cost["sentinel_custom_calls"] >= 1
  assert cost["reported_optimal_seconds"] < 0
  assert cost["optimal_seconds"] == pytest.approx(
      cost["reported_optimal_seconds"] + cost["sentinel_custom_calls"], abs=1e-9)
  memory_bound = cost["bytes_accessed"] / chips.CHIPS["v6e"].hbm_bandwidth
  assert 0.5 * memory_bound < cost["optimal_seconds"] < 4 * memory_bound


@pytest.mark.parametrize("topology", ["v5p:1x1x1", "v6e:1x1"])
def test_matrix_inverse_sentinels_are_taken_out_of_the_cost(topology):
  """The renderer inverts 4x4 camera matrices; on both chips the cost model prices each of an
  inverse's three custom calls (LU, two triangular inverses) at -1 s: jnp.linalg.inv of one 4x4
  reports -3 s. The planner's time is the rest: about the program's few bytes at HBM bandwidth."""
  mesh = parallel.make_mesh({"data": 1}, devices=planning.topology_devices(topology))
  x = jax.ShapeDtypeStruct((1, 4, 4), jnp.float32,
                           sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  cost = planning.cost_of(jax.jit(jnp.linalg.inv).lower(x).compile())
  assert cost["sentinel_custom_calls"] == 3
  assert cost["reported_optimal_seconds"] == pytest.approx(-3.0, abs=1e-3)
  assert 0 <= cost["optimal_seconds"] < 1e-3


def test_a_negative_time_left_after_the_sentinels_is_an_error():
  class FakeCompiled:
    def cost_analysis(self):
      return {"flops": 1.0, "optimal_seconds": -2.5, "bytes accessed": 1.0}

    def as_text(self):
      return 'ENTRY %main {\n  %c = f32[8]{0} custom-call(), custom_call_target="ConcatBitcast"\n}'

  with pytest.raises(ValueError, match="negative time"):
    planning.cost_of(FakeCompiled())
  FakeCompiled.cost_analysis = lambda self: {"flops": 1.0, "optimal_seconds": -0.75}
  assert planning.cost_of(FakeCompiled())["optimal_seconds"] == pytest.approx(0.25)


def test_both_phrasings_of_the_compilers_out_of_hbm_verdict_are_read():
  assert planning.oom_bytes("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
                       "for HLO temporaries (53.46G) exceeds available HBM (31.25G).") == int(
                           53.46 * planning.GIB)
  assert planning.oom_bytes("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent "
                       "error. Ran out of memory in memory space hbm. Used 15.80G of 15.75G hbm. "
                       "Exceeded hbm capacity by 56.38M.") == int(15.80 * planning.GIB)
  assert planning.oom_bytes("INTERNAL: something else") is None


def test_tpu_targets_script_builds_the_real_requests_and_fails_a_missed_target(monkeypatch, capsys):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(
      "tpu_targets", os.path.join(REPO, "benchmarks", "tpu_targets.py"))
  targets = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(targets)
  train_req = targets.request_for(targets.TARGETS["train_v5p8"])
  assert (train_req.mesh["fsdp"], train_req.config.model.remat,
          train_req.config.optim.accum_steps, train_req.config.data.batch_size) == (
              8, "dots_no_batch", 2, 16)
  assert train_req.latent == (11, 60, 104) and train_req.render == (11, 15, 26)
  fwd_req = targets.request_for(targets.TARGETS["wan_forward"])
  assert (fwd_req.step, fwd_req.latent, fwd_req.batch, fwd_req.config.model.remat) == (
      "wan_forward", (21, 60, 104), 1, "none")

  def fake_plan(seconds, mfu, fits=True):
    def plan(req, out_dir=None):
      del out_dir
      return {"fits": fits, "gap": "1.0 GiB over per chip", "step_seconds": seconds, "mfu": mfu,
              "need_bytes": 2 ** 30, "topology": req.topology, "mesh": parallel.mesh_spec_str(req.mesh)}
    return plan

  monkeypatch.setattr(planning.planner, "plan", fake_plan(0.74, 0.58))
  assert targets.main([]) == 0
  monkeypatch.setattr(planning.planner, "plan", fake_plan(0.76, 0.58))
  assert targets.main(["--only", "wan_forward"]) == 1
  assert "MISSED" in capsys.readouterr().out
  monkeypatch.setattr(planning.planner, "plan", fake_plan(0.70, 0.49))
  assert targets.main(["--only", "train_v5p8"]) == 1
  monkeypatch.setattr(planning.planner, "plan", fake_plan(0.70, 0.60, fits=False))
  assert targets.main(["--only", "train_v5p8"]) == 2
  assert "does not fit" in capsys.readouterr().out
