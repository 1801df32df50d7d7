"""Benchmarks never write into ``benchmarks/results/`` unless asked (``--record`` or an explicit
``--out``): a quick or ad-hoc run goes to a scratch folder, so the fast tier's figure checks pass
while a benchmark runs in the same checkout. The scripts run as ``python -m benchmarks.<name>``
without editing ``sys.path``."""

import argparse
import hashlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # benchmarks/ is not installed: the checkout's root makes it importable
    sys.path.insert(0, ROOT)

from benchmarks import output  # noqa: E402

# The scripts this rule was applied to here (generalization, meta_train_throughput and
# optimizer_step follow it too, with their own tests).
SCRIPTS = (
    "ablations",
    "default_config_runs",
    "es_signal_to_noise",
    "jit_cache",
    "variance",
    "weight_decay_sweep",
    "paper.influence_balancing",
    "paper.learned_optimizer",
    "paper.lr_schedule",
    "paper.lstm_copy",
    "paper.variance_vs_unrolls",
)


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    output.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_output_rule(tmp_path, monkeypatch):
    monkeypatch.setenv(output.SCRATCH_ENV, str(tmp_path))
    assert output.resolve(parse([]), "paper") == str(tmp_path / "paper")
    assert output.resolve(parse(["--quick"]), "x.json") == str(tmp_path / "x.json")
    assert output.resolve(parse(["--record"]), "paper") == os.path.join(
        ROOT, "benchmarks", "results", "paper"
    )
    assert output.resolve(parse(["--out", "elsewhere"]), "paper") == "elsewhere"
    with pytest.raises(SystemExit, match="--record with --quick"):
        output.resolve(parse(["--record", "--quick"]), "paper")
    with pytest.raises(SystemExit, match="drop --out, or drop --record"):
        output.resolve(parse(["--record", "--out", "x"]), "paper")


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_runs_as_a_module_and_offers_record(name):
    path = os.path.join(ROOT, "benchmarks", *name.split(".")) + ".py"
    with open(path) as f:
        assert "sys.path.insert" not in f.read()
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--record" in result.stdout


def digests(folder) -> dict[str, str]:
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.join(root, name)] = hashlib.sha256(f.read()).hexdigest()
    return found


def figure_checks() -> subprocess.CompletedProcess:
    """The fast tier's checks of the committed figures (README and docs against the JSONs)."""
    tests = ["tests/test_readme_figures.py", "tests/test_paper_claims.py"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_the_figure_checks_pass_while_a_benchmark_writes_its_default_output(tmp_path):
    committed = os.path.join(ROOT, "benchmarks", "results", "paper")
    before = digests(committed)
    env = os.environ | {output.SCRATCH_ENV: str(tmp_path)}
    benchmark = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.paper.influence_balancing", "--quick"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    during = figure_checks()
    log, _ = benchmark.communicate(timeout=600)
    assert benchmark.returncode == 0, log[-2000:]
    assert during.returncode == 0, during.stdout[-3000:]
    after = figure_checks()
    assert after.returncode == 0, after.stdout[-3000:]
    assert digests(committed) == before
    assert sorted(os.listdir(tmp_path / "paper")) == [
        "influence_balancing.json",
        "influence_balancing.png",
    ]
