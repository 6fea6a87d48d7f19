"""The shapes world: scenes, their pictures and captions, and analogy triplets with ground truth.

A scene is one shape with five attributes — shape, colour, size, background and an optional
black dot at the shape's centre — placed with an offset (dx, dy) of its centre from the
picture's centre that no caption or instruction ever names. Pictures are drawn at 4× and
box-downsampled, so edges are anti-aliased.

Two versions of the world differ only in how far the offset ranges:
- v1: a jitter of ±1.5 px (`JITTER`) — every picture nearly centred, so everything about a
  picture is in its caption;
- v2: ±5 px (`LAYOUT_RANGE`) on each axis, the widest range that keeps a large shape inside the
  frame — a layout that is B's own and that only the picture carries, so methods that keep B's
  layout can be told from those that redraw it. Ground-truth B′ keeps B's exact offset.
A model directory's `diffinv.json` says which world it was trained on (`"world": {"version":
2, "layout_range": 5.0}`; `layout_range_of` reads it); without it, v1.

Also here: the 2×2 grids of pictures the world's inpainting model repaints one cell of.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from ..model_card import ModelCard

RESOLUTION = 32
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
}
SIZES = {"small": 6.5, "large": 10.5}  # radius in pixels at RESOLUTION
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
DOTS = (False, True)
DOT_RADIUS = 2.5
JITTER = 1.5  # v1: maximal shift of the centre, pixels
LAYOUT_RANGE = 5.0  # v2: 16 − 10.5 (large radius) − 0.5 px margin
LAYOUT_RANGES = {1: JITTER, 2: LAYOUT_RANGE}  # world version → offset range


def layout_range_of(card: ModelCard) -> float:
    """The offset range of the world a model learned, from its card's "world" entry (written by
    `shapes.descriptor.world_descriptor`); v1's without one."""
    return float(card.world.get("layout_range", LAYOUT_RANGES[int(card.world.get("version", 1))]))


ATTRIBUTES = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": tuple(SIZES),
    "background": tuple(BACKGROUNDS),
    "dot": DOTS,
}
FAMILIES = tuple(ATTRIBUTES)  # one analogy family per attribute


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    background: str
    dot: bool
    dx: float = 0.0
    dy: float = 0.0

    @property
    def attributes(self) -> dict:
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def with_(self, attribute: str, value) -> Scene:
        return replace(self, **{attribute: value})


def all_scenes() -> list[Scene]:
    """Every combination of attribute values, centred (240 scenes)."""
    return [Scene(*values) for values in itertools.product(*ATTRIBUTES.values())]


def random_scene(rng: random.Random, jitter: float = JITTER) -> Scene:
    values = [rng.choice(options) for options in ATTRIBUTES.values()]
    return Scene(*values, dx=rng.uniform(-jitter, jitter), dy=rng.uniform(-jitter, jitter))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "cross":
        a, w = r, r * 0.38
        return [
            (cx - w, cy - a),
            (cx + w, cy - a),
            (cx + w, cy - w),
            (cx + a, cy - w),
            (cx + a, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + a),
            (cx - w, cy + a),
            (cx - w, cy + w),
            (cx - a, cy + w),
            (cx - a, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(shape)


def render(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """The scene as an RGB picture of `resolution`² pixels."""
    s = SUPERSAMPLE * resolution / RESOLUTION
    big = Image.new("RGB", (resolution * SUPERSAMPLE,) * 2, BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(big)
    cx, cy = (RESOLUTION / 2 + scene.dx) * s, (RESOLUTION / 2 + scene.dy) * s
    r = SIZES[scene.size] * s
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=fill)
    if scene.dot:
        d = DOT_RADIUS * s
        draw.ellipse((cx - d, cy - d, cx + d, cy + d), fill=(0, 0, 0))
    return big.resize((resolution, resolution), Image.Resampling.BOX)


# --- captions ---------------------------------------------------------------------------------
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
DOT_PHRASES = (" with a dot", " with a black dot", ", dotted")
TEMPLATES = (
    "a {size} {colour} {shape} on a {background} background{dot}",
    "a {colour} {shape}{dot}, {size}, on {background}",
    "{background} background, {size} {colour} {shape}{dot}",
    "a picture of a {size} {colour} {shape} on {background}{dot}",
    "{size} {colour} {shape} over a {background} background{dot}",
)


def canonical_caption(scene: Scene) -> str:
    """The one caption per scene used for retrieval and for describing images."""
    dot = " with a dot" if scene.dot else ""
    return f"a {scene.size} {scene.colour} {scene.shape} on a {scene.background} background{dot}"


def caption_variants(scene: Scene) -> list[str]:
    """Every wording of the scene (templates × synonyms × dot phrases); the canonical is first."""
    variants = [canonical_caption(scene)]
    for template, size in itertools.product(TEMPLATES, SIZE_WORDS[scene.size]):
        for dot in DOT_PHRASES if scene.dot else ("",):
            text = template.format(
                size=size, colour=scene.colour, shape=scene.shape, background=scene.background, dot=dot
            )
            if text not in variants:
                variants.append(text)
    return variants


def vocabulary_words() -> list[str]:
    """Every word any caption or instruction uses (the tokenizer gives each one token)."""
    words = set()
    for scene in all_scenes():
        texts = caption_variants(scene)
        for family in FAMILIES:
            for value in ATTRIBUTES[family]:
                if value != getattr(scene, family):
                    texts += instruction_variants(family, scene, value)
        for text in texts:
            words.update(text.replace(",", " ").split())
    return sorted(words)


# --- instructions (the world's InstructPix2Pix) --------------------------------------------------
SIZE_CHANGE = {"small": ("smaller", "small"), "large": ("bigger", "large")}


def instruction_variants(family: str, before: Scene, target) -> list[str]:
    """Every wording of "set `family` of `before` to `target`"; the canonical one is first. None
    names the position, and none names attributes the edit keeps beyond the one it changes."""
    if family == "shape":
        return [f"turn the {before.shape} into a {target}", f"make it a {target}", f"change the shape to {target}"]
    if family == "colour":
        return [f"make it {target}", f"turn the {before.shape} {target}", f"change the colour to {target}"]
    if family == "size":
        comparative, word = SIZE_CHANGE[target]
        return [f"make it {comparative}", f"make the {before.shape} {word}", f"change the size to {word}"]
    if family == "background":
        return [
            f"make the background {target}",
            f"change the background to {target}",
            f"put it on a {target} background",
        ]
    if family == "dot":
        if target:
            return ["add a dot", "put a dot on it", "add a black dot"]
        return ["remove the dot", "take the dot away", "remove the black dot"]
    raise ValueError(f"unknown family {family!r}")


def canonical_instruction(family: str, before: Scene, target) -> str:
    return instruction_variants(family, before, target)[0]


# --- edit types and the split -------------------------------------------------------------------
@dataclass(frozen=True)
class EditType:
    """One directed change: `family` from `source` to `target` (42 in all: shape 12, colour 20,
    size 2, background 6, dot 2)."""

    family: str
    source: object
    target: object


def all_edit_types() -> list[EditType]:
    return [
        EditType(family, source, target)
        for family, values in ATTRIBUTES.items()
        for source in values
        for target in values
        if source != target
    ]


COMPOUND = "compound"  # the family of triplets that change two attributes at once
SPLITS = ("seen", "unseen", COMPOUND)
# What a learned analogy component (the DIFF-token encoder, and anything like it later) may train
# on. Unseen: the whole shape and dot families, and a seeded third of each other family's directed
# transitions; seen: the rest. The world's editor and text-to-image model may know every edit, as a
# real editor is trained on a broad set of edits: the split is about what the analogy component
# learned from. Fixed once: changing it changes which figures are honest.
UNSEEN_FAMILIES = ("shape", "dot")
SPLIT_SEED = "diffinv.shapes.split/1"


def _declared_split() -> dict[str, frozenset[EditType]]:
    rng = random.Random(SPLIT_SEED)
    unseen = {edit for edit in all_edit_types() if edit.family in UNSEEN_FAMILIES}
    for family in FAMILIES:
        if family not in UNSEEN_FAMILIES:
            transitions = [edit for edit in all_edit_types() if edit.family == family]
            unseen.update(rng.sample(transitions, round(len(transitions) / 3)))
    seen = {edit for edit in all_edit_types() if edit not in unseen}
    return {"seen": frozenset(seen), "unseen": frozenset(unseen)}


SPLIT: dict[str, frozenset[EditType]] = _declared_split()


def split_of(triplet: Triplet) -> str:
    """ "compound", or "seen" / "unseen" by the edit type A → A′ applies."""
    if triplet.family == COMPOUND:
        return COMPOUND
    return "unseen" if triplet.edits[0] in SPLIT["unseen"] else "seen"


# --- analogy triplets -------------------------------------------------------------------------
@dataclass(frozen=True)
class Triplet:
    """A : A′ :: B : B′ where A′ is A with `family` set to `target`, and B′ is B likewise. A
    compound triplet (family `COMPOUND`) changes the two attributes of `changed` at once."""

    family: str
    a: Scene
    a_prime: Scene
    b: Scene
    b_prime: Scene
    changed: tuple[str, ...] = ()  # compound triplets: the two attributes changed

    @property
    def attributes_changed(self) -> tuple[str, ...]:
        return self.changed or (self.family,)

    @property
    def target(self):
        return getattr(self.a_prime, self.family)

    @property
    def edits(self) -> tuple[EditType, ...]:
        """The edit types A → A′ applies (one; two for a compound triplet)."""
        return tuple(
            EditType(name, getattr(self.a, name), getattr(self.a_prime, name)) for name in self.attributes_changed
        )

    @property
    def instruction(self) -> str:
        """The canonical instruction that turns B into B′ (for text-using methods)."""
        return " and ".join(
            canonical_instruction(name, self.b, getattr(self.a_prime, name)) for name in self.attributes_changed
        )


def make_triplet(
    family: str, rng: random.Random, jitter: float = JITTER, edit_types: frozenset[EditType] | None = None
) -> Triplet:
    """A random triplet of one family. B shares A's source value of the changed attribute and
    differs from A in at least one other attribute. edit_types: the edit types A → A′ may be (A
    is drawn again until one is possible); None: any."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    while True:
        a = random_scene(rng, jitter)
        targets = [
            v
            for v in ATTRIBUTES[family]
            if v != getattr(a, family)
            and (edit_types is None or EditType(family, getattr(a, family), v) in edit_types)
        ]
        if targets:
            break
    target = rng.choice(targets)
    b = _b_for(a, (family,), rng, jitter)
    return Triplet(family, a, a.with_(family, target), b, b.with_(family, target))


def _b_for(a: Scene, changed: tuple[str, ...], rng: random.Random, jitter: float) -> Scene:
    """A random B that shares A's values of the `changed` attributes and differs from A in at least
    one other (drawn again until it does)."""
    while True:
        b = random_scene(rng, jitter)
        for name in changed:
            b = b.with_(name, getattr(a, name))
        if any(getattr(b, k) != getattr(a, k) for k in ATTRIBUTES if k not in changed):
            return b


def triplets(
    n: int,
    seed: int = 0,
    families: tuple[str, ...] = FAMILIES,
    layout_range: float = JITTER,
    split: str | None = None,
) -> list[Triplet]:
    """`n` seeded triplets, families taken in turn; offsets within ±`layout_range` (v1's jitter by
    default, `LAYOUT_RANGE` for v2).

    split: None (every edit type, the draws of every run before the split existed), "seen" or
    "unseen" (only edit types of that half of `SPLIT`, families without any left out), or
    "compound" (two attributes changed at once, `make_compound_triplet`; `families` unused).
    """
    if split is None:
        rng = random.Random(seed)
        return [make_triplet(families[i % len(families)], rng, layout_range) for i in range(n)]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    rng = random.Random(f"{split}/{seed}")  # a stream of its own: split=None's triplets stay as they were
    if split == COMPOUND:
        return [make_compound_triplet(rng, layout_range) for _ in range(n)]
    allowed = [family for family in families if any(edit.family == family for edit in SPLIT[split])]
    if not allowed:
        raise ValueError(f"no family of {families} has {split} edit types")
    return [make_triplet(allowed[i % len(allowed)], rng, layout_range, SPLIT[split]) for i in range(n)]


def make_compound_triplet(rng: random.Random, layout_range: float = JITTER) -> Triplet:
    """A triplet whose A′ changes two attributes of A at once (drawn uniformly among the pairs of
    families); B shares A's values of both and differs from A in at least one other attribute."""
    changed = tuple(sorted(rng.sample(FAMILIES, 2), key=FAMILIES.index))
    a = random_scene(rng, layout_range)
    targets = {name: rng.choice([v for v in ATTRIBUTES[name] if v != getattr(a, name)]) for name in changed}
    b = _b_for(a, changed, rng, layout_range)
    a_prime, b_prime = a, b
    for name, value in targets.items():
        a_prime, b_prime = a_prime.with_(name, value), b_prime.with_(name, value)
    return Triplet(COMPOUND, a, a_prime, b, b_prime, changed)


# --- further example pairs of a triplet's edit -----------------------------------------------------
def example_pairs(
    triplet: Triplet, count: int, seed: int, split: str | None, index: int, layout_range: float = JITTER
) -> list[tuple[Scene, Scene]]:
    """`count` further (A, A′) pairs of the edit of `triplet` (the i-th, `index`, of `triplets(…,
    seed, split=split)`), for methods shown several examples of one edit.

    Each pair's A has A's values of the changed attributes and everything else drawn anew — what
    the pairs share is the edit alone — and differs in at least one kept attribute from A (as B
    does) and from B (so that no example shows B's own change); its A′ is it with A′'s values of
    the changed attributes. Drawn from a string-keyed stream of the triplet's own,
    "examples/<split>/<seed>/<index>": the triplets are drawn exactly as without examples, and
    the first j pairs are the same for any count ≥ j.
    """
    rng = random.Random(f"examples/{split or 'any'}/{seed}/{index}")
    changed = triplet.attributes_changed
    pairs = []
    for _ in range(count):
        while True:
            a = _b_for(triplet.a, changed, rng, layout_range)
            if any(getattr(a, k) != getattr(triplet.b, k) for k in ATTRIBUTES if k not in changed):
                break
        a_prime = a
        for name in changed:
            a_prime = a_prime.with_(name, getattr(triplet.a_prime, name))
        pairs.append((a, a_prime))
    return pairs


# --- 2×2 grids (what the inpainting model is trained and gated on) ---------------------------------
CELLS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (column, row) of the 2×2 grid: A | A′ over B | B′


def grid_picture(pictures: list[Image.Image]) -> Image.Image:
    """Four same-sized pictures as a 2×2 grid, in `CELLS` order (top-left, top-right, bottom-left, bottom-right)."""
    side = pictures[0].width
    grid = Image.new("RGB", (2 * side, 2 * side))
    for picture, (column, row) in zip(pictures, CELLS):
        grid.paste(picture, (column * side, row * side))
    return grid


def cell_mask(cell: int, side: int) -> Image.Image:
    """The inpainting mask of one cell of a 2×2 grid of `side`-pixel pictures: white (repaint) in
    the cell, black elsewhere."""
    mask = Image.new("L", (2 * side, 2 * side), 0)
    column, row = CELLS[cell]
    mask.paste(255, (column * side, row * side, (column + 1) * side, (row + 1) * side))
    return mask
