"""The paper's baselines as `diffinv bench` methods: which model each one runs on, and what it is told.

    sdedit           text-using: img2img from B with the true description of B′ (`caption_b_prime`)
    instructpix2pix  text-using: B edited by the true instruction (`instruction`)
    visii            an instruction learned from (A, A′) on the InstructPix2Pix model
    analogist        text-using: A | A′ over B | ? inpainted, prompted with the description of B′
                     (the official code asks GPT-4V for it; here the dataset's text stands in)
    dia              Diffusion Image Analogies on the text-to-image model
    oracle-instruction  reference: InstructPix2Pix told the true instruction (the shapes world's
                     editor with its canonical instruction) — what a perfect reading of A → A′
                     in words would give with that editor

Models: SDEdit and DIA run on the bench's own text-to-image model (the same pipeline object, not
a second copy). InstructPix2Pix and VISII run on an InstructPix2Pix model, Analogist on an
inpainting model: a model card names the world's own (`"bench": {"editor": DIR, "inpainting":
DIR}`, world v2), otherwise each class's published default hub model. `--baseline-model
NAME=MODEL` overrides either. A card may also give a baseline's sampling budget
(`"bench": {"baselines": {"sdedit": {"steps": 20}}}`), as it gives Difference Inversion's; a
method spec's own changes (`sdedit:strength=0.6`) come last.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import DiffinvError


@dataclass(frozen=True)
class BaselineSpec:
    class_name: str  # in `diffinv.baselines`
    model: str  # "main" (the bench's model), "editor" or "inpainting"
    text: str | None = None  # the BenchTriplet field a text-using baseline is given
    keyword: str | None = None  # the `analogy` keyword that text goes to
    settings_of: str | None = None  # another method whose card budget and model this one shares

    def budget_key(self, name: str) -> str:
        return self.settings_of or name


BASELINE_METHODS: dict[str, BaselineSpec] = {
    "sdedit": BaselineSpec("SDEdit", "main", "caption_b_prime", "prompt"),
    "instructpix2pix": BaselineSpec("InstructPix2Pix", "editor", "instruction", "instruction"),
    "visii": BaselineSpec("Visii", "editor"),
    "analogist": BaselineSpec("Analogist", "inpainting", "caption_b_prime", "prompt"),
    "dia": BaselineSpec("Dia", "main"),
    # a reference rather than a baseline: the editor told exactly what to do (on the shapes world,
    # its canonical instruction); InstructPix2Pix's settings and budget
    "oracle-instruction": BaselineSpec("InstructPix2Pix", "editor", "instruction", "instruction", "instructpix2pix"),
}


def baseline_class(name: str):
    """The class of a baseline method (imports torch and diffusers)."""
    from .. import baselines

    spec = BASELINE_METHODS[name]
    cls = getattr(baselines, spec.class_name, None)
    if cls is None:
        raise DiffinvError(f"the baseline {name!r} is not available in this version of diffinv")
    return cls


def config_class(name: str):
    """The frozen config dataclass of a baseline: the type of its `config` constructor argument."""
    import inspect
    import typing

    hints = typing.get_type_hints(baseline_class(name).__init__)
    config_type = hints.get("config")
    for candidate in typing.get_args(config_type) or (config_type,):
        if inspect.isclass(candidate) and dataclasses.is_dataclass(candidate):
            return candidate
    raise DiffinvError(f"the baseline {name!r} has no config class")


def baseline_config(name: str, card_changes: dict, changes: dict):
    """The baseline's published config with the card's budget and then the spec's `changes`;
    an unknown field is refused in one line."""
    cls = config_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((set(card_changes) | set(changes)) - known)
    if unknown:
        raise DiffinvError(f"{name} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(known))}")
    try:
        return cls(**{**card_changes, **changes})
    except (TypeError, ValueError) as error:
        raise DiffinvError(f"{name}: {error}") from None


def text_inputs(name: str, triplet) -> dict:
    """The keyword arguments a baseline's `analogy` gets from a triplet: the dataset's text for the
    text-using ones; `DiffinvError` when the dataset has none."""
    spec = BASELINE_METHODS[name]
    if spec.text is None:
        return {}
    text = getattr(triplet, spec.text)
    if not text:
        raise DiffinvError(
            f"{name} is text-using and needs each triplet's {spec.text.replace('_', ' ')} "
            f"(shapes and InstructPix2Pix data have it; a folder dataset's captions.txt may give "
            f"'{'b_prime' if spec.text == 'caption_b_prime' else 'instruction'}: …')"
        )
    return {spec.keyword: text}


def card_budget(card, name: str) -> dict:
    """The settings a model card gives a baseline (`"bench": {"baselines": {NAME: {…}}}`)."""
    return dict(card.bench.get("baselines", {}).get(BASELINE_METHODS[name].budget_key(name), {}))


def parse_baseline_models(items: list[str] | None) -> dict[str, str]:
    """`--baseline-model NAME=MODEL` items → {name: model}."""
    models = {}
    for item in items or []:
        name, sep, model = item.partition("=")
        if not sep or name not in BASELINE_METHODS or not model:
            raise DiffinvError(
                f"--baseline-model takes NAME=MODEL with NAME one of {', '.join(BASELINE_METHODS)}, got {item!r}"
            )
        models[name] = model
    return models


def baseline_model(name: str, card, models: dict[str, str]) -> str | None:
    """The model baseline `name` runs on: given in `models` (--baseline-model), else the card's
    editor / inpainting directory, else None (the class's published default; for "main"
    baselines: the bench's own pipeline)."""
    if name in models:
        return models[name]
    shared = BASELINE_METHODS[name].settings_of
    if shared in models:
        return models[shared]
    role = BASELINE_METHODS[name].model
    if role in ("editor", "inpainting") and role in card.bench:
        return str(card.path(card.bench[role]))
    return None


class BaselineLoader:
    """Loads each baseline once, on the bench's device, from the card's or the given models.

    di: the bench's `DifferenceInversion` (its pipeline serves SDEdit and DIA; its CLIP is VISII's
    on a world whose card names an editor). card: the model card. models: `--baseline-model`.
    """

    def __init__(self, di, card, models: dict[str, str], device, dtype, offline: bool):
        self.di, self.card, self.models = di, card, models
        self.device, self.dtype, self.offline = device, dtype, offline
        self._loaded: dict[tuple, object] = {}

    def model_for(self, name: str) -> str | None:
        return baseline_model(name, self.card, self.models)

    def __call__(self, name: str, changes: dict):
        key = (name, tuple(sorted(changes.items())))
        if key not in self._loaded:
            card_changes = card_budget(self.card, name)
            config = baseline_config(name, card_changes, changes)
            self._loaded[key] = self._load(name, config)
        return self._loaded[key]

    def _load(self, name: str, config):
        cls, model = baseline_class(name), self.model_for(name)
        if BASELINE_METHODS[name].model == "main" and model is None:
            return cls(self.di.backbone.pipe, config=config)
        kwargs = {}
        if name == "visii" and self.card.directory is not None and "editor" in self.card.bench:
            # a world's editor shares the world's text encoder: its CLIP is the CLIP of both losses
            clip_dir = str(self.card.path("clip"))
            kwargs = {"clip_model": clip_dir, "pez_clip_model": clip_dir}
        if model is None:
            return cls.from_pretrained(
                device=self.device, dtype=self.dtype, offline=self.offline, config=config, **kwargs
            )
        return cls.from_pretrained(
            model, device=self.device, dtype=self.dtype, offline=self.offline, config=config, **kwargs
        )
