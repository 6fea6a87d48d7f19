"""Measuring the shapes world: the gates of its models, and analogy accuracy.

Gates (`diffinv shapes check`, exit 0 only when all hold):
    classifier       attribute classifier on fresh renders, per attribute              ≥ 99 %
    vae              VAE round trip keeps every attribute (all five right)             ≥ 98 %
    clip             CLIP picks the right caption among all world captions             ≥ 95 %
    text2image       generation from world captions gets every attribute right         ≥ 90 %
World v2 adds:
    layout           the classifier's centre within the layout threshold, fresh renders ≥ 99 %
    vae_layout       … after a VAE round trip                                          ≥ 98 %
    coverage         text-to-image centres spread over the range: per-axis std of the
                     classifier's centres ÷ that of the training offsets (worst axis)  ≥ 70 %
    editor_edit      the editor, given the true instruction, makes the edit            ≥ 90 %
    editor_preserved … and keeps the other four attributes and the layout              ≥ 90 %
    inpainting       one masked cell of a 2×2 grid repainted from its true caption has
                     all five attributes right                                         ≥ 90 %
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .classifier import AttributeClassifier
from .descriptor import GUIDANCE, IMAGE_GUIDANCE, SAMPLING_STEPS
from .world import (
    ATTRIBUTES,
    CELLS,
    FAMILIES,
    JITTER,
    RESOLUTION,
    Scene,
    all_scenes,
    canonical_caption,
    canonical_instruction,
    cell_mask,
    grid_picture,
    layout_range_of,
    random_scene,
    render,
)

THRESHOLDS = {
    "classifier": 0.99,
    "vae": 0.98,
    "clip": 0.95,
    "text2image": 0.90,
    "layout": 0.99,
    "vae_layout": 0.98,
    "coverage": 0.70,
    "editor_edit": 0.90,
    "editor_preserved": 0.90,
    "inpainting": 0.90,
}


@dataclass
class Gate:
    name: str
    value: float
    threshold: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold


def all_right(predicted: list[dict], scenes: list[Scene]) -> list[bool]:
    return [all(p[k] == getattr(s, k) for k in ATTRIBUTES) for p, s in zip(predicted, scenes)]


def per_attribute(predicted: list[dict], scenes: list[Scene]) -> dict[str, float]:
    return {k: float(np.mean([p[k] == getattr(s, k) for p, s in zip(predicted, scenes)])) for k in ATTRIBUTES}


def _detail(accuracy: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in accuracy.items())


def fresh_scenes(n: int, seed: int, layout_range: float = JITTER) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng, layout_range) for _ in range(n)]


def gate_classifier(
    classifier: AttributeClassifier, n: int = 1000, seed: int = 101, layout_range: float = JITTER
) -> Gate:
    scenes = fresh_scenes(n, seed, layout_range)
    accuracy = per_attribute(classifier.predict([render(s) for s in scenes]), scenes)
    worst = min(accuracy, key=accuracy.get)
    return Gate("classifier", accuracy[worst], THRESHOLDS["classifier"], _detail(accuracy))


def layout_right(predicted: list[dict], scenes: list[Scene], threshold: float) -> list[bool]:
    return [centre_error(p, s) <= threshold for p, s in zip(predicted, scenes)]


def _errors(predicted: list[dict], scenes: list[Scene]) -> str:
    errors = [centre_error(p, s) for p, s in zip(predicted, scenes)]
    return f"centre error median {np.median(errors):.2f} px, 99th pct {np.quantile(errors, 0.99):.2f} px"


def gate_layout(classifier: AttributeClassifier, layout_range: float, n: int = 1000, seed: int = 105) -> Gate:
    """The layout threshold against the classifier's own error on fresh (untrained-on) renders."""
    scenes = fresh_scenes(n, seed, layout_range)
    predicted = classifier.predict([render(s) for s in scenes])
    right = layout_right(predicted, scenes, classifier.layout_threshold)
    detail = f"threshold {classifier.layout_threshold} px; {_errors(predicted, scenes)}"
    return Gate("layout", float(np.mean(right)), THRESHOLDS["layout"], detail)


@torch.no_grad()
def gate_vae(
    pipe, classifier: AttributeClassifier, n: int = 500, seed: int = 102, layout_range: float = JITTER
) -> list[Gate]:
    """VAE round trips: all attributes right; with a centre-reading classifier also the layout."""
    scenes = fresh_scenes(n, seed, layout_range)
    images = [render(s) for s in scenes]
    processor = pipe.image_processor
    pixels = processor.preprocess(images).to(pipe.vae.device, pipe.vae.dtype)
    decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample
    round_trip = processor.postprocess(decoded, output_type="pil")
    predicted = classifier.predict(round_trip)
    gates = [
        Gate(
            "vae",
            float(np.mean(all_right(predicted, scenes))),
            THRESHOLDS["vae"],
            _detail(per_attribute(predicted, scenes)),
        )
    ]
    if classifier.centre is not None:
        right = layout_right(predicted, scenes, classifier.layout_threshold)
        gates.append(Gate("vae_layout", float(np.mean(right)), THRESHOLDS["vae_layout"], _errors(predicted, scenes)))
    return gates


def gate_clip(clip, n: int = 500, seed: int = 103, layout_range: float = JITTER) -> Gate:
    from ..captioners import ClipRetrievalCaptioner

    captions = [canonical_caption(s) for s in all_scenes()]
    captioner = ClipRetrievalCaptioner(clip, captions)
    scenes = fresh_scenes(n, seed, layout_range)
    picked = captioner([render(s) for s in scenes])
    right = [p == canonical_caption(s) for p, s in zip(picked, scenes)]
    return Gate("clip", float(np.mean(right)), THRESHOLDS["clip"], f"{len(captions)} candidate captions")


@torch.no_grad()
def text_to_image(
    pipe, captions: list[str], seed: int = 0, steps: int = 20, guidance_scale: float = 4.0, batch: int = 60
) -> list[Image.Image]:
    images = []
    pipe.set_progress_bar_config(disable=True)
    for i in range(0, len(captions), batch):
        generator = torch.Generator().manual_seed(seed + i)
        images += pipe(
            captions[i : i + batch], num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator
        ).images
    return images


def gate_text2image(
    pipe, classifier: AttributeClassifier, seed: int = 104, guidance_scale: float = 4.0, layout_range: float = JITTER
) -> list[Gate]:
    """One image per scene of the world (240), from its canonical caption: all attributes right;
    with a centre-reading classifier also the layout coverage (no caption names a position, so
    the model should draw them spread as in training: uniform on ±range, std range/√3 per axis)."""
    scenes = all_scenes()
    predicted = classifier.predict(
        text_to_image(pipe, [canonical_caption(s) for s in scenes], seed, guidance_scale=guidance_scale)
    )
    gates = [
        Gate(
            "text2image",
            float(np.mean(all_right(predicted, scenes))),
            THRESHOLDS["text2image"],
            _detail(per_attribute(predicted, scenes)),
        )
    ]
    if classifier.centre is not None:
        centres = np.array([p["centre"] for p in predicted])
        spread = centres.std(axis=0) / (layout_range / math.sqrt(3))
        detail = f"std/uniform std: x {spread[0]:.2f}, y {spread[1]:.2f}; mean ({centres[:, 0].mean():+.2f}, " + (
            f"{centres[:, 1].mean():+.2f}) px"
        )
        gates.append(Gate("coverage", float(spread.min()), THRESHOLDS["coverage"], detail))
    return gates


def random_edits(n: int, seed: int, layout_range: float):
    """`n` seeded (B, family, target) edits, families taken in turn."""
    rng = random.Random(seed)
    edits = []
    for index in range(n):
        family = FAMILIES[index % len(FAMILIES)]
        before = random_scene(rng, layout_range)
        target = rng.choice([v for v in ATTRIBUTES[family] if v != getattr(before, family)])
        edits.append((before, family, target))
    return edits


@torch.no_grad()
def gate_editor(editor, classifier: AttributeClassifier, layout_range: float, n: int = 200, seed: int = 106):
    """The editor (`StableDiffusionInstructPix2PixPipeline`) on `n` edits with the canonical
    instruction: the edit made, and the rest (four attributes and the layout) kept."""
    edits = random_edits(n, seed, layout_range)
    editor.set_progress_bar_config(disable=True)
    outputs = []
    for index, (before, family, target) in enumerate(edits):
        generator = torch.Generator().manual_seed(seed + index)
        outputs += editor(
            canonical_instruction(family, before, target),
            image=render(before),
            num_inference_steps=SAMPLING_STEPS,
            guidance_scale=GUIDANCE,
            image_guidance_scale=IMAGE_GUIDANCE,
            generator=generator,
        ).images
    predicted = classifier.predict(outputs)
    edited = [p[family] == target for p, (_, family, target) in zip(predicted, edits)]
    kept = [
        all(p[k] == getattr(before, k) for k in ATTRIBUTES if k != family)
        and centre_error(p, before) <= classifier.layout_threshold
        for p, (before, family, _) in zip(predicted, edits)
    ]
    settings = f"{SAMPLING_STEPS} steps, guidance {GUIDANCE}, image guidance {IMAGE_GUIDANCE}, n = {n}"
    return [
        Gate("editor_edit", float(np.mean(edited)), THRESHOLDS["editor_edit"], settings),
        Gate("editor_preserved", float(np.mean(kept)), THRESHOLDS["editor_preserved"], "four attributes and layout"),
    ]


@torch.no_grad()
def gate_inpainting(inpainter, classifier: AttributeClassifier, layout_range: float, n: int = 200, seed: int = 107):
    """The inpainting model (`StableDiffusionInpaintPipeline`) on `n` grids of four fresh scenes
    with one cell masked (cells in turn), prompted with that cell's canonical caption."""
    rng = random.Random(seed)
    inpainter.set_progress_bar_config(disable=True)
    side, cells, scenes = RESOLUTION, [], []
    for index in range(n):
        grid_scenes = [random_scene(rng, layout_range) for _ in CELLS]
        cell = index % len(CELLS)
        result = inpainter(
            canonical_caption(grid_scenes[cell]),
            image=grid_picture([render(s) for s in grid_scenes]),
            mask_image=cell_mask(cell, side),
            height=2 * side,
            width=2 * side,
            num_inference_steps=SAMPLING_STEPS,
            guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(seed + index),
        ).images[0]
        column, row = CELLS[cell]
        cells.append(result.crop((column * side, row * side, (column + 1) * side, (row + 1) * side)))
        scenes.append(grid_scenes[cell])
    predicted = classifier.predict(cells)
    detail = f"{_detail(per_attribute(predicted, scenes))}; {SAMPLING_STEPS} steps, guidance {GUIDANCE}, n = {n}"
    return Gate("inpainting", float(np.mean(all_right(predicted, scenes))), THRESHOLDS["inpainting"], detail)


def check(
    model_dir: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_gate: Callable[[Gate], None] | None = None,
) -> list[Gate]:
    """All gates of the bundled (or given) shapes-world model: v1's four, and for world v2 the
    layout, coverage, editor and inpainting gates. Some take minutes on a CPU: `on_stage(name)` is
    called before each model is measured, `on_gate(gate)` as soon as each gate is known."""
    from ..model_card import model_card
    from . import MODEL_DIR, load_shapes

    model_dir = Path(model_dir or MODEL_DIR)
    card = model_card(model_dir)
    layout_range = layout_range_of(card)
    gates: list[Gate] = []

    def measure(stage: str, gates_of: Callable[[], Gate | list[Gate]]) -> None:
        if on_stage is not None:
            on_stage(stage)
        found = gates_of()
        for gate in found if isinstance(found, list) else [found]:
            gates.append(gate)
            if on_gate is not None:
                on_gate(gate)

    di = load_shapes(device="cpu", model_dir=model_dir)
    classifier = AttributeClassifier.load(model_dir / "classifier")
    measure("the attribute classifier", lambda: gate_classifier(classifier, layout_range=layout_range))
    if classifier.centre is not None:
        measure("the classifier's layout reading", lambda: gate_layout(classifier, layout_range))
    measure("the VAE", lambda: gate_vae(di.backbone.pipe, classifier, layout_range=layout_range))
    measure("CLIP", lambda: gate_clip(di.clip, layout_range=layout_range))
    measure(
        "the text-to-image model", lambda: gate_text2image(di.backbone.pipe, classifier, layout_range=layout_range)
    )
    if "editor" in card.bench:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        editor = StableDiffusionInstructPix2PixPipeline.from_pretrained(card.path(card.bench["editor"]))
        measure("the instruction editor", lambda: gate_editor(editor, classifier, layout_range))
    if "inpainting" in card.bench:
        from diffusers import StableDiffusionInpaintPipeline

        inpainter = StableDiffusionInpaintPipeline.from_pretrained(card.path(card.bench["inpainting"]))
        measure("the inpainting model", lambda: gate_inpainting(inpainter, classifier, layout_range))
    return gates


# --- analogy accuracy (scores used by `diffinv bench`) ------------------------------------------------------
def centre_error(predicted: dict, scene: Scene) -> float:
    """Pixels between the classifier's reading of the shape's centre and `scene`'s true centre."""
    return math.dist(predicted["centre"], (scene.dx, scene.dy))


def score(predicted: dict, triplet, layout_threshold: float | None = None) -> dict[str, float]:
    """edit: the changed attribute (both, for a compound triplet) has the target value; preserved:
    every other attribute is B's; correct: both.

    With a centre reading in `predicted` and a `layout_threshold` (world v2): layout: B′'s centre
    lies within the threshold of B's (= the ground truth's) centre; preserved then needs the four
    other attributes *and* the layout, and preserved_attributes is the attributes alone (v1's
    preserved, so v1 and v2 tables read side by side). Without them, v1's three scores.
    """
    truth, changed = triplet.b_prime, triplet.attributes_changed
    edit = all(predicted[k] == getattr(truth, k) for k in changed)
    attributes = all(predicted[k] == getattr(truth, k) for k in ATTRIBUTES if k not in changed)
    if "centre" not in predicted or layout_threshold is None:
        return {"edit": float(edit), "preserved": float(attributes), "correct": float(edit and attributes)}
    layout = centre_error(predicted, truth) <= layout_threshold
    preserved = attributes and layout
    return {
        "edit": float(edit),
        "preserved": float(preserved),
        "correct": float(edit and preserved),
        "layout": float(layout),
        "preserved_attributes": float(attributes),
    }
