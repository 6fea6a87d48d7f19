"""Measuring the shapes world: the four gates of its models, and analogy accuracy.

Gates (`diffinv shapes check`, exit 0 only when all hold):
    classifier   attribute classifier on fresh renders, per attribute      ≥ 99 %
    vae          VAE round trip keeps every attribute (all five right)     ≥ 98 %
    clip         CLIP picks the right caption among all world captions     ≥ 95 %
    text2image   generation from world captions gets every attribute right ≥ 90 %
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .classifier import AttributeClassifier
from .world import ATTRIBUTES, Scene, all_scenes, canonical_caption, random_scene, render

THRESHOLDS = {"classifier": 0.99, "vae": 0.98, "clip": 0.95, "text2image": 0.90}


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


def fresh_scenes(n: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def gate_classifier(classifier: AttributeClassifier, n: int = 1000, seed: int = 101) -> Gate:
    scenes = fresh_scenes(n, seed)
    accuracy = per_attribute(classifier.predict([render(s) for s in scenes]), scenes)
    worst = min(accuracy, key=accuracy.get)
    return Gate("classifier", accuracy[worst], THRESHOLDS["classifier"], _detail(accuracy))


@torch.no_grad()
def gate_vae(pipe, classifier: AttributeClassifier, n: int = 500, seed: int = 102) -> Gate:
    scenes = fresh_scenes(n, seed)
    images = [render(s) for s in scenes]
    processor = pipe.image_processor
    pixels = processor.preprocess(images).to(pipe.vae.device, pipe.vae.dtype)
    decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample
    round_trip = processor.postprocess(decoded, output_type="pil")
    predicted = classifier.predict(round_trip)
    return Gate(
        "vae",
        float(np.mean(all_right(predicted, scenes))),
        THRESHOLDS["vae"],
        _detail(per_attribute(predicted, scenes)),
    )


def gate_clip(clip, n: int = 500, seed: int = 103) -> Gate:
    from ..captioners import ClipRetrievalCaptioner

    captions = [canonical_caption(s) for s in all_scenes()]
    captioner = ClipRetrievalCaptioner(clip, captions)
    scenes = fresh_scenes(n, seed)
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


def gate_text2image(pipe, classifier: AttributeClassifier, seed: int = 104, guidance_scale: float = 4.0) -> Gate:
    """One image per scene of the world (240), from its canonical caption."""
    scenes = all_scenes()
    predicted = classifier.predict(
        text_to_image(pipe, [canonical_caption(s) for s in scenes], seed, guidance_scale=guidance_scale)
    )
    return Gate(
        "text2image",
        float(np.mean(all_right(predicted, scenes))),
        THRESHOLDS["text2image"],
        _detail(per_attribute(predicted, scenes)),
    )


def check(model_dir: Path | None = None) -> list[Gate]:
    """All four gates on the bundled (or given) shapes-world model."""
    from . import MODEL_DIR, load_shapes

    model_dir = Path(model_dir or MODEL_DIR)
    di = load_shapes(device="cpu", model_dir=model_dir)
    classifier = AttributeClassifier.load(model_dir / "classifier")
    return [
        gate_classifier(classifier),
        gate_vae(di.backbone.pipe, classifier),
        gate_clip(di.clip),
        gate_text2image(di.backbone.pipe, classifier),
    ]


# --- analogy accuracy (scores used by `diffinv bench`) ------------------------------------------------------
def centre_error(predicted: dict, scene: Scene) -> float:
    """Pixels between the classifier's reading of the shape's centre and `scene`'s true centre."""
    return math.dist(predicted["centre"], (scene.dx, scene.dy))


def score(predicted: dict, triplet, layout_threshold: float | None = None) -> dict[str, float]:
    """edit: the changed attribute has the target value; preserved: every other attribute is
    B's; correct: both.

    With a centre reading in `predicted` and a `layout_threshold` (world v2): layout: B′'s centre
    lies within the threshold of B's (= the ground truth's) centre; preserved then needs the four
    other attributes *and* the layout, and preserved_attributes is the attributes alone (v1's
    preserved, so v1 and v2 tables read side by side). Without them, v1's three scores.
    """
    truth = triplet.b_prime
    edit = predicted[triplet.family] == getattr(truth, triplet.family)
    attributes = all(predicted[k] == getattr(truth, k) for k in ATTRIBUTES if k != triplet.family)
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
