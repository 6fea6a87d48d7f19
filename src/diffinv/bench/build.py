"""A run's methods built through the one registry (`method.METHODS`): each one's config, the model
it runs on, and the words it is told.

Configs. A Difference Inversion method's is an `InversionConfig`: the run's base config (the
model's defaults and `--set`), or for `on-editor` the editor's defaults, with the spec's preset
and changes (`MethodSpec.config`); oracle-caption draws with the base config. A baseline's is its
own config dataclass (`config_class`): its published values, then the model card's budget
(`"bench": {"baselines": {"sdedit": {"steps": 20}}}`), then the spec's changes
(`sdedit:strength=0.6`). copy-b has none. All are resolved before any model loads, and recorded in
run.json (`config_record`).

Models (`Registered.model`). "main": the bench's own model — Difference Inversion and
oracle-caption draw with its `DifferenceInversion`, SDEdit and DIA run on its pipeline (the same
object, not a second copy). "editor": `on-editor` runs on the instruction editor's
`DifferenceInversion`; InstructPix2Pix, VISII and oracle-instruction load an InstructPix2Pix
model. "inpainting": Analogist loads an inpainting model. A model card names the world's own
(`"bench": {"editor": DIR, "inpainting": DIR}`, world v2), otherwise each class's published
default hub model; `--baseline-model NAME=MODEL` overrides either.

Words (`needs_text`). A text-using method is given each triplet's text: the true description of
B′ (`caption_b_prime`: SDEdit, Analogist — the official code asks GPT-4V for it — and
oracle-caption) or the instruction (InstructPix2Pix, and oracle-instruction, the editor told the
true instruction: on the shapes world, the world's canonical one).
"""

from __future__ import annotations

import dataclasses
import json

from ..config import InversionConfig
from ..errors import DiffinvError
from ..method import METHODS, Method, Registered

# Which field of a `BenchTriplet` holds the words a method needs (`Method.needs_text`), and how
# they are described.
TRIPLET_TEXTS = {"b_prime": "caption_b_prime", "instruction": "instruction"}
TEXT_WORDS = {"b_prime": "true description of B′", "instruction": "instruction"}


# --- configs -----------------------------------------------------------------------------------------
def card_budget(card, name: str) -> dict:
    """The settings a model card gives a baseline (`"bench": {"baselines": {NAME: {…}}}`); the
    budget of the method whose settings it shares (`Registered.settings_of`). No card: none."""
    if card is None:
        return {}
    entry = METHODS[name]
    return dict(card.bench.get("baselines", {}).get(entry.settings_of or name, {}))


def baseline_config(name: str, card_changes: dict, changes: dict):
    """The registered method `name`'s own config (its class's `config_class`): published values,
    the card's budget, then the spec's `changes`; an unknown field is refused in one line."""
    config_class = METHODS[name].load().config_class
    if config_class is None:
        if changes:
            raise DiffinvError(f"{name} has no settings to change")
        return None
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted((set(card_changes) | set(changes)) - known)
    if unknown:
        raise DiffinvError(f"{name} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(known))}")
    try:
        return config_class(**{**card_changes, **changes})
    except (TypeError, ValueError) as error:
        raise DiffinvError(f"{name}: {error}") from None


def method_config(
    spec,
    base_config: InversionConfig,
    card=None,
    editor_config: InversionConfig | None = None,
    editor_budgets: dict | None = None,
    explicit: frozenset[str] | set[str] = frozenset(),
):
    """The resolved config of the method of `spec` (a `MethodSpec`): an `InversionConfig` from
    `base_config`, or from `editor_config` on the editor, each with its model's budgets for the
    start of D̃ (the card's `init_budgets`; `editor_budgets`; explicit: the fields of `base_config`
    the user set); a config of its own (`baseline_config`, with `card`'s budget); or None."""
    config_class = spec.registered.load().config_class
    if config_class is InversionConfig:
        if spec.on_editor:
            return spec.config(base_config, editor_config, init_budgets=editor_budgets)
        init_budgets = card.init_budgets if card is not None else None
        return spec.config(base_config, init_budgets=init_budgets, explicit=explicit)
    return baseline_config(spec.base, card_budget(card, spec.base), spec.changes)


def config_record(config) -> dict | None:
    """A method's config as run.json records it: every field, as JSON reads it back (None: no config)."""
    if config is None:
        return None
    return json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True))


# --- models --------------------------------------------------------------------------------------------
def parse_baseline_models(items: list[str] | None) -> dict[str, str]:
    """`--baseline-model NAME=MODEL` items → {name: model}, NAME a registered baseline."""
    names = [name for name, entry in METHODS.items() if entry.kind == "baseline"]
    models = {}
    for item in items or []:
        name, sep, model = item.partition("=")
        if not sep or name not in names or not model:
            raise DiffinvError(f"--baseline-model takes NAME=MODEL with NAME one of {', '.join(names)}, got {item!r}")
        models[name] = model
    return models


def baseline_model(name: str, card, models: dict[str, str]) -> str | None:
    """The model the registered method `name` loads: given in `models` (--baseline-model, its own
    or that of the method whose settings it shares), else the card's editor / inpainting
    directory, else None (the class's published default; for "main" methods: the bench's own)."""
    if name in models:
        return models[name]
    entry = METHODS[name]
    if entry.settings_of in models:
        return models[entry.settings_of]
    if card is not None and entry.model in ("editor", "inpainting") and entry.model in card.bench:
        return str(card.path(card.bench[entry.model]))
    return None


class EditorModel:
    """The instruction editor the `on-editor` methods run on: its default config now (`config`),
    its `DifferenceInversion` on first call (`load()`, which is called only if a method needs it)."""

    def __init__(self, config: InversionConfig, load):
        self.config, self._load, self._di = config, load, None

    def __call__(self):
        if self._di is None:
            self._di = self._load()
        return self._di


# --- words -----------------------------------------------------------------------------------------------
def triplet_text(name: str, needs_text: str, triplet) -> str:
    """The words of `triplet` a method (`name`) needs (`needs_text`, see `TRIPLET_TEXTS`), or a
    `DiffinvError` when the dataset has none for it."""
    text = getattr(triplet, TRIPLET_TEXTS[needs_text])
    if not text:
        raise DiffinvError(
            f"{name} needs each triplet's {TEXT_WORDS[needs_text]}, and {triplet.id} has none (shapes and "
            f"InstructPix2Pix data have it; a folder dataset's captions.txt may give '{needs_text}: …')"
        )
    return text


# --- the builder -------------------------------------------------------------------------------------------
class MethodBuilder:
    """Builds each method of a run once (by spec), through the registry, on the run's models.

    di: the bench's `DifferenceInversion` ("main"). base_config: the run's base config.
    card: the bench model's card (the models and budgets of the baselines; None: published ones).
    models: --baseline-model {name: model}. device, dtype, offline: where the baselines load.
    editor: `EditorModel`, for the methods on the instruction editor (`on-editor`).
    configs: each method's resolved config by spec (`command.build_methods`); a spec not in it is
        resolved here, from `base_config` and the editor's defaults.
    """

    def __init__(
        self,
        di,
        base_config: InversionConfig,
        card=None,
        models: dict[str, str] | None = None,
        device=None,
        dtype=None,
        offline: bool = False,
        editor: EditorModel | None = None,
        configs: dict | None = None,
    ):
        self.di, self.base_config, self.card, self.models = di, base_config, card, models or {}
        self.device, self.dtype, self.offline = device, dtype, offline
        self.editor, self.configs = editor, configs or {}
        self._built: dict[str, Method] = {}

    def config(self, spec):
        """The method's resolved config (an invalid change raises here, before any work)."""
        if spec.spec not in self.configs:
            editor_config = self.editor.config if self.editor is not None else None
            self.configs[spec.spec] = method_config(spec, self.base_config, self.card, editor_config)
        return self.configs[spec.spec]

    def check(self, spec, triplets: list) -> None:
        """The method's config resolves and every triplet has the words it needs."""
        self.config(spec)
        needs_text = spec.registered.load().needs_text
        if needs_text is not None:
            for triplet in triplets:
                triplet_text(spec.base, needs_text, triplet)

    def text(self, spec, method: Method, triplet) -> dict:
        """`{"text": …}` for a method that needs words, else {}: what `analogy` is given beside the images."""
        return {"text": triplet_text(spec.base, method.needs_text, triplet)} if method.needs_text else {}

    def __call__(self, spec) -> Method:
        """The method of `spec`, built on first call (loading its model, if it has one of its own)."""
        if spec.spec not in self._built:
            entry = spec.registered
            self._built[spec.spec] = entry.load().build(_ModelsOf(self, entry), self.config(spec))
        return self._built[spec.spec]

    def model_for(self, name: str) -> str | None:
        return baseline_model(name, self.card, self.models)

    def load(self, entry: Registered, method_class: type, config) -> Method:
        """A baseline on its model: the bench's own pipeline for a "main" one given no other model,
        else `method_class.from_pretrained` on the chosen model (None: the class's default)."""
        model = self.model_for(entry.name)
        if entry.model == "main" and model is None:
            return method_class(self.di.backbone.pipe, config=config)
        kwargs = {}
        card = self.card
        if entry.name == "visii" and card is not None and card.directory is not None and "editor" in card.bench:
            # a world's editor shares the world's text encoder: its CLIP is the CLIP of both losses
            clip_dir = str(card.path("clip"))
            kwargs = {"clip_model": clip_dir, "pez_clip_model": clip_dir}
        where = dict(device=self.device, dtype=self.dtype, offline=self.offline, config=config, **kwargs)
        return method_class.from_pretrained(**where) if model is None else method_class.from_pretrained(model, **where)


class _ModelsOf:
    """`method.Models` for one registered method: the builder's models, chosen by its `model`."""

    def __init__(self, builder: MethodBuilder, entry: Registered):
        self.builder, self.entry = builder, entry

    def difference_inversion(self):
        if self.entry.model != "editor":
            return self.builder.di
        if self.builder.editor is None:
            raise DiffinvError(f"{self.entry.name} runs on an instruction editor, and none was given")
        return self.builder.editor()

    def load(self, method_class: type, config) -> Method:
        return self.builder.load(self.entry, method_class, config)
