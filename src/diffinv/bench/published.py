"""The field's published analogy benchmarks, each read from a local copy in its own published layout.

`diffinv bench run --dataset NAME --data DIR` with NAME one of `PUBLISHED`:

reedit — ReEdit-Bench (ReEdit, WACV 2025: (x, x_edit, y, y_edit) tuples), as the authors' code
reads it, one folder per tuple named `<edit type>_<name>`::

    ROOT/<pair>/0_0.png  x  (A)       0_1.png  x_edit (A′)
    ROOT/<pair>/1_0.png  y  (B)       [1_1.png  y_edit (B′, the ground truth)]

    (.png as the code reads them, or .jpg as the project page ships them; family: the name's
    prefix before the first "_", e.g. add, bg, style)

lorweb — LoRWeB's analogy layout of Relation252K (what LoRWeB's `preprocess_data.py` writes from a
Relation252K copy, e.g. its test split)::

    ROOT/analogy_metadata.json        [{"analogy_id", "edit_prompt", "category", "direction",
                                        "control_image_path", "target_image_path", "caption_path",
                                        "pair_A": {...}, "pair_C": {... "right_image_description"}}, …]
    ROOT/control/<analogy_id>.jpg     A | A′ | B side by side (three equal tiles)
    ROOT/target/<analogy_id>.jpg      B′ (ground truth)      target/<analogy_id>.txt  the edit prompt

relation252k — Relation252K's own layout (RelationAdapter's release), one folder per relation::

    ROOT/<category>/Group1/labels.json   [{"img_name", "left_image_description",
                                           "right_image_description", "edit_instruction"}, …]
    ROOT/<category>/Group1/<img_name>    before | after side by side

    Each labelled pair is A → A′ of one triplet; B → B′ is the next pair of the same category
    (the last takes the first), so every pair is an example once and a target once.

analogist — Analogist's (SIGGRAPH 2024) task folders, either its examples::

    ROOT/<task>_raw/001.png 002.png 003.png        A, A′, B
    ROOT/<task>_processed/input.png                [the grid of A, A′, B its visual prompting wrote;
                                                    read when there is no <task>_raw]
    ROOT/<task>_processed/prompts.txt              [text prompts of B′, one a line; the first is used]

or its evaluation sets (512×512 2×2 grids: A | A′ over B | masked, 2-pixel borders)::

    ROOT/<category>_processed/<task>_masked/<name>.png
    ROOT/<category>_processed/<task>_gpt4_out.txt  one line per grid in name order, tab-separated:
                                                    a label, then GPT-4V's prompts of B′ (the first is used)

Every loader gives stable ids, the family (edit type, category or task), the ground-truth B′ and
the words where the set has them, and loads images lazily (a crop of a shared file is cut when
asked). A partial copy (a missing image, a missing JSON key, a prompt file that does not match its
grids) raises one `DiffinvError` line naming what is missing; nothing is skipped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ..errors import DiffinvError
from ..images import load_image
from ..pair_data import IMAGE_SUFFIXES
from .datasets import BenchTriplet, ImageSource

Box = Callable[[int, int], tuple[int, int, int, int]]  # (width, height) of the file → crop box


def _from_file(path: Path) -> ImageSource:
    return lambda: load_image(path)


def _cropped(path: Path, box: Box, what: str) -> ImageSource:
    """A loader of the part `box(width, height)` of the image at `path` (`what`: the layout, for errors)."""

    def load() -> Image.Image:
        image = load_image(path)
        left, top, right, bottom = box(*image.size)
        if right - left < 1 or bottom - top < 1:
            raise DiffinvError(f"{path}: {image.size[0]}×{image.size[1]} is too small to be {what}")
        return image.crop((left, top, right, bottom))

    return load


def _safe(text: str) -> str:
    """`text` usable as a file name (ids name the B′ images of a run)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _image(directory: Path, stem: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path | None:
    for suffix in suffixes:
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    return None


def _require_directory(root: str | Path, name: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DiffinvError(f"{root}: no such directory (expected a local copy of {name})")
    return root


def _subdirectories(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_json(path: Path, name: str):
    if not path.is_file():
        raise DiffinvError(f"{path}: missing (a complete copy of {name} has it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DiffinvError(f"{path}: not valid JSON ({error})") from None


def _entries(data, path: Path, keys: tuple[str, ...]) -> list[dict]:
    """The list of objects of a JSON file, each checked for `keys`."""
    if not isinstance(data, list):
        raise DiffinvError(f"{path}: expected a JSON list of entries, found {type(data).__name__}")
    for number, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DiffinvError(f"{path}: entry {number} is not a JSON object")
        missing = [key for key in keys if key not in entry]
        if missing:
            raise DiffinvError(f'{path}: entry {number} has no "{missing[0]}" key')
    return data


def _unique(triplets: list[BenchTriplet], root: Path) -> list[BenchTriplet]:
    """`triplets`, checked to be some and to have distinct ids (a run keys its results by id)."""
    seen: set[str] = set()
    for triplet in triplets:
        if triplet.id in seen:
            raise DiffinvError(f"{root}: two triplets would share the id {triplet.id!r}")
        seen.add(triplet.id)
    if not triplets:
        raise DiffinvError(f"{root}: no triplets found")
    return triplets


def families_in_turn(triplets: list[BenchTriplet], n: int | None) -> list[BenchTriplet]:
    """The first `n` triplets taking the families in turn (all when `n` is None): a subset of a
    set sorted by family covers every family rather than the first few. Stable: the same copy
    and `n` give the same triplets."""
    if n is None or n >= len(triplets):
        return triplets
    if n < 1:
        raise DiffinvError(f"--n must be at least 1, got {n}")
    queues: dict[str, list[BenchTriplet]] = {}
    for triplet in triplets:
        queues.setdefault(triplet.family, []).append(triplet)
    chosen: list[BenchTriplet] = []
    while len(chosen) < n:
        for queue in queues.values():
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


# --- ReEdit-Bench ------------------------------------------------------------------------------------------
REEDIT_FILES = {"0_0": "x (A)", "0_1": "x_edit (A′)", "1_0": "y (B)", "1_1": "y_edit (B′)"}
REEDIT_SUFFIXES = (".png", ".jpg", ".jpeg")


def reedit_dataset(root: str | Path) -> list[BenchTriplet]:
    """Every tuple folder of a ReEdit-Bench copy, in name order. y_edit (1_1) is the ground truth:
    a copy has it in every folder or in none (the authors' code reads folders without it)."""
    root = _require_directory(root, "ReEdit-Bench")
    folders = _subdirectories(root)
    if not folders:
        raise DiffinvError(f"{root}: no ReEdit-Bench tuple folders (<pair>/0_0.png 0_1.png 1_0.png [1_1.png])")
    found = {folder: {stem: _image(folder, stem, REEDIT_SUFFIXES) for stem in REEDIT_FILES} for folder in folders}
    with_truth = [folder for folder in folders if found[folder]["1_1"]]
    needed = list(REEDIT_FILES) if with_truth else ["0_0", "0_1", "1_0"]
    out = []
    for folder in folders:
        missing = [stem for stem in needed if found[folder][stem] is None]
        if missing:
            detail = f" (other folders such as {with_truth[0].name} have it)" if missing[0] == "1_1" else ""
            raise DiffinvError(
                f"{folder / missing[0]}.png (or .jpg): missing, the {REEDIT_FILES[missing[0]]} image{detail}"
            )
        images = found[folder]
        out.append(
            BenchTriplet(
                id=_safe(folder.name),
                a=_from_file(images["0_0"]),
                a_prime=_from_file(images["0_1"]),
                b=_from_file(images["1_0"]),
                b_prime=_from_file(images["1_1"]) if images["1_1"] else None,
                family=folder.name.split("_", 1)[0] if "_" in folder.name else "",
            )
        )
    return _unique(out, root)


# --- LoRWeB's layout of Relation252K ---------------------------------------------------------------------
LORWEB_KEYS = ("analogy_id", "edit_prompt", "category", "control_image_path", "target_image_path")


def _third(index: int) -> Box:
    """Tile `index` (0, 1, 2) of three side by side."""
    return lambda width, height: (index * (width // 3), 0, (index + 1) * (width // 3), height)


def lorweb_dataset(root: str | Path) -> list[BenchTriplet]:
    """Every analogy of `analogy_metadata.json`, in its order: A, A′ and B cut from the control
    strip, B′ the target; the edit prompt as the instruction, C's after-description as B′'s caption."""
    root = _require_directory(root, "LoRWeB's analogy set")
    metadata = root / "analogy_metadata.json"
    entries = _entries(_read_json(metadata, "LoRWeB's analogy set"), metadata, LORWEB_KEYS)
    out = []
    for number, entry in enumerate(entries):
        control, target = root / entry["control_image_path"], root / entry["target_image_path"]
        for path, role in ((control, "the A | A′ | B control strip"), (target, "the B′ target")):
            if not path.is_file():
                raise DiffinvError(f"{path}: missing, {role} of entry {number} of {metadata.name}")
        pair_c = entry.get("pair_C") if isinstance(entry.get("pair_C"), dict) else {}
        strip = "an A | A′ | B strip"
        out.append(
            BenchTriplet(
                id=_safe(str(entry["analogy_id"])),
                a=_cropped(control, _third(0), strip),
                a_prime=_cropped(control, _third(1), strip),
                b=_cropped(control, _third(2), strip),
                b_prime=_from_file(target),
                family=str(entry["category"]),
                caption_b_prime=pair_c.get("right_image_description"),
                instruction=str(entry["edit_prompt"]),
                info={key: entry[key] for key in ("direction",) if key in entry},
            )
        )
    return _unique(out, root)


# --- Relation252K ------------------------------------------------------------------------------------------
RELATION_KEYS = ("img_name", "left_image_description", "right_image_description", "edit_instruction")


def _half(index: int) -> Box:
    return lambda width, height: (index * (width // 2), 0, (index + 1) * (width // 2), height)


def relation252k_dataset(root: str | Path) -> list[BenchTriplet]:
    """A triplet per labelled pair of every `<category>/Group1/labels.json`: A → A′ that pair,
    B → B′ the next pair of the category (cyclically); categories in name order."""
    root = _require_directory(root, "Relation252K")
    categories = _subdirectories(root)
    if not categories:
        raise DiffinvError(f"{root}: no Relation252K category folders (<category>/Group1/labels.json)")
    out = []
    for category in categories:
        labels = category / "Group1" / "labels.json"
        entries = _entries(_read_json(labels, "Relation252K"), labels, RELATION_KEYS)
        if len(entries) < 2:
            raise DiffinvError(f"{labels}: {len(entries)} pair(s); a triplet needs two pairs of one relation")
        for entry in entries:
            if not (labels.parent / entry["img_name"]).is_file():
                raise DiffinvError(f"{labels.parent / entry['img_name']}: missing, an image named in {labels.name}")
        for index, example in enumerate(entries):
            target = entries[(index + 1) % len(entries)]
            pair, other = labels.parent / example["img_name"], labels.parent / target["img_name"]
            halves = "a before | after pair"
            out.append(
                BenchTriplet(
                    id=_safe(f"{category.name}__{Path(example['img_name']).stem}~{Path(target['img_name']).stem}"),
                    a=_cropped(pair, _half(0), halves),
                    a_prime=_cropped(pair, _half(1), halves),
                    b=_cropped(other, _half(0), halves),
                    b_prime=_cropped(other, _half(1), halves),
                    family=category.name,
                    caption_b_prime=target["right_image_description"],
                    instruction=example["edit_instruction"],
                    info={"b_from": target["img_name"]},
                )
            )
    return _unique(out, root)


# --- Analogist ---------------------------------------------------------------------------------------------
ANALOGIST_RAW = {"001": "A", "002": "A′", "003": "B"}
GRID_BORDER = 2  # pixels around each cell of Analogist's grids


def _grid_cell(column: int, row: int) -> Box:
    """Cell (column, row) of Analogist's 2×2 grid: cells of half the width, each image inset by the border."""

    def box(width: int, height: int) -> tuple[int, int, int, int]:
        cell, border = width // 2, GRID_BORDER
        inner = int(cell - 1.5 * border)
        left = border if column == 0 else cell + border - 1
        top = border if row == 0 else cell + border - 1
        return left, top, left + inner, top + inner

    return box


def _first_prompt(path: Path) -> str | None:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    return next((line for line in lines if line), None)


def _analogist_examples(root: Path) -> list[BenchTriplet]:
    """A triplet per example task: from `<task>_raw` (the three images), else from the grid its
    visual prompting wrote (`<task>_processed/input.png`, the layout of the evaluation grids)."""
    out = []
    raws = {d.name[: -len("_raw")]: d for d in _subdirectories(root) if d.name.endswith("_raw")}
    grids = {
        d.name[: -len("_processed")]: d / "input.png"
        for d in _subdirectories(root)
        if d.name.endswith("_processed") and (d / "input.png").is_file()
    }
    for task in sorted(set(raws) | set(grids)):
        prompt = _first_prompt(root / f"{task}_processed" / "prompts.txt")
        if task in raws:
            images = {stem: _image(raws[task], stem) for stem in ANALOGIST_RAW}
            missing = [stem for stem, path in images.items() if path is None]
            if missing:
                raise DiffinvError(
                    f"{raws[task] / missing[0]}.png: missing, the {ANALOGIST_RAW[missing[0]]} image of task {task}"
                )
            a, a_prime, b = (_from_file(images[stem]) for stem in ANALOGIST_RAW)
        else:
            grid_of = "a 2×2 Analogist grid"
            a, a_prime, b = (_cropped(grids[task], _grid_cell(*cell), grid_of) for cell in ((0, 0), (1, 0), (0, 1)))
        out.append(BenchTriplet(id=_safe(task), a=a, a_prime=a_prime, b=b, family=task, caption_b_prime=prompt))
    return out


def _analogist_evaluation(root: Path) -> list[BenchTriplet]:
    out = []
    for category in (d for d in _subdirectories(root) if d.name.endswith("_processed")):
        for prompts in sorted(category.glob("*_gpt4_out.txt")):  # prompts without their grids: a partial copy
            masked = category / f"{prompts.name[: -len('_gpt4_out.txt')]}_masked"
            if not masked.is_dir():
                raise DiffinvError(f"{masked}: missing, the grids that {prompts.name} prompts")
        for masked in (d for d in _subdirectories(category) if d.name.endswith("_masked")):
            task = masked.name[: -len("_masked")]
            prompts = category / f"{task}_gpt4_out.txt"
            if not prompts.is_file():
                raise DiffinvError(f"{prompts}: missing, the GPT-4V prompts of the {task} grids")
            grids = sorted(p for p in masked.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            lines = [ln for ln in prompts.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if len(lines) != len(grids):
                raise DiffinvError(
                    f"{prompts}: {len(lines)} prompt lines for {len(grids)} grids in {masked.name} (a partial copy?)"
                )
            for grid, line in zip(grids, lines):
                fields = line.strip().split("\t")
                if len(fields) < 2 or not fields[1].strip():
                    raise DiffinvError(
                        f"{prompts}: the line of {grid.name} has no prompt after its tab-separated label"
                    )
                grid_of = "a 2×2 Analogist grid"
                out.append(
                    BenchTriplet(
                        id=_safe(f"{task}__{grid.stem}"),
                        a=_cropped(grid, _grid_cell(0, 0), grid_of),
                        a_prime=_cropped(grid, _grid_cell(1, 0), grid_of),
                        b=_cropped(grid, _grid_cell(0, 1), grid_of),
                        family=task,
                        caption_b_prime=fields[1].strip(),
                        info={"category": category.name[: -len("_processed")]},
                    )
                )
    return out


def analogist_dataset(root: str | Path) -> list[BenchTriplet]:
    """Analogist's example tasks (`<task>_raw`) and evaluation grids (`<category>_processed/<task>_masked`)
    under `root`, in that order; no ground truth (Analogist publishes none)."""
    root = _require_directory(root, "Analogist's tasks")
    out = _analogist_examples(root) + _analogist_evaluation(root)
    if not out:
        raise DiffinvError(
            f"{root}: no Analogist tasks (<task>_raw/001.png 002.png 003.png, or "
            "<category>_processed/<task>_masked/ with <task>_gpt4_out.txt)"
        )
    return _unique(out, root)


# name → loader of a local copy; `diffinv bench run --dataset NAME --data DIR`
PUBLISHED: dict[str, Callable[[str | Path], list[BenchTriplet]]] = {
    "reedit": reedit_dataset,
    "lorweb": lorweb_dataset,
    "relation252k": relation252k_dataset,
    "analogist": analogist_dataset,
}
