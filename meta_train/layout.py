"""The layout of a meta-training workdir: the name of every file and folder lopt writes there.

::

    lopt-workdir.json      MARKER_FILE: makes the folder lopt's (format name and version)
    lopt-workdir.lock      LOCK_FILE: locked (flock) by the process running in it; its pid and host
    config.json            CONFIG_FILE: the config the run was started with (another is refused)
    checkpoints/<step>/    CHECKPOINT_DIR: orbax checkpoints of the whole state (the last few)
    metrics.jsonl          METRICS_FILE: every logged scalar, one JSON object per log step
    tensorboard/           TENSORBOARD_DIR: the same scalars as TensorBoard events (tensorboardX)
    parameter_overview.txt TEXT_FILES: clu's table of theta at the start
    export/                EXPORT_DIR: the learned optimizer (``lopt.load(<workdir>/export)``)
    curves.png             CURVES_FILE: the meta-training curves
    comparison/            COMPARISON_DIR: the held-out comparison against Adam (report.md,
                           report.json, a PNG per task, summary.json)
    export.eval_<suite>/   EVAL_FOLDER: ``lopt evaluate``'s reports on the export, by default
    previous_evaluations/  PREVIOUS_EVALUATIONS_DIR: evaluation folders ``--overwrite`` moved aside

and the staging names of interrupted writes: ``<file>.tmp`` (``staging``) beside the JSON files,
``.export.tmp-<tag>`` and ``.export.old-<tag>`` beside the export (``lopt.save``), step folders
``<step>.orbax-checkpoint-tmp-*`` (orbax) and ``<step>.corrupt`` (set aside by the restore).

``run_entries`` lists what of a workdir matches these names as a run's outputs: what
``--overwrite`` deletes. Declarations and path matching only: nothing here writes or imports lopt.
"""

from __future__ import annotations

import os
import re

MARKER_FILE = "lopt-workdir.json"
LOCK_FILE = "lopt-workdir.lock"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
# TensorBoard text tag -> the file that holds the same text.
PARAMETER_OVERVIEW = "parameter_overview"
TEXT_FILES = {PARAMETER_OVERVIEW: f"{PARAMETER_OVERVIEW}.txt"}
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
COMPARISON_DIR = "comparison"
COMPARISON_SUMMARY_FILE = "summary.json"
PREVIOUS_EVALUATIONS_DIR = "previous_evaluations"

# A JSON file is written to its staging name and renamed into place.
STAGING_SUFFIX = ".tmp"

# The files a run writes whole (``--overwrite`` deletes them and their staging names).
RUN_FILES = (CONFIG_FILE, METRICS_FILE, *TEXT_FILES.values(), CURVES_FILE)
# Folders of which only the entries matching the pattern are lopt's (the rest are the user's).
RUN_FOLDERS = {
    # orbax step folders, their temporary forms, and steps set aside by the restore
    CHECKPOINT_DIR: re.compile(r"\d+(\.orbax-checkpoint-tmp.*|\.corrupt(-\d+)?)?"),
    TENSORBOARD_DIR: re.compile(r"events\.out\.tfevents\..*"),
    COMPARISON_DIR: re.compile(
        rf"report\.json|report\.md|{re.escape(COMPARISON_SUMMARY_FILE)}|.*\.png"
    ),
}
# ``lopt.save``'s staging and set-aside siblings of the export.
EXPORT_STAGING = re.compile(rf"\.{re.escape(EXPORT_DIR)}\.(tmp|old)-[0-9a-f]+")
# ``lopt evaluate``'s folders in a workdir: ``<export>.eval_<suite>`` by default, or ``eval_*``.
EVAL_FOLDER = re.compile(rf"({re.escape(EXPORT_DIR)}\.)?eval_.*")


def staging(name: str) -> str:
    """The staging name of the file ``name`` (written there, then renamed to ``name``)."""
    return name + STAGING_SUFFIX


def run_entries(workdir: str) -> list[str]:
    """The entries of ``workdir`` (relative paths, sorted) named as a run's outputs: the files of
    ``RUN_FILES`` and their staging names, the ``EXPORT_DIR`` folder and its staging siblings, and
    in each of ``RUN_FOLDERS`` the entries its pattern matches. Not among them: the marker and the
    lock, which make the folder lopt's, and the evaluation folders, another command's results."""
    files = {*RUN_FILES, *map(staging, RUN_FILES), staging(MARKER_FILE)}
    found = []
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and name in RUN_FOLDERS:
            found += [
                os.path.join(name, entry)
                for entry in sorted(os.listdir(path))
                if RUN_FOLDERS[name].fullmatch(entry)
            ]
        elif (
            (name in files and os.path.isfile(path))
            or (name == EXPORT_DIR and os.path.isdir(path))
            or (EXPORT_STAGING.fullmatch(name) and os.path.isdir(path))
        ):
            found.append(name)
    return found
