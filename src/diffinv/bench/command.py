"""`diffinv bench run` and `diffinv bench report`: `run_command(RunOptions, load_model)` and
`report_command(ReportOptions)`.

The command line turns its flags into these options (`cli.bench`) and passes its model loader; this
module does the rest, and a Python caller needs no argparse:
`run_command(RunOptions(out="runs/x", n=10, methods=["difference-inversion"]), load_model)` (docs/bench.md).
Everything that can be wrong (dataset, methods, config changes, batch, embedders, the run
directory, the model's descriptor) is checked before the model loads, which takes minutes for a
real one. The model's defaults come from its card (`diffinv.json`, see `diffinv.model_card`): its
config, and under "bench" the batch size, the embedders and the attribute classifier that scores
shapes-world triplets.

Importing this module, building the options, and `report_command` never load torch. A little
over this project's usual 400 lines: the checks before loading are most of it, and they belong
beside the run they guard.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import InversionConfig, check_sampling_mode
from ..errors import DiffinvError, DiffinvWarning
from ..method import METHODS
from ..model_card import DEFAULT_EDITOR, ModelCard, model_card
from ..model_options import ModelOptions
from ..shapes.world import JITTER, layout_range_of
from .build import config_record, parse_baseline_models
from .datasets import BenchTriplet
from .methods import MethodSpec, expand_methods
from .report import latest_rows, memory_by_method, write_reports
from .results import RESULTS, check_run_record, read_results

if TYPE_CHECKING:
    from ..pipeline import DifferenceInversion

DEFAULT_EMBEDDERS = ["clip", "dinov2=facebook/dinov2-base"]  # for models whose card names none
EMBEDDER_KINDS = ("clip", "dinov2")
BENCH_MODEL = "shapes"  # as `diffinv bench run --model`'s default (cli.flags.BENCH_MODEL)


# --- what the commands read ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What `diffinv bench run` reads, each with the command line's default (`diffinv bench run
    --help` tells more of each); an empty sequence, None or False leaves the choice to the dataset,
    the model's card or the loader, as a flag left out does."""

    out: str | os.PathLike  # --out: the run directory (created; an existing one is resumed)
    dataset: str = "shapes"  # --dataset: shapes, folder, instructpix2pix or a published set (`published.PUBLISHED`)
    data: str | os.PathLike | None = None  # --data: the directory of every dataset but shapes
    n: int | None = None  # --n: triplets (None: shapes 100, instructpix2pix 300, folder and published sets all)
    triplet_seed: int = 0  # --triplet-seed: draws the shapes / InstructPix2Pix triplets
    families: str | None = None  # --families: shapes only, comma-separated (None: all)
    split: str | None = None  # --split: shapes only, seen | unseen | compound | all (None: every edit type)
    examples: int = 1  # --examples: shapes only, example pairs of each triplet's edit (1: its own A, A′)
    methods: Sequence[str] = ()  # --method: specs or sets (empty: `default_methods`)
    base_changes: str = ""  # --set: "field=value,…" for every Difference Inversion method
    embedders: Sequence[str] = ()  # --embedder: NAME[=MODEL] (empty: the card's, else DEFAULT_EMBEDDERS)
    batch: int | None = None  # --batch: triplets fitted together (None: the card's, else 1)
    baseline_models: Sequence[str] = ()  # --baseline-model: NAME=MODEL
    max_examples: int = 12  # --max-examples: grids per method in report.html
    model: str = BENCH_MODEL  # --model: hub id, directory, 'shapes' or 'shapes-editor'
    clip_model: str | None = None  # --clip-model
    captions_from: str | os.PathLike | None = None  # --captions-from (read by the loader)
    offline: bool = False  # --offline
    device: str | None = None  # --device (None: `run.local_device`, this process's GPU or the CPU)
    dtype: str | None = None  # --dtype
    threads: int | None = None  # --threads (read by the loader)
    seed: int = 0  # --seed: triplet i is prepared, fitted and drawn with seed + i
    quiet: bool = False  # --quiet: no progress or loading bars
    memory: str = "default"  # --memory (read by the loader)

    def model_options(self, device: str | None) -> ModelOptions:
        """What the model loader is given: the model flags, on `device` (the one the run chose)."""
        return ModelOptions(
            model=self.model,
            device=device,
            dtype=self.dtype,
            clip_model=self.clip_model,
            captions_from=self.captions_from,
            offline=self.offline,
            threads=self.threads,
            quiet=self.quiet,
            memory=self.memory,
        )


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """What `diffinv bench report` reads, with the command line's defaults."""

    run_dir: str | os.PathLike  # RUN_DIR: a bench run directory
    max_examples: int = 12  # --max-examples: grids per method in report.html
    baseline: str = "difference-inversion"  # --baseline: the method paired differences are taken against


# --- checked before the model loads -------------------------------------------------------------------------
def build_dataset(options: RunOptions) -> tuple[list[BenchTriplet], dict]:
    """The triplets of --dataset, and the dataset's description for run.json."""
    from .datasets import folder_dataset, instructpix2pix_dataset, shapes_dataset
    from .published import PUBLISHED, families_in_turn

    if options.dataset not in ("shapes", "folder", "instructpix2pix", *PUBLISHED):
        raise DiffinvError(
            f"unknown dataset {options.dataset!r}; choose from shapes, folder, instructpix2pix, {', '.join(PUBLISHED)}"
        )
    if options.split and options.dataset != "shapes":
        raise DiffinvError("--split is for the shapes dataset, whose edit types are declared seen or unseen")
    if options.examples != 1 and options.dataset != "shapes":
        raise DiffinvError("--examples is for the shapes dataset, which draws further pairs of each triplet's edit")
    if options.dataset == "shapes":
        if options.data:
            raise DiffinvError(
                "--data is for the folder, instructpix2pix and published datasets (reedit, lorweb, relation252k, "
                "analogist)"
            )
        families = tuple(options.families.split(",")) if options.families else None
        layout_range = layout_range_of(model_card(options.model))
        n, seed = options.n or 100, options.triplet_seed
        triplets = shapes_dataset(n, seed, families, layout_range, options.split, options.examples)
        dataset = {"name": "shapes", "n": n, "seed": seed, "families": options.families or "all"}
        if options.split:  # runs without a split keep their record unchanged (and resumable)
            dataset["split"] = options.split
        if options.examples != 1:  # likewise: absent means one pair per triplet
            dataset["examples"] = options.examples
        if layout_range != JITTER:  # world v2; v1 runs keep their record unchanged (and resumable)
            dataset["layout_range"] = layout_range
        return triplets, dataset
    if not options.data:
        raise DiffinvError(f"--dataset {options.dataset} needs --data DIR")
    if options.dataset in PUBLISHED:  # the field's benchmarks, each in its own published layout
        triplets = families_in_turn(PUBLISHED[options.dataset](options.data), options.n)
        return triplets, {"name": options.dataset, "data": Path(options.data).name, "n": len(triplets)}
    if options.dataset == "folder":
        triplets = folder_dataset(options.data)[: options.n]
        return triplets, {"name": "folder", "data": Path(options.data).name, "n": len(triplets)}
    triplets = instructpix2pix_dataset(options.data, options.n or 300, options.triplet_seed)
    dataset = {
        "name": "instructpix2pix",
        "data": Path(options.data).name,
        "n": len(triplets),
        "seed": options.triplet_seed,
    }
    return triplets, dataset


def default_methods(options: RunOptions) -> list[str]:
    """The full method and B′ = B; on shapes also the oracle caption (its truth is known)."""
    return ["difference-inversion", "copy-b"] + (["oracle-caption"] if options.dataset == "shapes" else [])


def check_methods(
    methods: list[MethodSpec],
    card: ModelCard,
    triplets: list[BenchTriplet],
    models: dict[str, str],
    offline: bool = False,
) -> None:
    """Every text-using method's words found for every triplet, on a shapes world every baseline's
    editor or inpainting model there (models: --baseline-model), and a model given to a baseline on
    a model of its own of the kind it runs (its `check_model`, given None for the default; offline:
    the hub's cache only), so that a missing text, a model still training or a model of the wrong
    kind stops the run before any model loads."""
    from .build import baseline_model, triplet_text

    for method in methods:
        needs_text = method.registered.load().needs_text
        if needs_text is not None:
            for triplet in triplets:
                triplet_text(method.base, needs_text, triplet)
        if not method.is_baseline:
            continue
        role, model = method.registered.model, baseline_model(method.base, card, models)
        if role in ("editor", "inpainting") and model is None and card.world:
            # the hub's default would not fit a shapes world
            raise DiffinvError(
                f"{method.spec} needs this world's {role}, which is not trained yet "
                f"(diffinv shapes train --out DIR --stage {role})"
            )
        named = card.path(card.bench[role]) if role in card.bench else None
        if named is not None and model == str(named) and not named.is_dir():
            raise DiffinvError(f"{method.spec}: the model card names {card.bench[role]!r}, which is missing")
        check_model = getattr(method.registered.load(), "check_model", None)
        if check_model is not None:  # a baseline on a model of its own: its kind (and what it needs installed)
            check_model(model, offline)


def check_examples(methods: list[MethodSpec], examples: int) -> None:
    """--examples K > 1 only for methods that take several example pairs (`method.takes_examples`),
    refused in one line before any model loads."""
    from ..method import takes_examples

    if examples == 1:
        return
    unable = [method.spec for method in methods if not takes_examples(method.registered.load())]
    if unable:
        able = [name for name, entry in METHODS.items() if takes_examples(entry.load())]
        raise DiffinvError(
            f"--examples {examples} is not for {', '.join(unable)}: one example pair (A, A′) only; "
            f"methods that take several: {', '.join(able)}"
        )


def editor_card(methods: list[MethodSpec], card: ModelCard, models: dict[str, str]) -> ModelCard | None:
    """The card of the instruction editor the `on-editor` methods run on (None when none does):
    --baseline-model instructpix2pix=MODEL, else the card's editor, else InstructPix2Pix's
    published model — except on a shapes world, whose editor must be its own."""
    from .build import baseline_model

    if not any(method.on_editor for method in methods):
        return None
    source = baseline_model("instructpix2pix", card, models)
    if source is None and card.world:
        raise DiffinvError(
            "on-editor needs this world's editor, which is not trained yet "
            "(diffinv shapes train --out DIR --stage editor)"
        )
    return model_card(source or DEFAULT_EDITOR)


def build_methods(
    options: RunOptions, card: ModelCard, models: dict[str, str] | None = None
) -> tuple[list[MethodSpec], InversionConfig, ModelCard | None, dict]:
    """The methods of --method (or the defaults), the base config (the model's defaults with the
    --set changes), the card of the editor the `on-editor` methods run on (`editor_card`; models:
    --baseline-model) and each method's resolved config by spec (`build.method_config`; None for
    copy-b). A Difference Inversion config is resolved with its model's budget for the start of D̃
    it chooses and checked against the sampling modes its model can draw in; a baseline's from its
    published values, the card's budget and the spec's changes — so that nothing that cannot run
    gets past this point."""
    from .build import method_config
    from .methods import parse_changes

    methods = expand_methods(list(options.methods) or default_methods(options))
    set_changes = parse_changes(options.base_changes)
    base_config = card.config_for(changes=set_changes)
    editor = editor_card(methods, card, models or {})
    editor_config = editor.config_for() if editor is not None else None
    editor_budgets = editor.init_budgets if editor is not None else None
    configs = {}
    for method in methods:
        config = method_config(method, base_config, card, editor_config, editor_budgets, explicit=set(set_changes))
        model, is_editor = (editor, True) if method.on_editor else (card, card.is_editor())
        if isinstance(config, InversionConfig) and is_editor is not None:
            try:
                check_sampling_mode(config.sampling_mode, model.name, is_editor)
            except DiffinvError as error:
                raise DiffinvError(f"{method.spec}: {error}") from None
        configs[method.spec] = config
    return methods, base_config, editor, configs


def batch_size(options: RunOptions, card: ModelCard) -> int:
    """--batch, or the model card's bench batch (1 without one: memory)."""
    batch = options.batch if options.batch is not None else card.bench.get("batch", 1)
    if batch < 1:
        raise DiffinvError(f"--batch must be at least 1, got {batch}")
    return batch


def embedder_specs(options: RunOptions, card: ModelCard) -> list[tuple[str, str]]:
    """(name, model) per --embedder (default: the card's, else CLIP and DINOv2-base); a DINOv2
    directory that does not exist is reported here rather than after the model has loaded."""
    specs = options.embedders or card.bench.get("embedders") or DEFAULT_EMBEDDERS
    parsed = []
    for spec in specs:
        name, _, model_id = spec.partition("=")
        if name not in EMBEDDER_KINDS or (name == "dinov2" and not model_id):
            raise DiffinvError(f"bad --embedder {spec!r}: use clip, clip=MODEL or dinov2=MODEL")
        if name == "dinov2":
            from .metrics import check_dinov2_source

            check_dinov2_source(model_id)
        parsed.append((name, model_id))
    return parsed


def classifier_path(card: ModelCard) -> Path | None:
    """The attribute classifier the card names (scores shapes-world triplets exactly), if any."""
    name = card.bench.get("classifier")
    if not name:
        return None
    path = card.path(name)
    if not path.is_dir():
        raise DiffinvError(f"{path}: the classifier named by {card.name}'s diffinv.json is missing")
    return path


def prepare_run_dir(
    options: RunOptions,
    dataset: dict,
    methods: list[MethodSpec],
    base_config: InversionConfig,
    configs: dict | None = None,
) -> Path:
    """--out created (or resumed: it must hold the same run, each method with the same config), with
    run.json written: the dataset, the model, the methods, the base config, the seed and each
    method's full resolved config (configs: by spec, `build_methods`'; None: not recorded)."""
    run_dir = Path(options.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise DiffinvError(f"{run_dir}: exists and is not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "dataset": dataset,
        "model": options.model,
        "methods": [m.spec for m in methods],
        "base_config": json.loads(base_config.to_json()),
        "seed": options.seed,
    }
    if configs is not None:
        record["configs"] = {method.spec: config_record(configs[method.spec]) for method in methods}
    check_run_record(run_dir, record)
    return run_dir


# --- after the model has loaded ---------------------------------------------------------------------------
def make_embedders(specs: list[tuple[str, str]], di) -> list:
    """The embedders of `specs`, on the model's device (`clip` alone: the model's own CLIP)."""
    from ..clip_space import ClipSpace
    from .metrics import ClipEmbedder, Dinov2Embedder

    embedders = []
    for name, model_id in specs:
        if name == "clip":
            clip = ClipSpace.from_pretrained(model_id, di.clip.device, di.clip.model.dtype) if model_id else di.clip
            embedders.append(ClipEmbedder(clip))
        else:
            embedders.append(Dinov2Embedder.from_pretrained(model_id, di.clip.device))
    return embedders


def load_classifier(path: Path | None):
    if path is None:
        return None
    from ..shapes.classifier import AttributeClassifier

    return AttributeClassifier.load(path)


@contextmanager
def captioner_kept_loaded(di):
    """A BLIP-2 captioner stays loaded for the whole run (it frees itself after each call
    otherwise, and would be loaded again for every fit); afterwards it is as it was."""
    from ..captioners import Blip2Captioner

    captioner = getattr(di, "captioner", None)
    # In low memory mode (it makes room before loading) BLIP-2 must not stay beside the fit's models.
    if not isinstance(captioner, Blip2Captioner) or captioner.make_room is not None:
        yield
        return
    previous, captioner.keep_loaded = captioner.keep_loaded, True
    try:
        yield
    finally:
        captioner.keep_loaded = previous
        if not previous:
            captioner.release()


# --- the commands ------------------------------------------------------------------------------------------
def check_learned_split(card: ModelCard, editor: ModelCard | None) -> None:
    """Figures by split mean something only where each model that runs records the edit types its
    learned analogy component trained on (`ModelCard.learned_split`): refuse --split otherwise."""
    for model in (card, editor):
        if model is not None and model.learned_split is None:
            raise DiffinvError(
                f"--split needs {model.name!r} to record which edit types its learned parts trained on "
                '("learned_split" in its diffinv.json); without it no figure on unseen edits can be claimed'
            )
        if model is not None and model.learned_split == "all":
            warnings.warn(
                f"{model.name!r} learned from every edit type (learned_split 'all'): its 'unseen' edits are seen",
                DiffinvWarning,
                stacklevel=2,
            )


def run_command(options: RunOptions, load_model: Callable[[ModelOptions], DifferenceInversion]) -> None:
    """`diffinv bench run`: check everything, load the model with `load_model(options.model_options(device))`
    (a `DifferenceInversion`; the command line's is `cli.load.load_model`), run this process's share of the
    work, write the summaries."""
    from ..checks import hub_offline
    from .build import EditorModel, MethodBuilder
    from .run import BenchRunner, Shard, local_device

    triplets, dataset = build_dataset(options)
    card = model_card(options.model)
    baseline_models = parse_baseline_models(list(options.baseline_models))
    methods, base_config, editor, configs = build_methods(options, card, baseline_models)
    check_methods(methods, card, triplets, baseline_models, options.offline or hub_offline())
    check_examples(methods, options.examples)
    if options.split:
        check_learned_split(card, editor)
    batch = batch_size(options, card)
    specs = embedder_specs(options, card)
    classifier = classifier_path(card)
    run_dir = prepare_run_dir(options, dataset, methods, base_config, configs)

    shard = Shard.from_environment()
    device = options.device or local_device()
    di = load_model(options.model_options(device))
    editor_model = None
    if editor is not None:
        from ..pipeline import DifferenceInversion

        def load_editor():
            # The bench model's captioner serves both (the same captions of the same images); an editor
            # whose card names no CLIP shares its base model's text encoder, and so --clip-model.
            return DifferenceInversion.from_pretrained(
                editor.source, device=device, dtype=options.dtype,
                clip_model=None if editor.clip else options.clip_model, captioner=di.captioner,
                offline=options.offline or None,
            )  # fmt: skip

        editor_model = EditorModel(editor.config_for(), load_editor)
    builder = MethodBuilder(
        di,
        base_config,
        card,
        baseline_models,
        device,
        options.dtype,
        options.offline or hub_offline(),
        editor_model,
        configs,
    )
    runner = BenchRunner(
        di,
        run_dir,
        base_config,
        make_embedders(specs, di),
        load_classifier(classifier),
        batch,
        options.seed,
        progress=not options.quiet,
        builder=builder,
    )
    with captioner_kept_loaded(di):
        count = runner.run(methods, triplets, shard)
    paths = write_reports(run_dir, options.max_examples)
    part = f" (shard {shard.rank + 1} of {shard.world_size})" if shard.world_size > 1 else ""
    print(f"ran {count} (method, triplet) pairs{part}; wrote {paths['md']}, {paths['csv']} and {paths['html']}")
    print(memory_by_method(latest_rows(read_results(run_dir))), end="")


def report_command(options: ReportOptions) -> None:
    """`diffinv bench report RUN_DIR`: summary.md, summary.csv and report.html again."""
    if not (Path(options.run_dir) / RESULTS).exists():
        raise DiffinvError(f"{options.run_dir}: no results.jsonl (not a bench run directory)")
    paths = write_reports(options.run_dir, options.max_examples, options.baseline)
    print(f"wrote {paths['md']}, {paths['csv']} and {paths['html']}")
