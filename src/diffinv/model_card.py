"""What diffinv knows about a model before loading it: its name, its defaults, its captioner.

A model directory may carry a small descriptor file, `diffinv.json`, beside `model_index.json`:

    {
      "format": "diffinv.model/1",
      "name": "shapes",                                   # recorded in token files as model_id
      "config": {"steps": 50, "learning_rate": 0.01},     # InversionConfig fields that differ
      "init_budgets": {"zeros": {"steps": 200}},          # the budget when D̃ starts otherwise
      "captioner": {"kind": "clip-retrieval", "captions": "captions.txt"},
      "clip": "clip",                                     # the CLIPModel directory (default: clip/)
      "bench": {"batch": 8, "embedders": ["clip"], "classifier": "classifier"},
      "world": {"version": 2, "layout_range": 5.0},       # shapes worlds only: which version
      "learned_split": "seen"                             # the edit types its encoder trained on
    }

Every key but "format" is optional. Paths are relative to the directory, so a world that is
retrained or moved carries its defaults with it. A model without the file (any hub id, any
plain Stable Diffusion directory) gets the paper's defaults and BLIP-2. Reading a descriptor
needs neither torch nor the weights, so the command line checks everything against a model's
defaults before loading it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import BUDGET_FIELDS, INITS, InversionConfig, check_sampling_mode, resolve_config
from .errors import DiffinvError

DESCRIPTOR = "diffinv.json"
FORMAT = "diffinv.model/1"
# names that need no path: the shapes world's text-to-image model and its instruction editor
BUNDLED = {
    "shapes": Path(__file__).parent / "shapes" / "model",
    "shapes-editor": Path(__file__).parent / "shapes" / "model" / "editor",
}
CAPTIONER_KINDS = ("blip2", "clip-retrieval")
EDITOR_PIPELINE = "StableDiffusionInstructPix2PixPipeline"  # an instruction editor: `backbones.editor`
DEFAULT_EDITOR = "timbrooks/instruct-pix2pix"  # InstructPix2Pix's published model


@dataclass(frozen=True)
class ModelCard:
    """A model's identity and defaults.

    source: what `from_pretrained` is given (a hub id or a directory).
    name: the model id recorded in token files (the source unless the descriptor names it).
    directory: the local directory, or None for a hub id.
    config: InversionConfig fields that differ from the paper's defaults.
    init_budgets: per start of D̃ other than the config's (`init`), the budget fields
        (`config.BUDGET_FIELDS`) that replace the config's for that start, e.g. {"zeros":
        {"steps": 200}} for a model whose default takes D̃ from an encoder with no fit.
    captioner: {"kind": "blip2"} (default) or {"kind": "clip-retrieval", "captions": FILE}.
    bench: defaults of `diffinv bench` for this model ("batch", "embedders", "classifier").
    world: for a synthetic world, which version of it the model learned; only that world reads
        it (the shapes world: `shapes.world.layout_range_of`).
    learned_split: which edit types the model's learned analogy component (a DIFF-token encoder)
        trained on — "seen" (the half a world declares seen), "all", or "none" (nothing learned
        across pairs); None: not recorded, so no figure on unseen edits can be claimed for it.
    clip: the directory of the CLIP that matches the model's text encoder, relative to the
        model's (None: `clip/` if there is one, else the published CLIP for its width).
    """

    source: str
    name: str
    directory: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    init_budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    captioner: dict[str, Any] = field(default_factory=lambda: {"kind": "blip2"})
    bench: dict[str, Any] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=dict)
    clip: str | None = None
    learned_split: str | None = None

    @property
    def has_descriptor(self) -> bool:
        return self.directory is not None and (self.directory / DESCRIPTOR).is_file()

    def default_config(self, editor: bool | None = None) -> InversionConfig:
        """The paper's defaults with this model's changes applied. An instruction editor
        (InstructPix2Pix) draws in its only sampling mode, "editor", unless the descriptor says
        otherwise. editor: whether the model is one (None: as `is_editor` reads it here)."""
        config = InversionConfig().replace(**self.config)
        editor = self.is_editor() if editor is None else editor
        if editor and "sampling_mode" not in self.config:
            config = config.replace(sampling_mode="editor")
        return config

    def config_for(
        self,
        preset: str | None = None,
        changes: dict[str, Any] | None = None,
        explicit: frozenset[str] | set[str] = frozenset(),
        editor: bool | None = None,
    ) -> InversionConfig:
        """The configuration of one run on this model: its defaults, the method of `preset`, the
        user's `changes`, and the model's budget for the start of D̃ they choose (`init_budgets`;
        `explicit`: fields the user set elsewhere, which no budget replaces). Refuses a sampling
        mode the model cannot draw in, where the model's kind can be read here (editor: whether
        it is an instruction editor; None: as `is_editor` reads it)."""
        editor = self.is_editor() if editor is None else editor
        config = resolve_config(
            self.default_config(editor),
            preset_name=preset,
            changes=changes,
            init_budgets=self.init_budgets,
            explicit=explicit,
        )
        if editor is not None:
            check_sampling_mode(config.sampling_mode, self.name, editor)
        return config

    def is_editor(self) -> bool | None:
        """Whether the model is an instruction editor, by the pipeline class its `model_index.json`
        names; None where that file cannot be read here (a hub model not in the cache)."""
        pipeline_class = self.pipeline_class()
        return None if pipeline_class is None else pipeline_class == EDITOR_PIPELINE

    def pipeline_class(self) -> str | None:
        """The diffusers pipeline class the model's `model_index.json` names, read from the directory
        or the hub cache (never the network); None where it cannot be read here."""
        try:
            if self.directory is not None:
                index = self.directory / "model_index.json"
            else:
                index = hub_cache_file(self.source, "model_index.json")
            return json.loads(index.read_text(encoding="utf-8")).get("_class_name") if index else None
        except (OSError, ValueError, AttributeError):
            return None

    def needs_download(self) -> bool:
        """Whether loading the model would download it: a hub id whose `model_index.json` (what
        `pipeline_class` reads) is not in the hub cache. Never the network. A malformed hub id
        counts as no download: the loader reports it, in its own words."""
        if self.directory is not None:
            return False
        try:
            return hub_cache_file(self.source, "model_index.json") is None
        except Exception:
            return False

    @property
    def captions_with_blip2(self) -> bool:
        """Whether the model's captioner is BLIP-2 (the default), a hub download, rather than CLIP
        retrieval among the lines of the descriptor's caption file (`caption_candidates`)."""
        return self.captioner.get("kind") != "clip-retrieval"

    def path(self, relative: str) -> Path:
        """A file named by the descriptor, inside the model directory."""
        if self.directory is None:
            raise DiffinvError(f"{self.name}: a hub model has no local files")
        return self.directory / relative

    def native_resolution(self) -> int | None:
        """The model's native image side, from the directory's UNet and VAE configs (None for a
        hub id or an unreadable config: then the loaded model tells)."""
        try:
            unet = json.loads(self.path("unet/config.json").read_text(encoding="utf-8"))
            vae = json.loads(self.path("vae/config.json").read_text(encoding="utf-8"))
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (DiffinvError, OSError, ValueError, KeyError, TypeError):
            return None

    def caption_candidates(self) -> list[str] | None:
        """The candidate captions of a clip-retrieval captioner (None for BLIP-2)."""
        if self.captions_with_blip2:
            return None
        return read_caption_lines(self.path(self.captioner["captions"]))


def hub_cache_file(repo: str, filename: str) -> Path | None:
    """`filename` of the hub model `repo` in the local hub cache, or None where it is not there; never
    the network. A malformed hub id raises `ValueError` (the hub's `HFValidationError`)."""
    from huggingface_hub import try_to_load_from_cache  # here: reading a descriptor needs no hub library

    cached = try_to_load_from_cache(repo, filename)
    return Path(cached) if isinstance(cached, str) else None


def read_caption_lines(path: str | os.PathLike) -> list[str]:
    """Candidate captions from a text file: one per line, blank lines skipped.

    Also reads a folder dataset's `captions.txt` (`a: …`, `a_prime: …`, `b: …`, `b_prime: …`):
    the text after those keys is used, other `key:` lines (`family: …`) are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DiffinvError(f"{path}: no such caption file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DiffinvError(f"{path}: not a UTF-8 text file of captions") from None
    lines = []
    for line in text.splitlines():
        line = line.strip()
        key, colon, rest = line.partition(":")
        if colon and key.strip().isidentifier() and " " not in key.strip():
            if key.strip() not in ("a", "a_prime", "b", "b_prime"):
                continue
            line = rest.strip()
        if line:
            lines.append(line)
    if not lines:
        raise DiffinvError(f"{path}: holds no captions")
    return lines


def looks_like_a_path(name: str) -> bool:
    """True for names no hub id can have: absolute or relative paths, several slashes."""
    return (
        name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
    )


def model_card(model: str | os.PathLike) -> ModelCard:
    """The card of `model`: a bundled name ("shapes"), a local directory or a hub id.

    Cheap and torch-free; raises `DiffinvError` for a damaged descriptor. A missing directory is
    not detected here (a hub id looks the same) but by the loader.
    """
    source = str(model)
    directory = BUNDLED.get(source) or (Path(source) if os.path.isdir(source) else None)
    if directory is None:
        if looks_like_a_path(source):
            raise DiffinvError(f"{source}: no such model directory (and not a hub id of the form owner/name)")
        return ModelCard(source=source, name=source)
    descriptor = directory / DESCRIPTOR
    if not descriptor.is_file():
        return ModelCard(source=str(directory), name=source, directory=directory)
    try:
        values = json.loads(descriptor.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DiffinvError(f"{descriptor}: not valid JSON ({error})") from None
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise DiffinvError(f"{descriptor}: not a diffinv model descriptor (format {FORMAT!r})")
    card = ModelCard(
        source=str(directory),
        name=values.get("name", source),
        directory=directory,
        config=dict(values.get("config", {})),
        init_budgets=_init_budgets(values.get("init_budgets", {}), descriptor),
        captioner=dict(values.get("captioner", {"kind": "blip2"})),
        bench=dict(values.get("bench", {})),
        world=dict(values.get("world", {})),
        clip=values.get("clip"),
        learned_split=values.get("learned_split"),
    )
    try:
        for init in (None, *card.init_budgets):  # the defaults, and the run from each start with a budget
            resolve_config(
                card.default_config(), changes={} if init is None else {"init": init}, init_budgets=card.init_budgets
            )
    except DiffinvError as error:
        raise DiffinvError(f"{descriptor}: {error}") from None
    if card.captioner.get("kind") not in CAPTIONER_KINDS:
        raise DiffinvError(f"{descriptor}: captioner kind must be one of {CAPTIONER_KINDS}")
    if card.captioner["kind"] == "clip-retrieval" and not card.path(card.captioner.get("captions", "")).is_file():
        raise DiffinvError(f"{descriptor}: the captioner's caption file is missing")
    if card.clip is not None and not (isinstance(card.clip, str) and card.path(card.clip).is_dir()):
        raise DiffinvError(f"{descriptor}: the CLIP directory it names ({card.clip!r}) is missing")
    return card


def _init_budgets(values: Any, descriptor: Path) -> dict[str, dict[str, Any]]:
    """The descriptor's "init_budgets", checked: starts of D̃ from `config.INITS`, budget fields only."""
    if not isinstance(values, dict) or not all(isinstance(budget, dict) for budget in values.values()):
        raise DiffinvError(f"{descriptor}: init_budgets must map a start of D̃ to budget fields")
    for init, budget in values.items():
        if init not in INITS:
            raise DiffinvError(f"{descriptor}: init_budgets names {init!r}, not one of {INITS}")
        if not set(budget) <= set(BUDGET_FIELDS):
            raise DiffinvError(
                f"{descriptor}: init_budgets[{init!r}] may set only budget fields ({', '.join(BUDGET_FIELDS)})"
            )
    return {init: dict(budget) for init, budget in values.items()}


def write_descriptor(directory: str | os.PathLike, **values: Any) -> Path:
    """Write `diffinv.json` into `directory` (used by `diffinv shapes train`)."""
    path = Path(directory) / DESCRIPTOR
    path.write_text(json.dumps({"format": FORMAT, **values}, indent=1) + "\n", encoding="utf-8")
    return path
