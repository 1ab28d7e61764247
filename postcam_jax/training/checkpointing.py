"""Training checkpoints: one Orbax ``CheckpointManager`` step = everything a run needs to resume.

A step directory ``<workdir>/checkpoints/<step>/`` holds three items:

- ``state``: a pytree ``{"params": trainable parameters, "opt": optimizer state, "step": int,
  "rng": uint32 key data}`` (``StandardSave``). The frozen backbone is *not* in it: ``meta`` names
  where it comes from (a model directory, or the init seed), and a resume rebuilds it from there.
- ``data``: the Grain iterator position (``grain.checkpoint.CheckpointSave``), so the batches after
  a resume are those an uninterrupted run would have seen.
- ``meta``: JSON (the run's config, the backbone reference, the stage).

Saves are asynchronous (``enable_async_checkpointing``) at the steps chosen by a
``FixedIntervalPolicy`` (every ``K`` steps; ``force`` for final/preemption saves), and the newest
``keep`` steps are kept (``LatestN``). Restores are by abstract target: every array is read
straight into the sharding of the *current* mesh, which may differ from the saving run's.
:class:`PreemptionWatcher` turns SIGTERM into a final save at a step every process agrees on.
"""

import os
import signal
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation
from orbax.checkpoint.checkpoint_managers import save_decision_policy as save_decision

ITEMS = ("state", "data", "meta")


class Checkpointer:
  """The run's checkpoint manager (see the module docstring)."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    if every < 1 or keep < 1:
      raise ValueError(f"checkpoint every and keep must be >= 1, got every={every}, keep={keep}")
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=save_decision.FixedIntervalPolicy(every),
        preservation_policy=preservation.LatestN(keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,  # a save cut short by SIGKILL leaves no half step behind
        create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=ITEMS,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Mapping[str, Any], iterator, meta: Mapping[str, Any],
           *, force: bool = False) -> bool:
    """Save (asynchronously) if the policy wants ``step`` or ``force``; True if a save started."""
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta))}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(iterator)
    saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    if saved:
      logging.info("checkpoint: saving step %d under %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state, iterator=None) -> dict:
    """The ``state`` item of ``step``, read into ``abstract_state``'s shapes and shardings; moves
    ``iterator`` (a fresh one of the same pipeline) to the saved position when given."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a tree of live arrays: a restore target."""
  def one(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return np.zeros_like(x)  # host values (the step) restore as numpy

  return jax.tree.map(one, tree)


def find_step_dir(path: str) -> tuple[str, int]:
  """A trainer checkpoint to initialise from: ``path`` is a workdir, its ``checkpoints``
  directory (latest step), or one step directory. Returns (manager directory, step)."""
  path = os.path.abspath(path)
  for candidate in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(candidate):
      with ocp.CheckpointManager(candidate, item_names=ITEMS,
                                 options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        step = m.latest_step()
      if step is not None:
        return candidate, step
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), int(base)
  raise FileNotFoundError(f"{path}: no trainer checkpoint (expected a workdir, its checkpoints/ "
                          f"directory, or a step directory holding state/)")


def restore_params(path: str, abstract_params) -> dict:
  """Only the trainable parameters of a trainer checkpoint (``init_from``), into
  ``abstract_params``' shardings; the optimizer state and data position are not read."""
  directory, step = find_step_dir(path)
  ckptr = ocp.StandardCheckpointer()
  state_dir = os.path.join(directory, str(step), "state")
  restored = _partial_restore(ckptr, state_dir, abstract_params)
  ckptr.close()
  logging.info("initialised the trainable parameters from %s (step %d)", directory, step)
  return restored


def _partial_restore(ckptr, state_dir, abstract_params):
  """Restore the ``params`` subtree only (the stored tree also has opt/step/rng)."""
  meta = ckptr.metadata(state_dir)
  tree = meta.item_metadata if hasattr(meta, "item_metadata") else meta
  stored = tree.tree if hasattr(tree, "tree") else tree
  full = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), dict(stored))
  full["params"] = abstract_params
  return ckptr.restore(state_dir, full)["params"]


class PreemptionWatcher:
  """A preemption notice (SIGTERM) -> ``should_stop(step)`` at a step all processes agree on.

  Several processes: JAX's own preemption sync point, which the distributed runtime arms when any
  process receives SIGTERM and which agrees on the step in the background; checking it is local,
  so ordinary steps never wait on the other hosts. One process: a SIGTERM handler sets a flag.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self.requested = False
    self._previous = {}
    if jax.process_count() == 1:
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving a checkpoint and stopping", signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    return multihost_utils.reached_preemption_sync_point(step)

  def restore_handlers(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
