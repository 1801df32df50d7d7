"""Provenance for benchmark JSON: what produced a result, where and when.

Every benchmark writes ``provenance()`` into its JSON, so that a rerun cannot silently replace the
numbers a document quotes: the commit (and whether tracked files had uncommitted changes), the
package and jax versions, the command line, the date, the platform, the devices and the machine's
load average when the measurement started (a loaded machine runs slower).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Plain JSON facts about this process; ``argv`` defaults to ``sys.argv``."""
    import jax

    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "lopt_version": _version("lopt"),
        "jax_version": jax.__version__,
        "jaxlib_version": _version("jaxlib"),
        "python_version": platform.python_version(),
        "argv": list(sys.argv if argv is None else argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": [str(device) for device in jax.devices()],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _git(*args: str) -> str | None:
    """``git args`` in the repository (stripped output), or ``None`` outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
