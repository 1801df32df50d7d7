"""README.md and docs/ are a working front door: every ```python block of README.md and
docs/guide.md runs as written in a fresh interpreter, every `lopt ...` command line in README.md
and docs/ names a subcommand and options that `lopt <command> --help` lists, the README's test
command is the one `.ci/run` runs, and the README keeps its order and length."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
GUIDE = (ROOT / "docs" / "guide.md").read_text()
RESULTS = (ROOT / "docs" / "results.md").read_text()
# In order, in one working directory: the guide's blocks use the README's my_tasks.py.
BLOCKS = [
    block
    for text in (README, GUIDE)
    for block in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
]
SECTIONS = [
    "Two commands",
    "The pretrained optimizer",
    "Your own task",
    "CLI",
    "Python API",
    "Architecture",
    "How it compares",
]
MAX_README_LINES = 200
MODULE_HEADER = re.compile(r"^# (\w+\.py)\b")  # a block that is a file: "# my_tasks.py ..."
SUBCOMMANDS = ("meta-train", "evaluate", "tasks", "data")
TIMEOUT = 900  # seconds; compiles are slow on a loaded 2-core machine


def _run(args: list[str], cwd: pathlib.Path | str = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def _fake_sine_export(workdir: pathlib.Path) -> None:
    """Stand in for the README's `lopt meta-train --import my_tasks --workdir runs/sine ...`
    (tests/test_user_tasks.py runs that command itself): an export of the default config's
    optimizer, untrained, where the block after it loads one."""
    script = (
        "import jax, lopt\n"
        "from meta_train import unrolled_tasks\n"
        "from meta_train.configs import default\n"
        "config = default.get_config().optimizer\n"
        "optimizer = lopt.get_optimizer(config.architecture, **config.hyperparameters.to_dict())\n"
        "theta = optimizer.init_meta_params(jax.random.key(0))\n"
        "step_size = unrolled_tasks.step_size_of(optimizer, config)\n"
        "lopt.save('runs/sine/export', optimizer, theta, step_size=step_size)\n"
    )
    result = _run([sys.executable, "-c", script], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]


def test_readme_has_the_blocks_this_test_runs():
    assert len(BLOCKS) >= 5
    assert any(MODULE_HEADER.match(block) for block in BLOCKS)
    assert any("class Spring" in block for block in BLOCKS)


@pytest.mark.slow
def test_python_blocks_run_as_written(tmp_path):
    """Each block in its own interpreter, in order, in one working directory; a block that is a
    file (its first line names it) is written there, and imported to check it."""
    outputs = []
    for index, block in enumerate(BLOCKS):
        header = MODULE_HEADER.match(block)
        if header:
            (tmp_path / header.group(1)).write_text(block)
            code = f"import {header.group(1)[: -len('.py')]}"
        else:
            code = block
        if "runs/sine/export" in block:
            _fake_sine_export(tmp_path)
        result = _run([sys.executable, "-c", code], cwd=tmp_path)
        assert result.returncode == 0, f"README block {index}:\n{block}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    # The Spring example's claim in the sentence above it is what it prints.
    spring = next(out for out, block in zip(outputs, BLOCKS, strict=True) if "Spring" in block)
    printed = re.search(r"meta-loss (\S+) -> (\S+)", spring)
    assert printed, spring
    claim = re.search(r"Your own unrolled system.*?\(meta-loss (\S+) -> (\S+) in", README, re.S)
    assert claim and claim.groups() == printed.groups(), (claim and claim.groups(), spring)


def test_readme_is_a_front_door():
    """The issue's order, a few screens long, and the rest one link away."""
    assert re.findall(r"^## (.+)$", README, re.M) == SECTIONS
    assert len(README.splitlines()) <= MAX_README_LINES, "move details to docs/guide.md"
    assert "docs/guide.md" in README and "docs/results.md" in README


def test_readme_test_command_is_what_ci_runs():
    """.ci/run installs and tests exactly as the README's fresh-machine test command says."""
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"pip install --quiet (-c constraints\.txt -e \S+)", ci)
    pytest_line = re.search(r"^\.venv/bin/(pytest.*)$", ci, re.M)
    assert install and pytest_line, ci
    wanted = f"pip install {install.group(1)} && .venv/bin/{pytest_line.group(1)}"
    commands = [
        line.strip() for line in README.splitlines() if line.startswith("    python3 -m venv")
    ]
    assert any(command.endswith(wanted) for command in commands), (wanted, commands)


def _code_lines() -> list[str]:
    """Inline code spans and indented command lines of README.md and docs/ (fenced blocks left
    out)."""
    found = []
    for document in (README, GUIDE, RESULTS):
        text = re.sub(r"^```.*?^```", "", document, flags=re.S | re.M)
        found += re.findall(r"`([^`\n]+)`", text)
        found += [line.strip() for line in text.splitlines() if line.startswith("    ")]
    return found


def _commands() -> dict[str, set[str]]:
    """``subcommand -> options`` over every ``lopt <subcommand> ...`` the README shows."""
    commands: dict[str, set[str]] = {}
    for line in _code_lines():
        for match in re.finditer(r"(?:^|[\s/])lopt ([a-z][a-z-]*)(.*?)(?=&&|;|$)", line):
            options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*\.?)", match.group(2)))
            action = re.match(r"\s+([a-z]+)\b", match.group(2))  # tasks list, data prepare
            if match.group(1) in ("tasks", "data") and action:
                options.add("{" + action.group(1) + "}")
            commands.setdefault(match.group(1), set()).update(options)
    return commands


def test_readme_shows_every_subcommand():
    assert set(_commands()) == set(SUBCOMMANDS)


# `python -m meta_train.cli <command> --help` for each command, in one interpreter (runpy is what
# `-m` runs), so that jax is imported once: the help of each, between separator lines.
HELP_SCRIPT = """
import contextlib, io, runpy, sys
for command in sys.argv[1:]:
    sys.argv = ["lopt", command, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module("meta_train.cli", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code
    print(f"=== {command} exit {code}")
    print(out.getvalue())
"""


def test_readme_command_lines_parse():
    """Every subcommand the README shows answers `--help` with exit 0, and every option the README
    gives it is in that help."""
    commands = _commands()
    result = _run([sys.executable, "-c", HELP_SCRIPT, *commands])
    assert result.returncode == 0, result.stderr[-3000:]
    helps = dict(re.findall(r"^=== (\S+) (exit \S+)\n", result.stdout, re.M))
    texts = re.split(r"^=== \S+ exit \S+\n", result.stdout, flags=re.M)[1:]
    for (name, status), text in zip(helps.items(), texts, strict=True):
        assert status in ("exit 0", "exit None"), (name, status, text)
        assert f"lopt {name}" in text, (name, text)
        for option in commands[name]:
            # --config.a.b=VALUE: the help names the --config.<key>=<value> form.
            wanted = "--config.<key>" if option == "--config." else option
            assert wanted in text, f"README gives `lopt {name} {option}`; its --help lacks it"
    assert list(helps) == list(commands)
