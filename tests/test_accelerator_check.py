"""``benchmarks/accelerator_check.py --quick``: every stage of the accelerator check runs in
miniature on the CPU and lands in one JSON with provenance."""

import json
import pathlib
import sys

import pytest

import lopt
from meta_train import config_flags

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, ROOT)

from benchmarks import accelerator_check  # noqa: E402


@pytest.mark.slow  # four subprocesses, about a minute: the benchmarks' quick modes are slow tier
def test_quick_check_runs_every_stage_and_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    assert accelerator_check.main(["--quick", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["provenance"]["commit"] is not None
    assert set(record["stages"]) == {"tests", "throughput", "optimizer_step", "meta_train"}
    for name, stage in record["stages"].items():
        assert stage["returncode"] == 0, f"{name} failed:\n{stage['output_tail']}"
    summary = record["summary"]
    assert summary["all_passed"]
    assert all(r["particle_steps_per_s"] > 0 for r in summary["throughput"].values())
    assert summary["optimizer_step_ratios"]["step/normalized_over_adam"] > 0


def test_full_check_fits_its_time_budget():
    """On an accelerator the stages' limits add up to about 8 minutes at most."""
    stages = accelerator_check.stages(quick=False, work="/nonexistent")
    assert [s.name for s in stages] == ["tests", "throughput", "optimizer_step", "meta_train"]
    assert sum(s.timeout_s for s in stages) <= 8 * 60
    throughput = next(s for s in stages if s.name == "throughput")
    assert "--accelerator" in throughput.argv and "all" in throughput.argv


def test_meta_train_stage_runs_the_default_optimizers_recipe():
    name = accelerator_check.recipe_config()
    recorded = lopt.pretrained_info()["config"]
    config = json.loads(config_flags.load_config(name).to_json())
    for section in ("optimizer", "groups", "estimator"):
        assert config[section] == recorded[section], section
    stages = accelerator_check.stages(quick=False, work="/w")
    stage = next(s for s in stages if s.name == "meta_train")
    assert stage.argv[stage.argv.index("--config") + 1] == name
