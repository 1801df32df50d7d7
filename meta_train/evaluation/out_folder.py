"""The folders ``lopt evaluate`` writes its reports to: where by default, and which it may use.

A folder holding ``EVAL_MARKER_FILE`` (or a ``report.json``) is lopt evaluate's: a later evaluation
may replace its files and a workdir's ``--overwrite`` may remove them; any other non-empty folder
is refused, and so is a folder inside an export, which the export's next save replaces whole.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

from lopt.export import CONFIG_FILE

EVAL_MARKER_FILE = "lopt-eval.json"


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


def claim_out_folder(out: str, optimizer: str, suite: str) -> None:
    """Create ``out`` with the marker that makes it lopt evaluate's (``--overwrite`` of a
    workdir removes such folders; a later evaluation may replace their files)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, EVAL_MARKER_FILE), "w") as f:
        json.dump({"format": "lopt-evaluation", "optimizer": optimizer, "suite": suite}, f)
