"""Orbax checkpoints of a run: the latest state (to resume) and the best-validation-loss state.

Two CheckpointManagers, `checkpoints/latest` (one) and `checkpoints/best` (two). Each
checkpoint holds the TrainState and, as JSON, the loop's host-side state (epoch, early-stopping
counters, running epoch sums), so a resumed run continues exactly where the checkpoint was
taken. Saves are synchronous: a SIGKILL can then only lose work done after the last commit,
never leave a half-written checkpoint that a resumption would trust. In a run of several
processes every process saves and restores (Orbax's multi-process checkpoints), each state
array as one array replicated over all their devices (parallel.to_global).
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from mammo_jax import parallel


def _manager(path: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(path, options=options)


class Checkpoints:
  """The latest and the best checkpoint of one workdir."""

  def __init__(self, workdir: str):
    self.latest_dir = os.path.join(os.path.abspath(workdir), 'checkpoints', 'latest')
    self.best_dir = os.path.join(os.path.abspath(workdir), 'checkpoints', 'best')
    self._latest = _manager(self.latest_dir, keep=1)
    # Two bests: the best is saved before the latest, so a kill between the two saves must
    # leave the previous best, which the resumed loop state still points at.
    self._best = _manager(self.best_dir, keep=2)

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def _save(self, manager: ocp.CheckpointManager, step: int, state, loop: dict) -> None:
    state = parallel.to_global(state)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               loop=ocp.args.JsonSave(loop)), force=True)
    manager.wait_until_finished()

  def save_latest(self, step: int, state, loop: dict) -> None:
    self._save(self._latest, step, state, loop)

  def save_best(self, step: int, state, loop: dict) -> None:
    self._save(self._best, step, state, loop)

  def _restore(self, manager: ocp.CheckpointManager, step: int, target):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, parallel.to_global(target))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), loop=ocp.args.JsonRestore()))
    return parallel.to_local(restored.state), restored.loop

  def restore_latest(self, target, default_loop: dict):
    """(state, loop) of the latest checkpoint, or (target, default_loop) when there is none."""
    step = self._latest.latest_step()
    if step is None:
      return target, default_loop
    state, loop = self._restore(self._latest, step, target)
    return state, {**default_loop, **loop}

  def restore_best(self, target, step: int):
    if step not in self._best.all_steps():
      raise FileNotFoundError(f'no best checkpoint for step {step} in {self.best_dir}')
    return self._restore(self._best, step, target)[0]

  def drop_best_after(self, step: int) -> None:
    """Removes a best checkpoint newer than the resumed state (killed between the two saves)."""
    for best_step in self._best.all_steps():
      if best_step > step:
        self._best.delete(best_step)
    self._best.reload()


def best_variables(workdir: str):
  """(params, batch_stats, step) of a finished run's best checkpoint, as saved.

  Read without a target, so the run may have had another optimizer (e.g. a feature-extraction
  stage whose state covers the head only); the caller merges the parameters strictly.
  """
  results = os.path.join(workdir, 'results.json')
  if not os.path.exists(results):
    raise FileNotFoundError(f'{workdir} holds no finished run (no results.json): run that '
                            f'stage to the end first, in that workdir')
  with open(results) as f:
    step = json.load(f)['best_step']
  best_dir = os.path.join(os.path.abspath(workdir), 'checkpoints', 'best')
  manager = ocp.CheckpointManager(best_dir, options=ocp.CheckpointManagerOptions(
      create=False, enable_async_checkpointing=False))
  if step not in manager.all_steps():
    raise FileNotFoundError(f'the best checkpoint (step {step}) named by {results} is missing '
                            f'from {best_dir}')
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = restored.state
  return state['params'], state.get('batch_stats'), step
