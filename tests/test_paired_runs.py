"""benchmarks/paired_runs.py: paired differences between two runs over the triplets both have."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from diffinv.errors import DiffinvError

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "paired_runs.py"
spec = importlib.util.spec_from_file_location("paired_runs", SCRIPT)
paired_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired_runs)


def write_run(directory: Path, method: str, correct: dict[str, float]) -> str:
    directory.mkdir()
    rows = [dict(method=method, id=i, correct=c, edit=1.0, preserved=c) for i, c in correct.items()]
    rows.append(dict(method="other", id="t0", correct=1.0, edit=1.0, preserved=1.0))
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(directory)


def test_the_difference_is_taken_over_the_shared_triplets_only(tmp_path):
    run_a = write_run(tmp_path / "a", "fit", {"t0": 0.0, "t1": 1.0, "t2": 0.0, "only-a": 1.0})
    run_b = write_run(tmp_path / "b", "fit-k3", {"t0": 1.0, "t1": 1.0, "t2": 1.0, "only-b": 0.0})
    correct = paired_runs.paired(run_a, "fit", run_b, "fit-k3", ("correct",))[0]
    assert correct["n"] == 3  # only-a and only-b are not paired
    assert correct["a"] == pytest.approx(100 / 3) and correct["b"] == 100.0
    assert correct["d"] == pytest.approx(200 / 3) and correct["d_half"] > 0


def test_runs_without_the_method_or_without_shared_triplets_are_refused(tmp_path, capsys):
    run_a = write_run(tmp_path / "a", "fit", {"t1": 1.0, "t2": 0.0})
    run_b = write_run(tmp_path / "b", "fit", {"t3": 1.0, "t4": 1.0})
    with pytest.raises(DiffinvError, match="has no rows of 'missing'"):
        paired_runs.paired(run_a, "missing", run_b, "fit")
    with pytest.raises(DiffinvError, match="share 0 triplet"):
        paired_runs.paired(run_a, "fit", run_b, "fit")
    assert paired_runs.main([run_a, "fit", run_b, "fit"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line
