"""Checkpoints of the whole meta-training state, and the workdir's config guard.

A checkpoint (orbax-checkpoint ``CheckpointManager``, one directory per outer step under
``<workdir>/checkpoints``) holds two items: ``state``, the ``MetaState`` pytree (step, theta, outer
optimizer state, every particle's state including its rng keys and noise), restored with the
shardings of the live state; and ``meta``, JSON with the config and run facts (burn-in steps,
device count). Saves are synchronous: the outer step donates its buffers, so an asynchronous save
could read an array after the next step has reused it.

``<workdir>/config.json`` records the config a workdir was started with; a run with a different
config is refused unless the user asks to overwrite, which removes the run's outputs first.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import orbax.checkpoint as ocp

from meta_train import config_flags

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# What a run writes into its workdir; --overwrite removes exactly these.
RUN_OUTPUTS = (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    "tensorboard",
    "metrics.jsonl",
    "export",
    "curves.png",
    "parameter_overview.txt",
    "comparison",
)


class WorkdirConfigMismatchError(RuntimeError):
    """The workdir holds a run with a different config."""


def prepare_workdir(workdir: str, config: Any, overwrite: bool = False) -> None:
    """Make ``workdir`` ready for ``config`` and record the config there.

    Raises ``WorkdirConfigMismatchError`` listing the differing keys when the workdir was started
    with another config (``RESUMABLE_KEYS`` such as ``num_outer_steps`` may differ), unless
    ``overwrite``, which deletes the previous run's outputs (and nothing else in the workdir).
    """
    current = config_flags.canonical(config)
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path) and not overwrite:
        with open(path) as f:
            stored = json.load(f)
        changed = config_flags.differences(stored, current)
        if changed:
            listing = "\n  ".join(changed)
            raise WorkdirConfigMismatchError(
                f"workdir {workdir!r} holds a run with a different config:\n  {listing}\n"
                "Rerun with the same config to resume it, choose another --workdir, or pass "
                "--overwrite to delete that run and start afresh."
            )
    if overwrite:
        for name in RUN_OUTPUTS:
            target = os.path.join(workdir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(current, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


class Checkpointer:
    """Saves and restores ``(state, meta)`` in ``<workdir>/checkpoints``, keeping the last few."""

    def __init__(self, workdir: str, keep: int):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Save unless a checkpoint of ``step`` exists; return whether it saved."""
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, abstract: Any) -> tuple[Any, dict]:
        """The state saved at ``step`` laid out as ``abstract`` (``jax.ShapeDtypeStruct`` leaves
        with shardings)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
