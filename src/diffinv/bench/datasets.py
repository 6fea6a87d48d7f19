"""Triplet datasets for `diffinv bench`: the shapes world, a folder of triplets, InstructPix2Pix.

Every dataset is a list of `BenchTriplet`s with stable ids, so a run can be resumed and results
of different runs joined. Images load lazily: a 300-triplet photo dataset is never all in memory.

Folder layout (one sub-directory per triplet, the layout of `examples/`)::

    ROOT/<id>/a.png  a_prime.png  b.png  [b_prime.png]  [captions.txt]

Any of .png .jpg .jpeg .webp. `b_prime` is an optional ground truth; `captions.txt` holds optional
`key: value` lines (`b_prime: …` enables the oracle-caption reference, `family: …` groups tables).

InstructPix2Pix layout (the released `clip-filtered-dataset` / `random-sample-dataset`)::

    ROOT/<pair dir>/prompt.json   {"input": …, "edit": …, "output": …}
    ROOT/<pair dir>/<seed>_0.jpg  before     <seed>_1.jpg  after   (one or more seeds)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import DiffinvError
from ..images import load_image
from ..pair_data import find_image, instructpix2pix_pairs, read_captions

ImageSource = Callable[[], Image.Image]


@dataclass
class BenchTriplet:
    """A : A′ :: B : B′, with what is known about the truth.

    a, a_prime, b, b_prime: loaders returning RGB images (b_prime None: no ground truth).
    family: the kind of change (shapes: the changed attribute), used to group tables.
    caption_b_prime: the ground-truth description of B′ (the oracle-caption reference needs it, and
        the text-using baselines SDEdit and Analogist get it).
    instruction: the edit in words (the text-using baseline InstructPix2Pix gets it; shapes: the
        world's canonical instruction, InstructPix2Pix data: its own "edit").
    truth: the shapes-world `Triplet` when there is one (exact scoring by the classifier).
    info: anything else worth keeping in the results (never shown to a method).
    split: for shapes triplets drawn by split, which half of the world's declared split A → A′
        belongs to ("seen", "unseen") or "compound"; empty otherwise.
    examples: further (A, A′) pairs of the same edit, as loaders (bench `--examples K`: K − 1 of
        them), for methods that take several examples (`method.takes_examples`); empty otherwise.
    """

    id: str
    a: ImageSource
    a_prime: ImageSource
    b: ImageSource
    b_prime: ImageSource | None = None
    family: str = ""
    caption_b_prime: str | None = None
    instruction: str | None = None
    truth: object | None = None
    info: dict = field(default_factory=dict)
    split: str = ""  # shapes: "seen", "unseen" or "compound" when drawn by split (`shapes.world.SPLIT`)
    examples: list[tuple[ImageSource, ImageSource]] = field(default_factory=list)  # --examples K: K − 1 pairs


def _constant(image: Image.Image) -> ImageSource:
    return lambda: image


def _from_file(path: Path) -> ImageSource:
    return lambda: load_image(path)


# --- the shapes world -----------------------------------------------------------------------------
SPLIT_CHOICES = ("seen", "unseen", "compound", "all")


def shapes_dataset(
    n: int,
    seed: int = 0,
    families: tuple[str, ...] | None = None,
    layout_range: float | None = None,
    split: str | None = None,
    examples: int = 1,
) -> list[BenchTriplet]:
    """`n` seeded shapes-world triplets, the families taken in turn (all five by default), with
    offsets within ±`layout_range` (default v1's jitter; the model card says which world).

    split: None (every edit type, as every run before the split), "seen" or "unseen" (only edit
    types of that half of the world's declared split, `shapes.world.SPLIT`), "compound" (two
    attributes changed at once; `families` unused) or "all" (`n` of each of the three, side by side).
    examples: example pairs of each triplet's edit, (A, A′) and `examples` − 1 more
    (`shapes.world.example_pairs`: other attributes drawn anew, from a stream of their own, so the
    triplets are the same for every count).
    """
    from ..shapes.world import FAMILIES, JITTER, canonical_caption, example_pairs, render, triplets

    families = tuple(families or FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise DiffinvError(f"unknown shapes families {unknown}; choose from {', '.join(FAMILIES)}")
    if n < 1:
        raise DiffinvError(f"--n must be at least 1, got {n}")
    if examples < 1:
        raise DiffinvError(f"--examples must be at least 1 (the triplet's own pair), got {examples}")
    if split is not None and split not in SPLIT_CHOICES:
        raise DiffinvError(f"unknown split {split!r}; choose from {', '.join(SPLIT_CHOICES)}")
    layout_range = JITTER if layout_range is None else layout_range
    parts = [None] if split is None else ["seen", "unseen", "compound"] if split == "all" else [split]
    out = []
    for part in parts:
        try:
            drawn = triplets(n, seed, families, layout_range, split=part)
        except ValueError as error:
            raise DiffinvError(str(error)) from None
        for index, triplet in enumerate(drawn):
            a, a_prime, b, b_prime = (render(s) for s in (triplet.a, triplet.a_prime, triplet.b, triplet.b_prime))
            further = example_pairs(triplet, examples - 1, seed, part, index, layout_range)
            out.append(
                BenchTriplet(
                    id=f"shapes-s{seed}-{index:04d}" if part is None else f"shapes-s{seed}-{part}-{index:04d}",
                    a=_constant(a),
                    a_prime=_constant(a_prime),
                    b=_constant(b),
                    b_prime=_constant(b_prime),
                    family=triplet.family,
                    caption_b_prime=canonical_caption(triplet.b_prime),
                    instruction=triplet.instruction,
                    truth=triplet,
                    split=part or "",
                    examples=[(_constant(render(x)), _constant(render(y))) for x, y in further],
                )
            )
    return out


# --- a folder of triplets ---------------------------------------------------------------------------
def folder_dataset(root: str | Path) -> list[BenchTriplet]:
    """Every sub-directory of `root` holding a, a_prime and b images, in name order."""
    root = Path(root)
    if not root.is_dir():
        raise DiffinvError(f"{root}: no such directory (a folder dataset is a directory of triplet folders)")
    out, incomplete = [], []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        found = {stem: find_image(directory, stem) for stem in ("a", "a_prime", "b", "b_prime")}
        if not all(found[stem] for stem in ("a", "a_prime", "b")):
            incomplete.append(directory.name)
            continue
        captions = read_captions(directory / "captions.txt")
        out.append(
            BenchTriplet(
                id=directory.name,
                a=_from_file(found["a"]),
                a_prime=_from_file(found["a_prime"]),
                b=_from_file(found["b"]),
                b_prime=_from_file(found["b_prime"]) if found["b_prime"] else None,
                family=captions.get("family", ""),
                caption_b_prime=captions.get("b_prime"),
                instruction=captions.get("instruction"),
            )
        )
    if not out:
        detail = f" ({len(incomplete)} folders lack a, a_prime or b)" if incomplete else ""
        raise DiffinvError(f"{root}: no triplet folders with a, a_prime and b images{detail}")
    return out


# --- InstructPix2Pix ----------------------------------------------------------------------------------
def instructpix2pix_dataset(root: str | Path, n: int = 300, seed: int = 0) -> list[BenchTriplet]:
    """The paper's protocol: `n` seeded pairs (A = before, A′ = after); B = the before image of
    another pair with the same instruction. The instruction is kept in `info` for the report; only
    the text-using baselines get it (`instruction`), and B's own "output" caption
    (`caption_b_prime`); Difference Inversion never sees either."""
    by_instruction: dict[str, list[dict]] = {}
    for pair in instructpix2pix_pairs(root):
        by_instruction.setdefault(pair["instruction"].strip().lower(), []).append(pair)
    usable = [pair for group in by_instruction.values() if len(group) > 1 for pair in group]
    if not usable:
        raise DiffinvError(f"{root}: no instruction has two or more pairs, so no B can be chosen")
    rng = random.Random(seed)
    chosen = rng.sample(usable, min(n, len(usable)))
    out = []
    for pair in chosen:
        others = [p for p in by_instruction[pair["instruction"].strip().lower()] if p is not pair]
        other = rng.choice(others)
        out.append(
            BenchTriplet(
                id=pair["id"],
                a=_from_file(pair["before"]),
                a_prime=_from_file(pair["after"]),
                b=_from_file(other["before"]),
                caption_b_prime=other["output"],
                instruction=pair["instruction"],
                info={"instruction": pair["instruction"], "b_from": other["id"]},
            )
        )
    return out
