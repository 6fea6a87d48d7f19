"""Redraw the pictures of README.md and docs/results.md by the commands their captions name.

    python benchmarks/pictures.py                   # the README's two pictures (about 15 s on CPU)
    python benchmarks/pictures.py v2-baselines.png  # results.md §8's grid: a bench run, 10-15 min on CPU
    python benchmarks/pictures.py --check [NAME…]   # compare with docs/ instead of writing; exit 1 if any differs

Each picture is drawn the way its caption says, with the bundled shapes world at its defaults:
- analogy.png: `diffinv analogy examples/shape/a.png examples/shape/a_prime.png examples/shape/b.png
  -o out/b_prime.png` (the README's first command); the picture is its `out/b_prime-grid.png`.
- examples-editor.png: that command on each of the five bundled examples, one row per family, with
  the true B′ beside B′ and what the world's attribute classifier reads wrong in B′.
- v2-baselines.png: `diffinv bench run --model shapes --triplet-seed 110 --set steps=200` with the
  methods of results.md §8 on the first 8 triplets (one fitting batch, as in the recorded 100-triplet
  run docs/runs/v2-baselines-s110), then `diffinv.bench.figures.method_comparison` on the first
  triplet of each family. Its VISII column is the recorded run's (see RECORDED_COLUMNS): writing
  this picture replaces it with today's VISII, which results.md's text does not describe.

tests/test_pictures.py draws them with the same functions and compares them with docs/: README's on
every test run, v2-baselines.png as a slow test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

# A drawn picture matches the committed one when no channel of any pixel differs by more than
# this many levels of 255. On one machine the commands draw the same pixels every time (1 or 2
# threads, in process or not); the tolerance leaves room for another CPU's float rounding, which
# moves the sampler's output by a level or so (results.md §8's B′ redrawn by later code: ≤ 1 level).
TOLERANCE = 2

ROW_GAP = 4  # white pixels between the rows of a multi-row picture


def _cli(argv: list[str]) -> None:
    from diffinv.cli import main

    code = main(argv)
    if code != 0:
        raise RuntimeError(f"diffinv {' '.join(argv)} exited with {code}")


def analogy_argv(family: str, out: Path) -> list[str]:
    """The README's first command on examples/<family> (one thread, no progress bars: same pixels)."""
    images = [str(EXAMPLES / family / f"{name}.png") for name in ("a", "a_prime", "b")]
    return ["analogy", *images, "-o", str(out), "--threads", "1", "--quiet"]


# --- README -----------------------------------------------------------------------------------------------
def draw_analogy(out: Path, work: Path) -> Path:
    """docs/analogy.png: the grid that the README's first command writes."""
    _cli(analogy_argv("shape", work / "b_prime.png"))
    shutil.copyfile(work / "b_prime-grid.png", out)
    return out


def wrong_in(b_prime: Image.Image, truth, classifier) -> list[str]:
    """What the world's classifier reads wrong in `b_prime` against the true B′ scene: attributes,
    and "layout" when the shape's centre is off by more than the classifier's layout threshold."""
    from diffinv.shapes.evaluate import centre_error
    from diffinv.shapes.world import ATTRIBUTES

    reading = classifier.predict([b_prime])[0]
    wrong = [name for name in ATTRIBUTES if reading[name] != getattr(truth, name)]
    if classifier.layout_threshold is not None and centre_error(reading, truth) > classifier.layout_threshold:
        wrong.append("layout")
    return wrong


def draw_examples(out: Path, work: Path, height: int = 120) -> Path:
    """docs/examples-editor.png: the README's command on each bundled example (rows in the world's
    family order): A | A′ | B | B′ | true B′, and to the right the classifier's verdict on B′."""
    from diffinv.bench.command import classifier_path, load_classifier
    from diffinv.grid import image_grid
    from diffinv.model_card import model_card
    from diffinv.shapes.examples import example_triplets
    from diffinv.shapes.world import FAMILIES

    classifier = load_classifier(classifier_path(model_card("shapes-editor")))
    truths = example_triplets()
    rows = []
    for family in FAMILIES:
        folder = EXAMPLES / family
        b_prime_path = work / f"{family}.png"
        _cli(analogy_argv(family, b_prime_path))
        tiles = [Image.open(folder / f"{name}.png") for name in ("a", "a_prime", "b")]
        b_prime = Image.open(b_prime_path).convert("RGB")
        tiles += [b_prime, Image.open(folder / "b_prime.png")]
        row = image_grid(tiles, ["A", "A'", "B", "B'", "true B'"], height=height)
        wrong = wrong_in(b_prime, truths[family].b_prime, classifier)
        verdict = ["B' wrong:", ", ".join(wrong)] if wrong else ["B' right"]
        rows.append((row, [f"family: {family}", *verdict]))
    text_width = 150
    width = max(row.width for row, _ in rows) + text_width
    figure = Image.new("RGB", (width, sum(row.height for row, _ in rows) + ROW_GAP * (len(rows) - 1)), "white")
    draw = ImageDraw.Draw(figure)
    y = 0
    for row, lines in rows:
        figure.paste(row, (0, y))
        for number, line in enumerate(lines):
            draw.text((row.width + 8, y + 18 + 8 + 14 * number), line, fill="black")
        y += row.height + ROW_GAP
    figure.save(out)
    return out


# --- results.md -------------------------------------------------------------------------------------------
V2_BASELINES = {  # method spec → column label, in the figure's order
    "difference-inversion": "DI",
    "paper": "paper",
    "sdedit": "SDEdit*",
    "instructpix2pix": "IP2P*",
    "analogist": "Analogist*",
    "visii": "VISII",
    "dia": "DIA",
}


def draw_v2_baselines(out: Path, work: Path) -> Path:
    """docs/v2-baselines.png: results.md §8's grid, from a bench run on the first 8 triplets of seed 110."""
    from diffinv.bench.figures import method_comparison

    run = work / "v2-baselines-s110"
    argv = ["bench", "run", "--out", str(run), "--model", "shapes", "--n", "8", "--triplet-seed", "110"]
    argv += ["--set", "steps=200", "--threads", "1", "--quiet"]  # 200 steps: the world's default then
    for method in V2_BASELINES:
        argv += ["--method", method]
    _cli(argv)
    return method_comparison(run, out, methods=list(V2_BASELINES), height=80, labels=V2_BASELINES)


PICTURES: dict[str, Callable[[Path, Path], Path]] = {
    "analogy.png": draw_analogy,
    "examples-editor.png": draw_examples,
    "v2-baselines.png": draw_v2_baselines,
}
README_PICTURES = ["analogy.png", "examples-editor.png"]
COMMANDS = {  # what draws each picture, in the words of its caption
    "analogy.png": "diffinv analogy examples/shape/a.png examples/shape/a_prime.png examples/shape/b.png "
    "-o out/b_prime.png (its out/b_prime-grid.png)",
    "examples-editor.png": "that command on examples/<family>/ for each family, beside the true B′ and the "
    "classifier's verdict",
    "v2-baselines.png": "diffinv bench run --model shapes --n 8 --triplet-seed 110 --set steps=200 with "
    f"{', '.join(V2_BASELINES)}, then diffinv.bench.figures.method_comparison",
}

# Columns of a committed picture that today's code no longer draws, kept because the text beside
# the picture describes them: picture → {column label: why}. The comparison skips them.
RECORDED_COLUMNS = {
    "v2-baselines.png": {
        "VISII": "VISII starts from PEZ, whose hard tokens became whole words after the run "
        "(commit 8bbf743); every other column is redrawn within 1 level",
    },
}


def _column_spans(name: str) -> list[tuple[int, int]]:
    """The x ranges of RECORDED_COLUMNS[name] in the picture: method_comparison's columns are A, A′,
    B, true B′ and the methods, 80 px tiles 4 px apart."""
    if name not in RECORDED_COLUMNS:
        return []
    columns = ["A", "A'", "B", "true B'", *V2_BASELINES.values()]
    return [(84 * columns.index(label), 84 * columns.index(label) + 84) for label in RECORDED_COLUMNS[name]]


# --- comparing ----------------------------------------------------------------------------------------------
def difference(drawn: Path, committed: Path) -> str | None:
    """None when `drawn` matches `committed` within TOLERANCE (outside its RECORDED_COLUMNS), else what differs."""
    if not committed.is_file():
        return f"{committed.name} is missing"
    new = np.asarray(Image.open(drawn).convert("RGB"), dtype=np.int16)
    old = np.asarray(Image.open(committed).convert("RGB"), dtype=np.int16)
    if new.shape != old.shape:
        return f"{committed.name}: drawn {new.shape[1]}×{new.shape[0]}, committed {old.shape[1]}×{old.shape[0]}"
    off = np.abs(new - old).max(axis=-1)
    for start, stop in _column_spans(committed.name):
        off[:, start:stop] = 0
    if off.max() <= TOLERANCE:
        return None
    return (
        f"{committed.name}: {int((off > TOLERANCE).sum())} of {off.size} pixels differ by more than "
        f"{TOLERANCE} levels (at most {int(off.max())})"
    )


def redraw(name: str, out_dir: Path) -> Path:
    """Draw picture `name` into `out_dir`; returns its path."""
    with tempfile.TemporaryDirectory() as work:
        return PICTURES[name](out_dir / name, Path(work))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"pictures among {', '.join(PICTURES)} (default: the README's)"
    )
    parser.add_argument("--check", action="store_true", help="compare with docs/ instead of writing there")
    parser.add_argument(
        "--drawn",
        metavar="FILE",
        help="with --check and one NAME: compare FILE, already drawn by NAME's command, instead of redrawing "
        "(CI: the grid of the README's first command, which it runs anyway)",
    )
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in PICTURES]
    if unknown:
        parser.error(f"no picture {', '.join(unknown)}; choose among {', '.join(PICTURES)}")
    if args.drawn is not None:
        if not args.check or len(args.names) != 1:
            parser.error("--drawn needs --check and one picture NAME")
        if not Path(args.drawn).is_file():
            parser.error(f"--drawn {args.drawn}: no such file")
        problem = difference(Path(args.drawn), DOCS / args.names[0])
        print(problem or f"{args.names[0]}: same pixels as {args.drawn} (within {TOLERANCE} levels)")
        return 1 if problem else 0
    failed = False
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.names or README_PICTURES:
            drawn = redraw(name, Path(scratch))
            if args.check:
                problem = difference(drawn, DOCS / name)
                print(problem or f"{name}: same pixels (within {TOLERANCE} levels)")
                failed = failed or problem is not None
            else:
                shutil.copyfile(drawn, DOCS / name)
                print(f"wrote docs/{name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
