"""The workdir (ownership marker, config guard, exclusive lock) and checkpoints of the whole
meta-training state.

A workdir is lopt's when it holds ``lopt-workdir.json`` (format name and version), which lopt
writes when it starts a run in an empty or new folder, together with ``config.json``, the config
the run was started with. A folder that is not empty and has no marker is refused (a workdir of an
older lopt, with a lopt ``config.json`` but no marker, is adopted). A run with a different config
is refused unless the user passes ``--overwrite``, which deletes exactly the entries lopt writes
(``removable_entries``) and nothing else. ``WorkdirLock`` holds an exclusive ``fcntl.flock`` on
``lopt-workdir.lock`` for the whole run; the kernel releases it when the process dies, so a stale
lock file never blocks.

A checkpoint (orbax-checkpoint ``CheckpointManager``, one directory per outer step under
``<workdir>/checkpoints``) holds two items: ``state``, the ``MetaState`` pytree (step, theta, outer
optimizer state, every particle's state including its rng keys and noise), restored with the
shardings of the live state; and ``meta``, JSON with the config, run facts (burn-in steps, device
count) and a 32-bit fingerprint of every leaf of ``state``, checked on restore so that a flipped
bit is caught. ``restore_latest`` falls back to the newest step that restores and verifies and sets
the newer, unusable ones aside as ``<step>.corrupt``. Saves are synchronous: the outer step donates
its buffers, so an asynchronous save could read an array after the next step has reused it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from meta_train import config_flags, layout
from meta_train.evaluation.out_folder import EVAL_MARKER_FILE, probe_writable

WORKDIR_FORMAT = "lopt-workdir"
WORKDIR_FORMAT_VERSION = 1


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked; the message names what is there and the fix."""


class WorkdirConfigMismatchError(WorkdirError):
    """The workdir holds a run with a different config."""


class WorkdirLockedError(WorkdirError):
    """Another process holds the workdir's lock."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored or does not verify; the message names step and file."""


# The errors of a write the file system refused (full, read-only, no permission, quota, I/O).
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EFBIG}
)


class RunWriteError(RuntimeError):
    """A write of a running meta-training failed (disk full, permissions); the message names the
    write, the error and the last saved checkpoint, from which the same command resumes."""


# --- The workdir.


def _listing(names: list[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _is_lopt_config(path: str) -> bool:
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and {"estimator", "outer", "groups"} <= set(stored)


def _read_marker(workdir: str) -> dict | None:
    """The marker's contents, ``None`` when there is none; raises when it is not lopt's or is of
    another format version."""
    path = os.path.join(workdir, layout.MARKER_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            marker = json.load(f)
    except (OSError, ValueError) as error:
        raise WorkdirError(
            f"{path} is unreadable ({error}); if {workdir} is a lopt workdir, restore that "
            "file or choose another --workdir"
        ) from None
    version = marker.get("format_version") if isinstance(marker, dict) else None
    if not isinstance(marker, dict) or marker.get("format") != WORKDIR_FORMAT:
        raise WorkdirError(f"{path} is not a lopt workdir marker; choose another --workdir")
    if type(version) is not int or not 1 <= version <= WORKDIR_FORMAT_VERSION:
        raise WorkdirError(
            f"{path} has workdir format version {version!r}; this lopt reads version "
            f"{WORKDIR_FORMAT_VERSION}: use the lopt that wrote it, or another --workdir"
        )
    return marker


def check_workdir(workdir: str, config: Any, overwrite: bool = False) -> None:
    """Raise ``WorkdirError`` unless ``workdir`` may hold a run of ``config``; writes nothing.

    Refused: a path that is a file; a non-empty folder that is not lopt's (no marker, no lopt
    ``config.json``); a workdir whose run has a different config (``RESUMABLE_KEYS`` such as
    ``num_outer_steps`` may differ), unless ``overwrite``; an ``export`` entry that is not an
    exported optimizer (``lopt.save`` would refuse it at the first export, after compiling).
    """
    from lopt import export

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file, not a folder; choose a folder path")
    entries = os.listdir(workdir) if os.path.isdir(workdir) else []
    if not set(entries) - {layout.LOCK_FILE}:  # lopt's lock alone: taken just before the marker
        return
    config_path = os.path.join(workdir, layout.CONFIG_FILE)
    if _read_marker(workdir) is None and not _is_lopt_config(config_path):
        raise WorkdirError(
            f"--workdir {workdir} is not empty and not a lopt workdir (it has no "
            f"{layout.MARKER_FILE}); it holds {_listing(entries)}; lopt writes only into an empty "
            "or new folder or one "
            "it started, and --overwrite does not change that: choose another --workdir"
        )
    export_path = os.path.join(workdir, layout.EXPORT_DIR)
    if os.path.exists(export_path) and not export.is_replaceable(export_path):
        raise WorkdirError(
            f"{export_path} is not an exported optimizer, and lopt writes its export there; "
            "move it away or choose another --workdir"
        )
    if os.path.exists(config_path) and not overwrite:
        with open(config_path) as f:
            stored = json.load(f)
        changed = config_flags.differences(stored, config_flags.canonical(config))
        if changed:
            listing = "; ".join(changed)
            raise WorkdirConfigMismatchError(
                f"workdir {workdir} holds a run with a different config ({listing}); rerun with "
                "the same config to resume it, choose another --workdir, or pass --overwrite to "
                "delete that run's outputs and start afresh"
            )


def check_writable(workdir: str) -> None:
    """Raise ``WorkdirError`` unless a file can be written in ``workdir`` (or where it would be
    created); ``check_workdir`` comes first, and nothing is left behind."""
    try:
        probe_writable(workdir)
    except OSError as error:
        raise WorkdirError(
            f"--workdir {workdir} is not writable ({error.strerror or error}); choose a writable "
            "folder, or fix its permissions"
        ) from None


def latest_saved_step(workdir: str) -> int | None:
    """The newest complete checkpoint step in ``workdir`` (orbax renames a step's folder to its
    number once it is written), or ``None``."""
    folder = os.path.join(workdir, layout.CHECKPOINT_DIR)
    steps = (
        [int(name) for name in os.listdir(folder) if name.isdigit()]
        if os.path.isdir(folder)
        else []
    )
    return max(steps, default=None)


def _folder_bytes(path: str) -> int:
    """The disk space the files under ``path`` take (whole blocks, as ``du``: a checkpoint's
    many small files take about twice their sizes)."""
    return sum(
        os.stat(os.path.join(root, name)).st_blocks * 512
        for root, _, names in os.walk(path)
        for name in names
    )


def ensure_space(folder: str, needed: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``what`` when the file system of ``folder`` has fewer than
    ``needed`` bytes free: checked before orbax writes, whose own disk-full failure logs errors
    and tracebacks from its threads before it raises."""
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)}: {what} needs about {needed // 1024} KiB and "
            f"{probe} has {free // 1024} KiB free",
        )


def _io_failure(error: BaseException) -> bool:
    """Whether ``error`` (orbax and tensorstore raise ``ValueError`` with a status) is the file
    system refusing a write, rather than a bug."""
    return isinstance(error, OSError) or bool(
        re.search(r"RESOURCE_EXHAUSTED|PERMISSION_DENIED|os_error_code", str(error))
    )


@contextlib.contextmanager
def orbax_write(what: str) -> Any:
    """Around an orbax write: its failure to write (``_io_failure``) is re-raised as one
    ``OSError`` naming ``what``, and its threads' ERROR logs of that failure are kept quiet."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)
    try:
        yield
    except Exception as error:
        if not _io_failure(error):
            raise
        found = re.search(r"os_error_code='?(\d+)", str(error))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(
            code, f"cannot write {what}: {os.strerror(code)} ({_first_line(error, 200)})"
        ) from None
    finally:
        absl_logger.setLevel(level)


def save_margin(previous: str, tree: Any) -> int:
    """Bytes to have free before writing a copy of ``previous`` (an earlier checkpoint step or
    export folder): its size and a quarter more; when there is none yet, twice the bytes of
    ``tree`` (taken as 8 per element) and 128 KiB for orbax's metadata."""
    if os.path.isdir(previous):
        size = _folder_bytes(previous)
        return size + size // 4
    # 8 bytes per element bounds every dtype of the state (rng keys are two uint32 words).
    elements = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree))
    return 2 * 8 * elements + 128 * 1024


def removable_entries(workdir: str) -> list[str]:
    """The entries of ``workdir`` (relative paths) that lopt wrote and ``--overwrite`` removes:
    ``layout.run_entries``, the export only when it is one. ``lopt evaluate``'s folders are not
    among them: ``--overwrite`` moves them aside (``evaluation_folders``)."""
    from lopt import export

    return [
        name
        for name in layout.run_entries(workdir)
        if name != layout.EXPORT_DIR or export.is_replaceable(os.path.join(workdir, name))
    ]


def evaluation_folders(workdir: str) -> list[str]:
    """The ``eval_*`` / ``export.eval_*`` folders of ``workdir`` that ``lopt evaluate`` wrote
    (they hold its marker or a report): results of another command, which ``--overwrite`` keeps
    by moving them to ``previous_evaluations/<time>/``."""
    return [
        name
        for name in sorted(os.listdir(workdir))
        if layout.EVAL_FOLDER.fullmatch(name)
        and os.path.isdir(os.path.join(workdir, name))
        and {"report.json", EVAL_MARKER_FILE} & set(os.listdir(os.path.join(workdir, name)))
    ]


def _remove_run_outputs(workdir: str) -> list[str]:
    """Delete ``removable_entries`` (then each folder of them left empty) and move the
    ``evaluation_folders`` aside; return what went, the moved folders with where to."""
    removed = removable_entries(workdir)
    for name in removed:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    for name in {entry.split(os.sep)[0] for entry in removed if os.sep in entry}:
        path = os.path.join(workdir, name)
        if not os.listdir(path):
            os.rmdir(path)
    moved = evaluation_folders(workdir)
    if moved:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        target = os.path.join(layout.PREVIOUS_EVALUATIONS_DIR, stamp)
        os.makedirs(os.path.join(workdir, target))
        for name in moved:
            os.rename(os.path.join(workdir, name), os.path.join(workdir, target, name))
    return removed + [f"{name} (moved to {os.path.join(target, name)})" for name in moved]


def _write_json(path: str, data: dict) -> None:
    with open(layout.staging(path), "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(layout.staging(path), path)


def prepare_workdir(workdir: str, config: Any, overwrite: bool = False) -> list[str]:
    """Make ``workdir`` ready for ``config``: check it (``check_workdir``), with ``overwrite``
    delete what an earlier run wrote there (``removable_entries``), and write the marker and
    ``config.json``. Returns the entries deleted."""
    check_workdir(workdir, config, overwrite)
    removed = _remove_run_outputs(workdir) if overwrite and os.path.isdir(workdir) else []
    os.makedirs(workdir, exist_ok=True)
    marker = _read_marker(workdir) or {
        "format": WORKDIR_FORMAT,
        "format_version": WORKDIR_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    _write_json(os.path.join(workdir, layout.MARKER_FILE), marker)
    _write_json(os.path.join(workdir, layout.CONFIG_FILE), config_flags.canonical(config))
    return removed


class WorkdirLock:
    """An exclusive lock on ``workdir`` for one process (``fcntl.flock`` on its lock file, which
    records the holder's pid and host). The kernel drops the lock when the holder exits or dies."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, layout.LOCK_FILE)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``WorkdirLockedError`` naming the holder at once."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "{}"
            os.close(fd)
            try:
                facts = json.loads(holder)
            except ValueError:
                facts = {}
            raise WorkdirLockedError(
                f"workdir {os.path.dirname(self.path)} is in use by another lopt process (pid "
                f"{facts.get('pid', '?')} on host {facts.get('host', '?')}, since "
                f"{facts.get('since', '?')}); wait for it to end, stop it, or choose another "
                "--workdir"
            ) from None
        os.ftruncate(fd, 0)
        since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        facts = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.write(fd, json.dumps(facts).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


# --- Checkpoints.


def _words(leaf: jax.Array) -> jax.Array:
    """The leaf's bits as a flat uint32 vector (narrower types widened, wider ones split)."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32).ravel()
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[leaf.dtype.itemsize]
    return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32).ravel()


@jax.jit
def _fingerprints(leaves: list[jax.Array]) -> list[jax.Array]:
    """Per leaf, ``sum_i w_i * word_i mod 2**32`` with odd weights ``w_i``: a single flipped bit
    changes a word by ``+-2**b``, so the sum by ``+-2**b * w_i``, never 0 mod ``2**32``."""
    sums = []
    for leaf in leaves:
        words = _words(leaf)
        weights = (2 * jnp.arange(words.size, dtype=jnp.uint32) + 1) * jnp.uint32(0x9E3779B1)
        sums.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return sums


def fingerprint(state: Any) -> dict[str, int]:
    """``{leaf path: 32-bit fingerprint}`` of a pytree of (possibly sharded) arrays."""
    paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state)[0], strict=True)
    sums = _fingerprints(list(leaves))
    return {
        jax.tree_util.keystr(path): int(np.asarray(value.addressable_data(0)))
        for path, value in zip(paths, sums, strict=True)
    }


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(error).__name__}: {line[:limit]}"


class Checkpointer:
    """Saves and restores ``(state, meta)`` in ``<workdir>/checkpoints``, keeping the last few."""

    # The JSON files of a step folder, read before orbax so that a corrupt one is named.
    JSON_FILES = ("_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/_sharding")

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, layout.CHECKPOINT_DIR))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Save unless a checkpoint of ``step`` exists; return whether it saved. ``meta`` gains
        the state's ``fingerprint``."""
        if step in self.manager.all_steps():
            return False
        latest = self.latest_step()
        previous = self._step_dir(latest) if latest is not None else ""
        what = f"the checkpoint of step {step} in {self.directory}"
        ensure_space(self.directory, save_margin(previous, state), what)
        meta = meta | {"fingerprint": fingerprint(state)}
        with orbax_write(what):
            return self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def restore(self, step: int, abstract: Any) -> tuple[Any, dict]:
        """The state saved at ``step`` laid out as ``abstract`` (``jax.ShapeDtypeStruct`` leaves
        with shardings), verified against its fingerprint; ``CheckpointError`` names the step and
        the file or leaf at fault."""
        folder = self._step_dir(step)
        for name in self.JSON_FILES:
            path = os.path.join(folder, name)
            try:
                with open(path) as f:
                    json.load(f)
            except FileNotFoundError:
                raise CheckpointError(f"step {step}: {path} is missing") from None
            except (OSError, ValueError) as error:
                raise CheckpointError(
                    f"step {step}: {path} is corrupt or truncated ({_first_line(error)})"
                ) from None
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as error:  # orbax and tensorstore raise many types for damaged data
            raise CheckpointError(
                f"step {step}: cannot read {os.path.join(folder, 'state')} (corrupt or "
                f"truncated data): {_first_line(error)}"
            ) from error
        state, meta = restored["state"], restored["meta"]
        stored = meta.get("fingerprint")
        if stored is not None:  # checkpoints of earlier lopt versions have none
            wrong = [
                leaf for leaf, value in fingerprint(state).items() if stored.get(leaf) != value
            ]
            if wrong:
                raise CheckpointError(
                    f"step {step}: the data in {os.path.join(folder, 'state')} does not match its "
                    f"fingerprint (corrupt) at {_listing(wrong, 3)}"
                )
        return state, meta

    def restore_latest(
        self, abstract: Any, log: Callable[[str], None]
    ) -> tuple[int, Any, dict] | None:
        """``(step, state, meta)`` of the newest checkpoint that restores and verifies, or
        ``None`` when there is none. Newer unusable steps are logged and set aside as
        ``<step>.corrupt``; ``CheckpointError`` when checkpoints exist and none is usable."""
        failed = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(step, abstract)
            except CheckpointError as error:
                log(f"checkpoint unusable: {error}")
                failed.append(step)
                continue
            if failed:
                self._set_aside(failed)
                log(
                    f"resuming from step {step}, the newest checkpoint that restores and "
                    f"verifies; set aside the newer one(s) as "
                    f"{', '.join(f'{s}.corrupt' for s in failed)} in {self.directory}"
                )
            return step, state, meta
        if failed:
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores (steps "
                f"{', '.join(map(str, failed))}, reasons above); move that folder away or pass "
                "--overwrite to start afresh"
            )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Rename unusable step folders out of orbax's sight, so the resumed run saves anew."""
        for step in steps:
            target, count = f"{self._step_dir(step)}.corrupt", 0
            while os.path.exists(target):
                count += 1
                target = f"{self._step_dir(step)}.corrupt-{count}"
            os.rename(self._step_dir(step), target)
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
