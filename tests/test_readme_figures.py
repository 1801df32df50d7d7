"""README.md's measured results quote the result JSONs: every table is the one
``benchmarks.readme_results`` renders from them, every figure in its prose is the value its JSON
gives, and every JSON it quotes says what produced it (provenance)."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import readme_results  # noqa: E402

README = (ROOT / "README.md").read_text()
FIX = "run `python -m benchmarks.readme_results --write README.md` (or fix the phrase)"


@pytest.mark.parametrize("name", list(readme_results.TABLES))
def test_table_is_the_jsons(name):
    blocks = readme_results.table_blocks(README)
    assert name in blocks, f"README.md has no <!-- readme: {name} --> block"
    assert blocks[name] == readme_results.TABLES[name](), f"the {name} table is stale: {FIX}"


@pytest.mark.parametrize(
    "figure", readme_results.FIGURES, ids=[f.phrase[:40] for f in readme_results.FIGURES]
)
def test_figure_is_the_jsons(figure):
    problem = readme_results.check_figure(figure, README)
    assert problem is None, f"{problem}; {FIX}"


def test_write_is_idempotent_and_keeps_the_prose():
    assert readme_results.write(README) == README


def test_a_changed_number_is_caught():
    figure = next(f for f in readme_results.FIGURES if "bare pass alone" in f.phrase)
    quoted = figure.pattern().search(README).group(1)
    altered = README.replace(f"bare pass alone ({quoted} ms)", f"bare pass alone ({quoted}1 ms)")
    assert readme_results.check_figure(figure, altered) is not None
    assert readme_results.check_figure(figure, readme_results.write(altered)) is None


def _provenances(path: str) -> list[dict]:
    payload = json.loads(pathlib.Path(path).read_text())
    if "results" in payload and "provenance" not in payload:  # ablations: one per result
        return [entry["provenance"] for entry in payload["results"].values()]
    if "commit" in payload:  # lopt/weights/<name>/training.json
        return [{"commit": payload["commit"], "jax_version": payload["jax_version"]}]
    return [payload["provenance"]]


@pytest.mark.parametrize(
    "path",
    sorted({figure.source for figure in readme_results.FIGURES} | {readme_results.GENERALIZATION}),
    ids=lambda path: pathlib.Path(path).name,
)
def test_every_quoted_json_has_provenance(path):
    paths = [path.format(seed) for seed in (1, 2)] if "{}" in path else [path]
    for file in paths:
        for provenance in _provenances(file):
            assert provenance.get("commit") and provenance.get("jax_version"), file


def test_throughput_json_says_how_it_was_measured():
    payload = json.loads(pathlib.Path(readme_results.THROUGHPUT).read_text())
    provenance = payload["provenance"]
    wanted = {"commit", "lopt_version", "jax_version", "argv", "date", "platform", "load_average"}
    assert wanted <= set(provenance)
    assert provenance["evosax_version"], "the README's evosax ratio needs the evosax row"
    assert len(payload["load_average_per_round"]) == payload["setting"]["rounds"]
