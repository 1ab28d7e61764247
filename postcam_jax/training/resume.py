"""A resumed workdir's stored run against the new config, before any data or model work.

Every checkpoint's ``meta`` item holds the run's config (``config.to_json()``), the resolved model
config and where the frozen backbone comes from (``training.loop``). :func:`check_resume` reads the
latest one and compares:

- incompatible, refused with one line naming every differing field (:class:`ResumeError`): the
  model's architecture (every field of the resolved model config but the run-time choices
  :data:`RUNTIME_MODEL_FIELDS`), the backbone (its directory, or the seed of a random one), what
  the data is (``data.*`` but the loader's knobs in :data:`LOADER_FIELDS`), and
  ``optim.accum_steps`` (the optimizer state's structure). A restore would fail deep in Orbax, or
  worse, mix two runs;
- compatible, logged as such: everything else (learning rate and schedule, steps, loss, eval,
  logging, checkpointing, mesh, the run-time model choices).
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp
from absl import logging

from postcam_jax.training import checkpointing

RUNTIME_MODEL_FIELDS = ("remat", "attention", "precision")
# data.* fields that change how (fast) or from where the same examples are read, not which.
LOADER_FIELDS = ("data.worker_count", "data.worker_buffer_size", "data.read_threads",
                 "data.prefetch_buffer_size", "data.cache_dir", "data.data_dir",
                 "data.eval_split")
INCOMPATIBLE_FIELDS = ("optim.accum_steps",)
_ABSENT = "(absent)"


class ResumeError(ValueError):
  """The workdir holds a run that this config cannot continue; the message names the fields."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _normal(value):
  """Tuples and lists compare alike (the stored config went through JSON)."""
  return json.loads(json.dumps(value, default=str))


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
  keys = sorted(set(old) | set(new))
  return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys
          if _normal(old.get(k, _ABSENT)) != _normal(new.get(k, _ABSENT))}


def _incompatible_config_field(key: str) -> bool:
  if key in INCOMPATIBLE_FIELDS:
    return True
  return key.startswith("data.") and key not in LOADER_FIELDS


def backbone_reference(config) -> dict:
  """Where the frozen backbone comes from, as the checkpoint's meta records it."""
  if config.get("backbone"):
    return {"backbone": config.backbone}
  return {"backbone": None, "init_seed": config.seed}


def compare(meta: Mapping[str, Any], config, model: Mapping[str, Any]) -> tuple[dict, dict]:
  """({field: (stored, new)} incompatible, the same for compatible changes) between a
  checkpoint's ``meta`` and the new ``config`` with its resolved ``model`` config."""
  incompatible, compatible = {}, {}
  if isinstance(meta.get("model"), Mapping):  # (checkpoints of older versions may lack it)
    for key, change in _diff(meta["model"], dict(model)).items():
      target = compatible if key in RUNTIME_MODEL_FIELDS else incompatible
      target[f"model.{key}"] = change
  new_ref = backbone_reference(config)
  if "backbone" in meta and meta["backbone"] != new_ref["backbone"]:
    incompatible["backbone"] = (meta["backbone"], new_ref["backbone"])
  elif "init_seed" in meta and "init_seed" in new_ref and meta["init_seed"] != new_ref[
      "init_seed"]:
    incompatible["seed (of the random backbone)"] = (meta.get("init_seed"), new_ref["init_seed"])
  if not meta.get("config"):
    return incompatible, compatible
  stored_config = flatten(json.loads(meta["config"]))
  new_config = flatten(json.loads(config.to_json()))
  for key, change in _diff(stored_config, new_config).items():
    if key.startswith("model.") or key == "backbone":
      continue  # compared above, resolved
    if key == "seed" and new_ref.get("init_seed") is not None:
      continue  # the random backbone's seed: compared above
    target = incompatible if _incompatible_config_field(key) else compatible
    target[key] = change
  return incompatible, compatible


def stored_meta(workdir: str) -> tuple[int, dict] | None:
  """(step, meta) of the workdir's latest checkpoint, or None when it has none."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    return None
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(directory, item_names=checkpointing.ITEMS, options=options) as m:
    step = m.latest_step()
    if step is None:
      return None
    meta = m.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return step, dict(meta)


def _changes(changes: Mapping[str, tuple]) -> str:
  return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def check_resume(workdir: str, config, model) -> dict:
  """Refuse a workdir whose latest checkpoint holds a run this ``config`` (resolved model config
  ``model``, a dataclass or a mapping) cannot continue; log the compatible changes. Returns the
  compatible changes ({} for a fresh workdir)."""
  found = stored_meta(workdir)
  if found is None:
    return {}
  step, meta = found
  model = model.to_dict() if hasattr(model, "to_dict") else dict(model)
  incompatible, compatible = compare(meta, config, model)
  if incompatible:
    raise ResumeError(
        f"--workdir {workdir} holds a run (checkpoint step {step}) that this config cannot "
        f"continue: {_changes(incompatible)}; pass the run's values again, or a new --workdir "
        f"to start another run")
  if compatible:
    logging.warning("resuming %s (step %d) with changed settings: %s", workdir, step,
                    _changes(compatible))
  return compatible
