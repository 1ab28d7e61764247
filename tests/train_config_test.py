"""Training configs: the full-size ones need a backbone (an error naming the flag, not a silent
random init), the tiny and demo ones train from random weights, the AOT planner still loads the
full-size ones, and the documented meshes split the global batch."""

import os
import re

import pytest
from absl import flags
from ml_collections import config_flags

from configs import ablations, demo, postcam_1p3b, postcam_14b, postcam_tiny
from postcam_jax import planning, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = {"postcam_1p3b": postcam_1p3b, "postcam_14b": postcam_14b}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_configs_require_a_backbone(name, tmp_path):
  config = FULL[name].get_config()
  assert config.backbone is None
  with pytest.raises(ValueError, match=r"--config\.backbone=.*tools/convert_weights\.py "
                                       r"init-postcam"):
    training.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # stopped before any work
  assert ablations.get_config("render_first").backbone is None


def test_condition_dropout_with_a_render_only_stage_fails_before_any_work(tmp_path):
  config = ablations.get_config("render_first,tiny")
  with config.unlocked():
    config.loss.condition_dropout = 0.1
  with pytest.raises(ValueError, match="'render_first' has a render-only stage"):
    training.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_backbone_flag_on_the_command_line(tmp_path):
  """``--config.backbone=DIR`` fills the placeholder through config_flags (locked config)."""
  path = os.path.join(REPO, "configs", "postcam_1p3b.py")

  def parse(*args):
    argv = ["prog", f"--config={path}", *args]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                             lock_config=True, sys_argv=argv)
    values(argv)
    return holder.value

  assert training.backbone_of(parse(f"--config.backbone={tmp_path}")) == str(tmp_path)
  assert training.backbone_of(parse("--config.backbone=")) == ""
  with pytest.raises(ValueError, match="config.backbone is required"):
    training.backbone_of(parse("--config.seed=3"))


def test_small_configs_train_from_random_weights():
  for config in (postcam_tiny.get_config(), demo.get_config(),
                 ablations.get_config("render_first,tiny")):
    assert training.backbone_of(config) == ""


@pytest.mark.parametrize("name", sorted(FULL))
def test_aot_planner_still_loads_the_full_size_configs(name):
  """The planner never loads a backbone: its config handling works with the unset one."""
  config = planning.load_config(os.path.join(REPO, "configs", f"{name}.py"),
                           ["--config.model.remat=dots"])
  shallow = planning.with_layers(planning.with_options(config, "full", 2), 1)
  assert shallow.backbone is None and shallow.optim.accum_steps == 2
  assert training.model_config(shallow).num_layers == 1


@pytest.mark.parametrize("name", sorted(FULL))
def test_documented_mesh_splits_the_global_batch(name):
  config = FULL[name].get_config()
  spec = re.search(r"--config\.mesh=(\S+)", FULL[name].__doc__).group(1)
  sizes = dict((k, int(v)) for k, v in (part.split("=") for part in spec.split(",")))
  data_parallel = sizes.get("data", 1) * sizes.get("fsdp", 1)
  assert config.data.batch_size % data_parallel == 0, (spec, config.data.batch_size)
  if name == "postcam_14b":
    assert spec == "fsdp=16,sequence=4"
