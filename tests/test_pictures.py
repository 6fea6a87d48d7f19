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


# Each picture costs its command's analogies (about 8 s for the first, five times that for the
# examples): slow, run with -m slow. The first is also checked on every CI run, which runs the
# README's first command anyway and compares its grid with docs/analogy.png (.ci/run; the test below).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["analogy.png", "examples-editor.png"])
def test_a_readme_picture_is_what_its_command_draws(pictures, name, tmp_path):
    check(pictures, name, tmp_path)


def test_ci_compares_the_readme_commands_grid_with_the_first_picture():
    ci = (SCRIPT.parents[1] / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = next(i for i, line in enumerate(ci) if line.startswith("diffinv analogy examples/shape/a.png"))
    assert ci[command].split(" -o ")[0] == "diffinv analogy " + " ".join(
        f"examples/shape/{name}.png" for name in ("a", "a_prime", "b")
    )
    output = ci[command].split(" -o ")[1].split()[0]  # out/b_prime.png: its grid is out/b_prime-grid.png
    grid = output.replace(".png", "-grid.png")
    assert f"python benchmarks/pictures.py --check analogy.png --drawn {grid}" in ci[command + 1 :]


def test_a_drawn_grid_is_compared_without_redrawing(pictures, tmp_path, monkeypatch):
    import sys

    from PIL import Image

    same, other = tmp_path / "same.png", tmp_path / "other.png"
    Image.open(pictures.DOCS / "analogy.png").save(same)
    Image.new("RGB", Image.open(same).size, "black").save(other)
    monkeypatch.setattr(pictures, "redraw", lambda *a: pytest.fail("--drawn must not redraw"))
    for path, code in ((same, 0), (other, 1)):
        monkeypatch.setattr(sys, "argv", ["pictures.py", "--check", "analogy.png", "--drawn", str(path)])
        assert pictures.main() == code


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
