"""The packages' import layering, read from the source with ``ast`` (imports nothing).

From the bottom up:

* ``lopt`` (learned optimizers) and ``tasks`` (inner problems) are independent: neither imports
  the other, nor anything from ``meta_train``.
* ``meta_train.es`` (an unrolled-ES library: system, engine, estimators, reference systems)
  imports only itself.
* ``meta_train.evaluation`` may import ``lopt``, ``tasks`` and ``meta_train.es``, not the trainer.
* ``meta_train.layout`` (the names of the files in a workdir) imports nothing first-party: the
  trainer and the CLI read it, and it stays declarations.
* The trainer (every other ``meta_train`` module, ``configs`` included) may import all of the
  above (``layout`` too), but not ``meta_train.cli``.
* ``meta_train.cli`` sits on top and imports first-party modules only inside its functions
  (so ``lopt tasks list`` does not pay for the meta-trainer's imports).

Every import counts, module-level or inside a function (or under ``TYPE_CHECKING``), and so does
``importlib.import_module`` of a literal name.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lopt", "tasks", "meta_train")

# What each layer may import (first-party only; third-party imports are not checked).
MAY_IMPORT = {
    "lopt": {"lopt"},
    "tasks": {"tasks"},
    "es": {"es"},
    "evaluation": {"lopt", "tasks", "es", "evaluation"},
    "layout": {"layout"},
    "trainer": {"lopt", "tasks", "es", "evaluation", "layout", "trainer"},
    "cli": {"lopt", "tasks", "es", "evaluation", "layout", "trainer"},
}

# (importing file, imported module) pairs that break the layering today and are owned by another
# change. Each must still be a violation (test_known_violations_are_still_there), so an entry is
# removed when its import is fixed.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def layer(module: str) -> str | None:
    """The layer of a dotted module name, ``None`` for a third-party module."""
    top, _, _ = module.partition(".")
    if top in ("lopt", "tasks"):
        return top
    if top != "meta_train":
        return None
    if module == "meta_train.layout":
        return "layout"
    for sub in ("es", "evaluation", "cli"):
        if module == f"meta_train.{sub}" or module.startswith(f"meta_train.{sub}."):
            return sub
    return "trainer"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str, bool]]:
    """``(line, imported module, at module level)`` for every import in ``source``.

    ``from pkg import name`` counts as ``pkg.name`` when that is a module, else as ``pkg``;
    relative imports are resolved against ``module``.
    """
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                target = child if _is_module(child) else base
                found.append((node.lineno, target, id(node) in top_level))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, False))
    return found


def violations(relative_path: str, source: str) -> list[tuple[str, str]]:
    """``(message, imported module)`` for each import of ``source`` that breaks the layering."""
    path = ROOT / relative_path
    module = module_name(path)
    own = layer(module)
    out = []
    for line, target, at_module_level in imported_modules(source, module, path.stem == "__init__"):
        theirs = layer(target)
        if theirs is None:
            continue
        where = f"{relative_path}:{line}: {module} ({own}) imports {target} ({theirs})"
        if theirs not in MAY_IMPORT[own]:
            out.append((f"{where}; {own} may import only {sorted(MAY_IMPORT[own])}", target))
        elif own == "cli" and at_module_level and theirs != "cli":
            out.append((f"{where} at module level; the cli imports first-party lazily", target))
    return out


def source_files() -> list[Path]:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50, f"found only {len(files)} modules under {ROOT}"
    return files


@functools.cache
def all_violations() -> list[tuple[str, str, str]]:
    found = []
    for path in source_files():
        relative = path.relative_to(ROOT).as_posix()
        found += [
            (relative, target, message)
            for message, target in violations(relative, path.read_text())
        ]
    return found


def test_imports_follow_the_layering():
    bad = [
        message
        for file, target, message in all_violations()
        if (file, target) not in KNOWN_VIOLATIONS
    ]
    assert not bad, "imports that break the layering:\n" + "\n".join(bad)


def test_known_violations_are_still_there():
    present = {(file, target) for file, target, _ in all_violations()}
    stale = KNOWN_VIOLATIONS - present
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(stale)}"


@pytest.mark.parametrize(
    ("path", "source", "line", "offender"),
    [
        (
            "meta_train/es/engine.py",
            "import jax\n\ndef f():\n    from lopt import base\n",
            4,
            "lopt.base",
        ),
        ("meta_train/es/engine.py", "from meta_train import outer\n", 1, "meta_train.outer"),
        (
            "meta_train/es/system.py",
            "from ..evaluation import report\n",
            1,
            "meta_train.evaluation.report",
        ),
        ("meta_train/evaluation/report.py", "import meta_train.train\n", 1, "meta_train.train"),
        ("lopt/base.py", "from tasks.base import Task\n", 1, "tasks.base"),
        ("tasks/base.py", "import importlib\nimportlib.import_module('lopt.mlp')\n", 2, "lopt.mlp"),
        (
            "meta_train/outer.py",
            "def main():\n    from meta_train import cli\n",
            2,
            "meta_train.cli",
        ),
        ("meta_train/cli.py", "import os\nfrom meta_train import train\n", 2, "meta_train.train"),
        (
            "meta_train/layout.py",
            "import re\nfrom meta_train import metrics\n",
            2,
            "meta_train.metrics",
        ),
        ("meta_train/layout.py", "def f():\n    from lopt import export\n", 2, "lopt.export"),
        (
            "meta_train/evaluation/report.py",
            "from meta_train import layout\n",
            1,
            "meta_train.layout",
        ),
    ],
)
def test_checker_flags_a_bad_module(path, source, line, offender):
    """Positive control: synthetic module sources that break the layering are caught, and the
    message names the file and line."""
    found = violations(path, source)
    assert [target for _, target in found] == [offender]
    assert found[0][0].startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    ("path", "source"),
    [
        (
            "meta_train/es/engine.py",
            "import jax\nfrom meta_train.es import estimators\nfrom . import system\n",
        ),
        (
            "meta_train/evaluation/held_out.py",
            "from lopt.base import LearnedOptimizer\nfrom meta_train.es import engine\n",
        ),
        ("meta_train/train.py", "from meta_train.evaluation import evaluate\nimport tasks\n"),
        ("meta_train/cli.py", "import argparse\n\ndef main():\n    from meta_train import train\n"),
        ("meta_train/checkpoint.py", "from meta_train import config_flags, layout\n"),
        ("meta_train/cli.py", "def main():\n    from meta_train import layout\n"),
        ("meta_train/layout.py", "import os\nimport re\n"),
    ],
)
def test_checker_passes_allowed_imports(path, source):
    assert violations(path, source) == []
