"""The folders ``lopt evaluate`` writes its reports to: where by default, which it may use, and
how it replaces them.

A folder holding ``EVAL_MARKER_FILE`` (or a ``report.json``) is lopt evaluate's: a later evaluation
may replace its files and a workdir's ``--overwrite`` moves it aside; any other non-empty folder
is refused, and so is a folder inside an export, which the export's next save replaces whole.

A run is atomic: ``claim_out_folder`` marks the folder ``running`` (the previous report stays);
the new report is written into a staging folder beside it (``staging_folder``), and ``publish``
renames that into place, so the folder holds one run's files, never a mix (no stale
``*_1x.png`` beside a rerun's ``*_2x.png``). Files of the user's in the folder are carried over.
A run killed before ``publish`` leaves the marker ``running``: the next run says so, and removes
the staging folders such runs left.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tempfile
import uuid

from lopt.export import CONFIG_FILE

EVAL_MARKER_FILE = "lopt-eval.json"
# What lopt evaluate writes into its folder (``report.write`` and the marker); other files are the
# user's and survive a rerun.
OWN_FILES = re.compile(r"report\.json|report\.md|.*\.png|" + re.escape(EVAL_MARKER_FILE))


def default_out_folder(optimizer: str, suite: str) -> str:
    """``<export>.eval_<suite>`` beside an export (one per export, and outside it: re-saving an
    export replaces its whole folder), else ``runs/<optimizer>.eval_<suite>``."""
    if os.path.isdir(optimizer):
        return f"{os.path.abspath(optimizer).rstrip(os.sep)}.eval_{suite}"
    return os.path.join("runs", f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', optimizer)}.eval_{suite}")


def probe_writable(path: str) -> None:
    """Raise ``OSError`` unless a file can be created and written in the folder ``path``, or,
    when it does not exist yet, in its nearest existing parent (where it would be created)."""
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    descriptor, probe = tempfile.mkstemp(prefix=".lopt-write-probe-", dir=folder)
    try:
        os.write(descriptor, b"lopt")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
        os.remove(probe)


def check_out_folder(out: str) -> None:
    """Raise ``ValueError`` unless ``out`` may receive a report: not a file, not inside an export,
    new, empty or written by ``lopt evaluate`` before (it holds its marker or a report), and
    writable (``probe_writable``)."""
    path = os.path.abspath(out)
    folder = path
    while True:
        if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
            raise ValueError(
                f"--out {out} is inside the export {folder}, which the next save replaces whole; "
                "choose a folder outside it"
            )
        if os.path.dirname(folder) == folder:
            break
        folder = os.path.dirname(folder)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    entries = os.listdir(path) if os.path.isdir(path) else []
    if entries and not {EVAL_MARKER_FILE, "report.json"} & set(entries):
        shown = ", ".join(sorted(entries)[:5]) + (" ..." if len(entries) > 5 else "")
        raise ValueError(
            f"--out {out} holds files lopt evaluate did not write ({shown}); choose a new or "
            "empty folder"
        )
    try:
        probe_writable(path)
    except OSError as error:
        raise ValueError(
            f"--out {out} is not writable ({error.strerror or error}); choose a writable folder"
        ) from None


def _aside(out: str, kind: str, tag: str) -> str:
    """The hidden sibling of ``out`` a run stages in (``tmp``) or moves the old folder to
    (``old``)."""
    path = os.path.abspath(out)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}-{tag}")


def _debris(out: str) -> list[str]:
    """The staging and old siblings of ``out`` that earlier runs left."""
    path = os.path.abspath(out)
    parent, name = os.path.dirname(path), os.path.basename(path)
    pattern = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[0-9a-f]+")
    if not os.path.isdir(parent):
        return []
    return [os.path.join(parent, entry) for entry in os.listdir(parent) if pattern.fullmatch(entry)]


def _write_marker(folder: str, marker: dict) -> None:
    path = os.path.join(folder, EVAL_MARKER_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(marker, f)
    os.replace(path + ".tmp", path)


def read_marker(out: str) -> dict | None:
    """The marker of ``out`` (``None`` when it has none or it is unreadable)."""
    try:
        with open(os.path.join(out, EVAL_MARKER_FILE)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def claim_out_folder(out: str, optimizer: str, suite: str) -> str | None:
    """Create ``out`` (or take it over) with its marker set to ``running``, after removing the
    staging folders of killed runs; the previous report stays until ``publish``. Returns a note
    when the previous run into ``out`` was interrupted, else ``None``."""
    previous = read_marker(out)
    note = None
    if previous and previous.get("state") == "running":
        note = (
            f"note: the previous lopt evaluate into {out} (started {previous.get('started', '?')}) "
            "did not finish; its partial files are replaced by this run's"
        )
    for path in _debris(out):
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    _write_marker(out, _marker(optimizer, suite, "running", started))
    return note


def _marker(optimizer: str, suite: str, state: str, started: str) -> dict:
    return {
        "format": "lopt-evaluation",
        "optimizer": optimizer,
        "suite": suite,
        "state": state,
        "started": started,
    }


def staging_folder(out: str) -> str:
    """A new, empty folder beside ``out`` to write this run's report into before ``publish``."""
    staging = _aside(out, "tmp", uuid.uuid4().hex[:12])
    os.makedirs(staging)
    return staging


def publish(staging: str, out: str) -> None:
    """Rename ``staging`` (a finished report) into place as ``out``, marked ``complete``: the
    user's files in ``out`` (not ``OWN_FILES``) are moved into it first, the old folder is moved
    aside, then removed."""
    marker = read_marker(out) or {}
    started = marker.get("started", "?")
    _write_marker(
        staging, _marker(marker.get("optimizer"), marker.get("suite"), "complete", started)
    )
    if not os.path.isdir(out):
        os.rename(staging, out)
        return
    for entry in os.listdir(out):
        if not OWN_FILES.fullmatch(entry) and not os.path.exists(os.path.join(staging, entry)):
            os.rename(os.path.join(out, entry), os.path.join(staging, entry))
    old = _aside(out, "old", os.path.basename(staging).rsplit("-", 1)[1])
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)
