"""The pictures in README.md and docs/results.md are what the commands their captions name draw today.

benchmarks/pictures.py draws each picture by its command; these tests draw it again and compare
it with the committed PNG (within `pictures.TOLERANCE` levels of 255 per channel). When one
fails, a change of defaults or of the method has left the picture stale: redraw it with the
command in the message and read its caption again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pictures.py"


@pytest.fixture(scope="module")
def pictures():
    spec = importlib.util.spec_from_file_location("pictures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(pictures, name: str, tmp_path: Path) -> None:
    drawn = pictures.redraw(name, tmp_path)
    problem = pictures.difference(drawn, pictures.DOCS / name)
    assert problem is None, (
        f"{problem}: docs/{name} is not what `{pictures.COMMANDS[name]}` draws today; redraw it with "
        f"`python benchmarks/pictures.py {name}` and check its caption"
    )


# The first picture costs one analogy (about 10 s); the five examples five (slow: run with -m slow).
@pytest.mark.parametrize("name", ["analogy.png", pytest.param("examples-editor.png", marks=pytest.mark.slow)])
def test_a_readme_picture_is_what_its_command_draws(pictures, name, tmp_path):
    check(pictures, name, tmp_path)


@pytest.mark.slow
def test_the_baselines_grid_is_what_its_bench_run_draws(pictures, tmp_path):
    """results.md §8's grid from a bench run of 8 triplets (10-15 min on one CPU thread); its VISII
    column is skipped, as `pictures.RECORDED_COLUMNS` says why."""
    check(pictures, "v2-baselines.png", tmp_path)


def test_every_picture_in_the_docs_is_drawn_by_the_script_or_named_here(pictures):
    """A new picture in README.md or docs/*.md needs a command in benchmarks/pictures.py, or a
    line here saying why it has none."""
    without_command = {
        "demo.png": "a browser screenshot of the demo page (tests/test_demo.py)",
        "heldout-examples.png": "world v1 (no longer bundled), results.md §6; its run's images were not kept",
        "v2-methods.png": "its run and the v2 world as trained then (runs/world-v2) were not kept, results.md §7",
    }
    root = SCRIPT.parents[1]
    shown = set()
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("!["):
                shown.add(Path(line[line.index("](") + 2 : line.rindex(")")]).name)
    assert shown == set(pictures.PICTURES) | set(without_command)
    assert set(pictures.COMMANDS) == set(pictures.PICTURES)
    for name in shown:
        assert (pictures.DOCS / name).is_file()
