"""The `diffinv` command: fit, apply, analogy, export, defaults, shapes, bench, demo.

Every argument, every output path and every hyperparameter is checked before torch or a model
loads; a problem prints one line on stderr and exits with status 2. Outputs never replace an
existing file without --overwrite, never an input, and are written under temporary names and
renamed into place at the end. An unexpected failure prints one line and exits with 1
(`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from . import __version__, checks
from .checks import IMAGE_SUFFIXES, TOKEN_SUFFIX, Outputs
from .config import (
    CLIP_LOSS_SPACES,
    INITS,
    PRESETS,
    PROMPT_SOURCES,
    SAMPLING_MODES,
    InversionConfig,
    check_sampling_mode,
)
from .errors import DiffinvError, DiffinvWarning, Interrupted  # torch-free: `--help` and the checks stay instant

# The bundled offline world's instruction editor, with the DIFF tokens from its encoder: its analogies
# come out right nearly three times as often as those of the world's text-to-image model ("shapes"),
# in a quarter of the time (75 % against 27 %, 0.39 s against 1.70 s per triplet; docs/results.md §7).
# Real use: a Stable Diffusion or InstructPix2Pix hub id or directory.
DEFAULT_MODEL = "shapes-editor"
# `diffinv bench run` defaults to the world's text-to-image model, whose card names every model the
# harness needs (the editor for on-editor, the inpainting model, the classifier).
BENCH_MODEL = "shapes"
PAPER = InversionConfig()

# (flag, InversionConfig field, type, help). Every flag defaults to None = "the model's default", which
# is the paper's value unless the model's diffinv.json changes it (`diffinv defaults --model M`).
CONFIG_FLAGS = [
    ("--n-tokens", "n_tokens", int, "number of DIFF tokens n"),
    ("--alpha", "alpha", float, "slerp ratio: 0 = image delta only, 1 = text delta only"),
    ("--lambda-tc", "lambda_tc", float, "weight of the token consistency loss"),
    ("--lambda-clip", "lambda_clip", float, "weight of the CLIP delta loss"),
    ("--init", "init", str, "initial DIFF tokens"),
    ("--lr", "learning_rate", float, "AdamW learning rate"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay on the DIFF tokens (pulls them towards 0)"),
    ("--clip-loss-space", "clip_loss_space", str, "encode D̃ with CLIP's text tower, or average the tokens"),
    ("--prompt-source", "prompt_source", str, "prompts of A, A′ and B: PEZ hard prompts or the captions"),
    ("--pez-steps", "pez_steps", int, "PEZ optimisation steps per image"),
    ("--pez-prompt-len", "pez_prompt_len", int, "tokens in a PEZ prompt"),
    ("--resolution", "resolution", int, "working resolution: images get about this² pixels"),
]
SAMPLING_FLAGS = [
    (
        "--mode",
        "sampling_mode",
        str,
        "draw B′ by img2img from B, from noise, or from B's DDIM or edit-friendly DDPM inversion; an "
        "instruction editor (InstructPix2Pix, --model shapes-editor) draws in its own mode, editor",
    ),
    ("--strength", "strength", float, "img2img (and inversion) strength in (0, 1]"),
    ("--guidance-scale", "guidance_scale", float, "classifier-free guidance scale (an editor's text guidance)"),
    (
        "--image-guidance-scale",
        "image_guidance_scale",
        float,
        "an instruction editor's image guidance (--mode editor)",
    ),
    ("--sampling-steps", "sampling_steps", int, "denoising steps when drawing B′"),
    ("--edit-strength", "edit_strength", float, "scale s of the DIFF tokens, {prompt_B, s·D̃}; 0 = no edit"),
    (
        "--negative-diff",
        "negative_diff",
        bool,
        "guide away from the 'before' side: unconditional branch {prompt_B, −s·D̃} instead of the empty prompt",
    ),
    (
        "--diff-guidance",
        "diff_guidance",
        bool,
        "guide on the DIFF tokens alone: unconditional branch {prompt_B, 0} (B's reconstruction when D̃ = 0)",
    ),
    (
        "--candidates",
        "candidates",
        int,
        "draw K B′ (seeds SEED … SEED+K−1) and keep the best CLIP direction against A → A′ (analogy only)",
    ),
    (
        "--share-attention",
        "share_attention",
        float,
        "with --mode inversion: the fraction of denoising steps in which B′ takes the self-attention maps of B's "
        "reconstruction (keeps B's layout); 0 = off",
    ),
    (
        "--edit-mask",
        "edit_mask",
        float,
        "with --mode inversion: redraw only where the DIFF tokens change the UNet's prediction by at least this "
        "fraction of the most (DiffEdit-style mask), keep B's inversion elsewhere; 0 = off",
    ),
    (
        "--direct-inversion",
        "direct_inversion",
        bool,
        "with --mode inversion: denoise B's reconstruction beside B′ and take its drift from B's inversion path "
        "out of B′ at every step (Direct Inversion)",
    ),
]
FIT_ONLY = ["steps", "hard_tokens", "use_token_consistency", "use_clip_loss"]
CHOICES = {
    "init": INITS,
    "clip_loss_space": CLIP_LOSS_SPACES,
    "prompt_source": PROMPT_SOURCES,
    "sampling_mode": SAMPLING_MODES,
}


def _paper(field: str) -> str:
    value = getattr(PAPER, field)
    return "the model's" if value is None else f"the model's; paper {value}"


def _add_common(parser: argparse.ArgumentParser, default_model: str = DEFAULT_MODEL, why: str = "") -> None:
    group = parser.add_argument_group("model and run")
    group.add_argument(
        "--model",
        default=default_model,
        help="Stable Diffusion 1.x/2.x, SDXL or InstructPix2Pix hub id or local directory, e.g. "
        "stabilityai/stable-diffusion-2-1 or timbrooks/instruct-pix2pix; the bundled offline shapes world: "
        f"'shapes-editor' (its instruction editor) or 'shapes' (its text-to-image model); default {default_model!r}"
        + why,
    )
    group.add_argument(
        "--clip-model", help="CLIPModel hub id or directory (default: the CLIP matching the model's text encoder)"
    )
    group.add_argument(
        "--captions-from",
        metavar="FILE",
        help="caption by CLIP retrieval among the lines of FILE instead of the model's captioner (BLIP-2); "
        "a folder dataset's captions.txt works too",
    )
    group.add_argument("--offline", action="store_true", help="never use the network (also: HF_HUB_OFFLINE=1)")
    group.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    group.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="model precision (default: bfloat16 on GPU, float32 on CPU)",
    )
    group.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's, all cores); use 1 per process when running several at once",
    )
    group.add_argument(
        "--seed", type=checks.seed, default=0, help="seed for PEZ, the optimisation and sampling (default 0)"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars or loading bars")
    group.add_argument("--debug", action="store_true", help="show tracebacks and every library warning")


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")


def _add_flags(parser: argparse.ArgumentParser, flags, title: str) -> None:
    group = parser.add_argument_group(title, "defaults: the model's (`diffinv defaults --model M` lists them)")
    for flag, field, kind, text in flags:
        if kind is bool:  # a switch: given = on, absent = the model's default
            group.add_argument(
                flag,
                dest=field,
                action="store_const",
                const=True,
                default=None,
                help=f"{text} (the model's; paper {'on' if getattr(PAPER, field) else 'off'})",
            )
            continue
        metavar = None if field in CHOICES else flag.lstrip("-").upper().replace("-", "_")
        group.add_argument(
            flag,
            dest=field,
            type=kind,
            default=None,
            choices=CHOICES.get(field),
            metavar=metavar,
            help=f"{text} ({_paper(field)})",
        )


def _add_fit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a named method on the model's step budget; the flags below change it further "
        "(paper: the paper's method; default: the model's)",
    )
    _add_flags(parser, CONFIG_FLAGS, "Difference Inversion hyperparameters")
    group = parser.add_argument_group("fitting")
    group.add_argument(
        "--steps", dest="steps", type=int, default=None, help=f"optimisation steps N ({_paper('steps')})"
    )
    group.add_argument(
        "--hard-tokens",
        dest="hard_tokens",
        action="store_const",
        const=True,
        default=None,
        help="project DIFF tokens onto vocabulary words (PEZ straight-through)",
    )
    group.add_argument(
        "--no-token-consistency",
        dest="use_token_consistency",
        action="store_const",
        const=False,
        default=None,
        help="ablation: drop the token consistency loss",
    )
    group.add_argument(
        "--no-clip-loss",
        dest="use_clip_loss",
        action="store_const",
        const=False,
        default=None,
        help="ablation: drop the CLIP delta loss",
    )
    group.add_argument("--caption-a", help="caption of A (skips the captioner)")
    group.add_argument("--caption-a-prime", help="caption of A′ (skips the captioner)")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors in the same one-line form as every other error, each pointing to
    the help of the (sub)command it concerns."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_defaults(parser_of_command=self)  # the innermost command's parser wins

    def error(self, message: str):
        self.exit(2, f"diffinv: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown flag is reported by the command it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            getattr(parsed, "parser_of_command", self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffinv",
        description="Image analogies A : A′ :: B : B′ by Difference Inversion (CVPR 2025).",
    )
    parser.add_argument("--version", action="version", version=f"diffinv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser(
        "fit",
        help="learn DIFF tokens from A and A′",
        description="Learn DIFF tokens holding the difference A → A′ and save them as safetensors.",
    )
    fit.add_argument("a", metavar="A", help="the image before the change")
    fit.add_argument("a_prime", metavar="A_PRIME", help="the image after the change")
    fit.add_argument("-o", "--output", required=True, help="token file to write (.safetensors)")
    _add_overwrite(fit)
    _add_common(fit)
    _add_fit_flags(fit)

    apply = commands.add_parser(
        "apply",
        help="apply saved DIFF tokens to images B",
        description="Draw B′ for each B from {prompt_B, D̃}; writes DIR/<name of B>.png as each finishes.",
    )
    apply.add_argument("tokens", metavar="TOKENS", help="token file written by `diffinv fit`")
    apply.add_argument("b", metavar="B", nargs="+", help="images to change")
    apply.add_argument("-o", "--output", required=True, help="output directory")
    apply.add_argument("--prompt", help="prompt_B for every B (default: PEZ or caption, as at fitting)")
    apply.add_argument(
        "--also",
        action="append",
        default=[],
        type=_weighted_file,
        metavar="FILE[:WEIGHT]",
        help="repeatable: add WEIGHT (default 1) × the DIFF tokens of FILE, D̃ = w·D̃(TOKENS) + Σ wᵢ·D̃(FILEᵢ); "
        "every file needs the same number and width of tokens and the same model",
    )
    apply.add_argument(
        "--weight", type=float, default=1.0, help="weight w of TOKENS when combined with --also (default 1)"
    )
    _add_overwrite(apply)
    _add_common(apply)
    _add_flags(apply, SAMPLING_FLAGS, "drawing B′")

    analogy = commands.add_parser(
        "analogy",
        help="fit on A, A′ and apply to B in one go",
        description="Fit DIFF tokens on (A, A′), draw B′, and write B′, the grid A | A′ | B | B′ and the tokens.",
    )
    analogy.add_argument("a", metavar="A", help="the image before the change")
    analogy.add_argument("a_prime", metavar="A_PRIME", help="the image after the change")
    analogy.add_argument("b", metavar="B", help="the image to change")
    analogy.add_argument(
        "-o",
        "--output",
        required=True,
        help="B′ image to write (.png, .jpg, …); also writes <stem>-grid.png and <stem>.safetensors",
    )
    analogy.add_argument("--prompt", help="prompt_B (default: PEZ or caption)")
    _add_overwrite(analogy)
    _add_common(analogy)
    _add_fit_flags(analogy)
    _add_flags(analogy, SAMPLING_FLAGS, "drawing B′")

    export = commands.add_parser(
        "export",
        help="write DIFF tokens for diffusers, AUTOMATIC1111 / ComfyUI, or as words",
        description="Write the DIFF tokens of a token file in another tool's format (no model is loaded).",
    )
    export.add_argument("tokens", metavar="TOKENS", help="token file written by `diffinv fit`")
    export.add_argument(
        "--format",
        required=True,
        choices=["diffusers", "a1111", "words"],
        help="diffusers: for pipe.load_textual_inversion (.safetensors); a1111: emb_params for AUTOMATIC1111 and "
        "ComfyUI (.safetensors); words: the words of hard tokens (.txt)",
    )
    export.add_argument("-o", "--output", required=True, help="file to write")
    export.add_argument(
        "--token", default="<diff>", help="diffusers: the prompt word the tokens load as (default <diff>)"
    )
    _add_overwrite(export)
    export.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")

    defaults = commands.add_parser(
        "defaults",
        help="list a model's default hyperparameters beside the paper's",
        description="Print every hyperparameter with the model's default and the paper's (no model is loaded).",
    )
    defaults.add_argument(
        "--model", default=DEFAULT_MODEL, help="hub id, directory, 'shapes-editor' (default) or 'shapes'"
    )
    defaults.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")

    shapes = commands.add_parser(
        "shapes",
        help="the bundled shapes world: check its models, train them",
        description="The offline shapes world (a demonstration and test world, not a photo model).",
    )
    shape_commands = shapes.add_subparsers(dest="shapes_command", required=True, metavar="ACTION")
    check = shape_commands.add_parser(
        "check",
        help="measure the world's models against their quality gates, printing each as it is known (minutes on a "
        "CPU); exit 0 only if all hold",
    )
    check.add_argument("--model-dir", help="shapes model directory (default: the bundled one)")
    train = shape_commands.add_parser(
        "train", help="train the shapes world's models from scratch (resumes an interrupted run)"
    )
    train.add_argument(
        "--out", required=True, help="output directory (a Stable Diffusion directory with clip/ and classifier/)"
    )
    train.add_argument(
        "--stage",
        action="append",
        dest="stages",
        metavar="NAME",
        help="repeatable: train only these stages (their earlier stages must be done), e.g. two processes with "
        "--stage editor and --stage inpainting --threads 1 each; default: every stage not yet done",
    )
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    train.add_argument(
        "--extend",
        type=int,
        metavar="STEPS",
        help="with one --stage (unet, editor or inpainting) that is finished: train it further, from the step it "
        "reached to STEPS in all, on a STEPS-step cosine schedule (its saved weights are the starting point)",
    )
    for action in (check, train):
        action.add_argument("--quiet", action="store_true", help="no progress bars or loading bars")
        action.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")

    demo = commands.add_parser(
        "demo",
        help="serve a web page for analogies (Gradio; pip install 'diffinv[demo]')",
        description="A Gradio page: upload A, A′ and B (or pick an example), draw B′, download the tokens. "
        "Requests are queued and share one loaded model per model name. Not shared publicly.",
    )
    demo.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="the page's initial model: hub id, directory, 'shapes-editor' (default) or 'shapes'",
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)"
    )
    demo.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    demo.add_argument("--offline", action="store_true", help="never use the network (also: HF_HUB_OFFLINE=1)")
    demo.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")

    _add_bench_parser(commands)
    return parser


def _add_bench_parser(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmark methods on triplet datasets (resumable; summary, CSV, HTML report)",
        description="Run methods over a triplet dataset and report; see docs/bench.md.",
    )
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    run = bench_commands.add_parser(
        "run",
        help="run (or resume) a benchmark into --out",
        description=(
            "Run methods over triplets, writing B′, grids, loss plots and results.jsonl as each triplet finishes; the "
            "same command again resumes. Under `accelerate launch` the triplets are sharded across processes."
        ),
    )
    run.add_argument("--out", required=True, help="run directory (created; an existing one is resumed)")
    run.add_argument(
        "--dataset",
        choices=["shapes", "folder", "instructpix2pix"],
        default="shapes",
        help=(
            "shapes (seeded, offline; default), folder (--data DIR of triplet folders) or instructpix2pix (--data: a "
            "local copy)"
        ),
    )
    run.add_argument("--data", help="dataset directory for folder / instructpix2pix")
    run.add_argument(
        "--n",
        type=int,
        help=(
            "number of triplets: shapes default 100, instructpix2pix 300 (the paper's), folder: the first N (default "
            "all)"
        ),
    )
    run.add_argument(
        "--triplet-seed",
        type=int,
        default=0,
        help=(
            "seed that draws the shapes / InstructPix2Pix triplets (default 0); --seed seeds the methods (PEZ, "
            "fitting, sampling; triplet i uses seed + i)"
        ),
    )
    run.add_argument(
        "--families", help="shapes only: comma-separated families (default all: shape,colour,size,background,dot)"
    )
    run.add_argument(
        "--method",
        action="append",
        dest="methods",
        metavar="SPEC",
        help=(
            "repeatable: difference-inversion, copy-b, oracle-caption, a variant (no-token-consistency, "
            "image-delta-only, text-delta-only, random-init, no-clip-loss, n=1|3|5|8, alpha=0|0.5|0.8|1, "
            "clip-loss-token-mean, hard-tokens, sample-from-noise, edit-strength=0.5|1.5|2, negative-diff, inversion, "
            "edit-friendly, "
            "candidates=4), a named method (paper, in-context), a baseline (sdedit, instructpix2pix, visii, "
            "analogist, dia; sdedit:strength=0.6 sets its own config), NAME:field=value,…, or a set (fig5, n-sweep, "
            "alpha-sweep, open-choices, keep-b, baselines). "
            "Default: difference-inversion and copy-b (+ oracle-caption on shapes)"
        ),
    )
    run.add_argument(
        "--set",
        dest="base_changes",
        default="",
        metavar="FIELD=VALUE,…",
        help="changes to the model's default config for every Difference Inversion method (e.g. steps=100)",
    )
    run.add_argument(
        "--embedder",
        action="append",
        dest="embedders",
        metavar="NAME[=MODEL]",
        help=(
            "repeatable: clip (the model's CLIP), clip=ID, dinov2=ID (transformers Dinov2Model). Default: clip, plus "
            "dinov2=facebook/dinov2-base for real models"
        ),
    )
    run.add_argument(
        "--batch",
        type=int,
        help="triplets fitted together in one optimisation (default: 8 on the shapes world, 1 otherwise)",
    )
    run.add_argument(
        "--baseline-model",
        action="append",
        dest="baseline_models",
        metavar="NAME=MODEL",
        help=(
            "repeatable: the model a baseline runs on, hub id or directory (default: the model card's editor / "
            "inpainting model, else the baseline's published one; sdedit and dia: the bench's model)"
        ),
    )
    run.add_argument("--max-examples", type=int, default=12, help="grids per method in report.html (default 12)")
    _add_common(
        run,
        BENCH_MODEL,
        f" (not {DEFAULT_MODEL!r} as for `diffinv analogy`: this card names the editor, the inpainting model and the "
        f"classifier that on-editor, the baselines and the scores use; --model {DEFAULT_MODEL} benches the "
        "command line's default route)",
    )
    report = bench_commands.add_parser(
        "report", help="rewrite summary.md, summary.csv and report.html of a run directory"
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--max-examples", type=int, default=12, help="grids per method in report.html (default 12)")
    report.add_argument(
        "--baseline",
        default="difference-inversion",
        metavar="METHOD",
        help="method the paired differences are taken against (default difference-inversion)",
    )
    report.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    judge = bench_commands.add_parser(
        "judge",
        help="VLM judge: win rate of one method's B′ over another's (two options, both orders)",
        description=(
            "Show a judge A, A′, B and the B′ of two methods, in both orders, and report the win rate of --method "
            "over --against (a win needs both orders; ties count half); see docs/bench.md."
        ),
    )
    judge.add_argument("run_dir", metavar="RUN_DIR")
    judge.add_argument("--against", required=True, metavar="METHOD", help="the method compared against")
    judge.add_argument(
        "--method", default="difference-inversion", metavar="METHOD", help="default difference-inversion"
    )
    judge.add_argument(
        "--judge",
        required=True,
        metavar="MODEL|truth",
        help="a transformers image-text-to-text model (hub id or directory), or truth (shapes: the ground truth)",
    )
    judge.add_argument("--device", help="device of the judge model (default cuda when present, else cpu)")
    judge.add_argument("--seed", type=int, default=0, help="seeds the random order of the candidates (default 0)")
    judge.add_argument("--data", help="a folder dataset to take A, A′ and B from (default: cut from the run's grids)")
    judge.add_argument("--quiet", action="store_true", help="no line per triplet")
    judge.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")


def _weighted_file(text: str) -> tuple[str, float]:
    """argparse type of --also: FILE or FILE:WEIGHT (a name ending in .safetensors, or an existing
    file, is taken whole)."""
    path, separator, weight = text.rpartition(":")
    if not separator or not path or os.path.exists(text) or text.endswith(TOKEN_SUFFIX):
        return text, 1.0  # no weight, or a colon in the file's name (c:/d.safetensors)
    import math

    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text}: expected FILE or FILE:WEIGHT with a number as WEIGHT, got weight {weight!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"the weight of {path} must be a finite number, got {weight}")
    return path, value


# --- checks before any model loads --------------------------------------------------------------------
def _given(args: argparse.Namespace, fields: list[str]) -> dict:
    return {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}


def _fields(flags) -> list[str]:
    return [field for _, field, _, _ in flags]


def _planned_config(args: argparse.Namespace, card, fields: list[str]) -> InversionConfig:
    """The model's defaults, the preset and the flags given, with the model's budget for the start of
    D̃ they choose (`ModelCard.config_for`), validated; the resolution checked against the model's
    native size where the directory tells it."""
    config = card.config_for(getattr(args, "preset", None), _given(args, fields))
    checks.check_resolution(config.resolution, card.native_resolution())
    return config


def _captions(args: argparse.Namespace) -> tuple[str, str] | None:
    if (args.caption_a is None) != (args.caption_a_prime is None):
        raise DiffinvError("give both --caption-a and --caption-a-prime, or neither")
    return None if args.caption_a is None else (args.caption_a, args.caption_a_prime)


def _check_images(*paths: str) -> None:
    """Fail on unreadable, tiny or too elongated images before loading any model (`apply`: its Bs,
    which may be many, are read again one at a time as they are drawn)."""
    _read_images(*paths)


def _read_images(*paths: str) -> list:
    """Each image read once, as RGB (`images.as_rgb`): an unreadable, tiny or too elongated one
    fails here, before any model loads, and the images read are the ones the command works on."""
    from .images import as_rgb

    return [as_rgb(path) for path in paths]


def _caption_lines(args: argparse.Namespace) -> list[str] | None:
    from .model_card import read_caption_lines

    return read_caption_lines(args.captions_from) if args.captions_from else None


def _check_downloads(args: argparse.Namespace, card, needs_captioner: bool) -> None:
    """Say now, not after minutes of retries, that a model must be downloaded but cannot be
    (offline, or the hub unreachable); say once that BLIP-2 is about to be downloaded, and how to
    do without it."""
    offline = args.offline or checks.hub_offline()
    hub_model = card.directory is None
    blip2 = needs_captioner and card.captioner.get("kind") == "blip2" and not args.captions_from
    if not (hub_model or blip2):
        return
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    from .captioners import DEFAULT_BLIP2

    def cached(repo: str, filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo, filename), str)
        except Exception:  # a malformed id is reported by the loader, with its own message
            return True

    def reachable(repo: str) -> bool:
        try:
            HfApi().model_info(repo, timeout=10)
        except HfHubHTTPError:  # the hub answered (gated, missing…): the loader says what
            return True
        except Exception:  # no network, DNS, time-out: the download would retry for minutes
            return False
        return True

    skip = "give --caption-a and --caption-a-prime (and --prompt for B), or --captions-from FILE"
    if hub_model and not cached(card.source, "model_index.json"):
        if offline:
            raise DiffinvError(
                f"{card.source}: not a local directory and not in the hub cache, and offline mode is on "
                "(--offline or HF_HUB_OFFLINE=1); give a local directory or download it once online"
            )
        if not reachable(card.source):
            raise DiffinvError(f"{card.source}: not in the hub cache, and the hub cannot be reached to download it")
    if blip2 and not cached(DEFAULT_BLIP2, "config.json"):
        if offline:
            raise DiffinvError(
                f"captions are needed but the captioner {DEFAULT_BLIP2} is not in the hub cache; {skip}"
            )
        if not reachable(DEFAULT_BLIP2):
            raise DiffinvError(
                f"captions are needed but the captioner {DEFAULT_BLIP2} is not in the hub cache and the hub "
                f"cannot be reached; {skip}"
            )
        print(f"diffinv: downloading the captioner {DEFAULT_BLIP2} (several GB); to skip it, {skip}", file=sys.stderr)


def _captioner_use(args: argparse.Namespace, card, config: InversionConfig, fitting: bool, drawing: bool) -> bool:
    """Whether the run needs the captioner (`InversionConfig.needs_pair_captions` for the fit,
    `needs_b_caption` for B), the rule the pipeline follows. Captions given that the run will not
    read (--captions-from, --caption-a/--caption-a-prime) are said to do nothing, in one line."""
    editor = bool(card.is_editor())  # None (a hub model not in the cache): as a text-to-image model
    pair = fitting and config.needs_pair_captions(editor)
    needs = (pair and getattr(args, "caption_a", None) is None) or (
        drawing and args.prompt is None and config.needs_b_caption(editor)
    )
    if fitting and getattr(args, "caption_a", None) is not None and not pair:
        _unused("--caption-a and --caption-a-prime", config, editor)
    if args.captions_from and not needs:
        _unused("--captions-from", config, editor)
    return needs


def _unused(flags: str, config: InversionConfig, editor: bool) -> None:
    if config.steps == 0:
        why = f"D̃ is taken from the model's encoder with no fit (init {config.init!r}, steps 0)"
    elif editor:
        why = "an instruction editor's fit reads no captions with these settings (alpha 0 or no CLIP loss)"
    else:
        why = "these settings read no captions"
    warnings.warn(f"{flags} changes nothing here: {why}", DiffinvWarning, stacklevel=1)


# --- loading ------------------------------------------------------------------------------------------
def _set_up_torch(args: argparse.Namespace) -> None:
    from .threads import set_up_torch

    set_up_torch(getattr(args, "threads", None))


def _quiet_libraries() -> None:
    """--quiet: no loading bars from diffusers and transformers either, not only no bars of ours."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _load(args: argparse.Namespace):
    """The model of --model, with --captions-from as its captioner when given."""
    from .captioners import ClipRetrievalCaptioner
    from .pipeline import DifferenceInversion

    _set_up_torch(args)
    if args.quiet:
        _quiet_libraries()
    di = DifferenceInversion.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, clip_model=args.clip_model, offline=args.offline or None
    )
    if args.captions_from:
        di.captioner = ClipRetrievalCaptioner(di.clip, _caption_lines(args))
    return di


# --- the commands ---------------------------------------------------------------------------------------
def _common_checks(args: argparse.Namespace):
    """Device and threads; returns the model's card."""
    from .model_card import model_card

    checks.check_device(args.device)
    if args.threads is not None and args.threads < 1:
        raise DiffinvError(f"--threads must be at least 1, got {args.threads}")
    return model_card(args.model)


def run_fit(args: argparse.Namespace) -> None:
    card = _common_checks(args)
    config = _planned_config(args, card, _fields(CONFIG_FLAGS) + FIT_ONLY)
    captions = _captions(args)
    outputs = Outputs([args.a, args.a_prime], args.overwrite)
    tokens_path = outputs.add(args.output, (TOKEN_SUFFIX,), "token file")
    a, a_prime = _read_images(args.a, args.a_prime)
    _caption_lines(args)  # a bad caption file is reported now
    _check_downloads(args, card, _captioner_use(args, card, config, fitting=True, drawing=False))

    di = _load(args)
    tokens = di.fit(a, a_prime, config, captions=captions, seed=args.seed, progress=not args.quiet)
    with outputs.writing() as write:
        write(tokens_path, tokens.save)
    print(f"wrote {tokens_path}  (prompt_A: {tokens.prompt_a!r}; prompt_A′: {tokens.prompt_a_prime!r})")
    if tokens.hard_text:
        print(f"hard DIFF tokens: {tokens.hard_text!r}")


def _apply_names(images: list[str]) -> list[str]:
    """DIR/<stem of B>.png for each B; a repeated stem gets -2, -3, …"""
    used, names = set(), []
    for path in images:
        stem = Path(path).stem
        name, index = f"{stem}.png", 1
        while name in used:
            index += 1
            name = f"{stem}-{index}.png"
        used.add(name)
        names.append(name)
    return names


def run_apply(args: argparse.Namespace) -> None:
    card = _common_checks(args)
    sampling = _given(args, _fields(SAMPLING_FLAGS))
    card.default_config().replace(**sampling)  # invalid values are reported before anything loads
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise DiffinvError(f"{out_dir}: exists and is not a directory")
    also = [path for path, _ in args.also]
    outputs = Outputs([args.tokens, *also, *args.b], args.overwrite)
    paths = [outputs.add(out_dir / name, (".png",), "B′ image") for name in _apply_names(args.b)]
    _check_images(*args.b)
    _caption_lines(args)  # a bad caption file is reported now

    from .tokens import DiffTokens

    tokens = DiffTokens.load(args.tokens)
    if args.also or args.weight != 1:
        from .export import combine

        others = [DiffTokens.load(path) for path in also]
        tokens = combine([tokens, *others], [args.weight, *(weight for _, weight in args.also)])
    config = _drawing_config(tokens, card, sampling)
    if config.candidates > 1:
        # Scoring candidates needs A and A′, which a token file does not hold.
        if "candidates" in sampling:
            raise DiffinvError(
                f"--candidates {config.candidates} scores each B′ against A → A′, which a token file does not "
                "hold; use `diffinv analogy A A_PRIME B --candidates K`, or --candidates 1"
            )
        warnings.warn(
            f"the token file asks for candidates = {config.candidates}, which needs A and A′; drawing one B′ "
            "per image (candidates = 1)",
            DiffinvWarning,
            stacklevel=1,
        )
        config = config.replace(candidates=1)
    _check_downloads(args, card, _captioner_use(args, card, config, fitting=False, drawing=True))
    di = _load(args)
    written: list[Path] = []
    try:
        for path, output in zip(args.b, paths):
            b_prime = di.apply(
                tokens, path, seed=args.seed, prompt=args.prompt, config=config, progress=not args.quiet
            )
            with outputs.writing() as write:
                write(output, b_prime.save)
            written.append(output)
            print(f"wrote {output}")
    except KeyboardInterrupt:
        raise Interrupted(_apply_progress(written, paths)) from None


def _apply_progress(written: list[Path], planned: list[Path]) -> str:
    """What an interrupted `apply` had written, and what not, in one sentence."""
    if not written:
        return f"none of the {len(planned)} B′ was written"
    missing = planned[len(written) :]
    shown = ", ".join(str(path) for path in missing[:3]) + (", …" if len(missing) > 3 else "")
    return f"wrote {len(written)} of {len(planned)} B′ (up to {written[-1]}); not written: {shown}"


# the fields that say how B′ is drawn, which a model's own defaults give when it did not fit the tokens
DRAWING_FIELDS = ("resolution", *(field for _, field, _, _ in SAMPLING_FLAGS))


def _drawing_config(tokens, card, sampling: dict) -> InversionConfig:
    """How `apply` draws B′: as the tokens were fitted to be drawn, with the flags given. Tokens
    fitted on an instruction editor and applied to a text-to-image model (or back) are drawn with
    this model's own drawing settings, since the other kind's mean nothing here; said in one line,
    before any model loads."""
    config = tokens.config
    editor = card.is_editor()  # None for a hub model not in the cache: the pipeline checks once loaded
    if editor is not None and editor != (config.sampling_mode == "editor"):
        own = card.config_for(editor=editor)
        kind = "an instruction editor" if editor else "a text-to-image model"
        warnings.warn(
            f"these DIFF tokens were fitted on {tokens.model_id!r}; {card.name!r} is {kind}, so B′ is drawn "
            f"with its own drawing settings (mode {own.sampling_mode!r}, {own.sampling_steps} steps)",
            DiffinvWarning,
            stacklevel=1,
        )
        config = config.replace(**{field: getattr(own, field) for field in DRAWING_FIELDS})
    config = config.replace(**sampling)
    if editor is not None:
        check_sampling_mode(config.sampling_mode, card.name, editor)
    return config


def run_analogy(args: argparse.Namespace) -> None:
    card = _common_checks(args)
    config = _planned_config(args, card, _fields(CONFIG_FLAGS + SAMPLING_FLAGS) + FIT_ONLY)
    captions = _captions(args)
    outputs = Outputs([args.a, args.a_prime, args.b], args.overwrite)
    b_prime_path = outputs.add(args.output, IMAGE_SUFFIXES, "B′ image")
    grid_path = outputs.add(b_prime_path.with_name(f"{b_prime_path.stem}-grid.png"), (".png",), "grid")
    tokens_path = outputs.add(b_prime_path.with_suffix(TOKEN_SUFFIX), (TOKEN_SUFFIX,), "token file")
    images = _read_images(args.a, args.a_prime, args.b)  # read once: for the analogy and the grid
    _caption_lines(args)  # a bad caption file is reported now
    _check_downloads(args, card, _captioner_use(args, card, config, fitting=True, drawing=True))

    from .grid import image_grid

    di = _load(args)
    b_prime, tokens = di.analogy(
        *images,
        config,
        seed=args.seed,
        captions=captions,
        prompt_b=args.prompt,
        progress=not args.quiet,
    )
    # ASCII primes: Pillow's built-in font has no ′.
    grid = image_grid([*images, b_prime], ["A", "A'", "B", "B'"])
    with outputs.writing() as write:
        write(b_prime_path, b_prime.save)
        write(grid_path, grid.save)
        write(tokens_path, tokens.save)
    print(f"wrote {b_prime_path}, {grid_path} and {tokens_path}")


def run_export(args: argparse.Namespace) -> None:
    from .export import FORMATS, check_token

    check_token(args.token)
    outputs = Outputs([args.tokens], args.overwrite)
    path = outputs.add(args.output, (FORMATS[args.format],), f"{args.format} export")

    from .export import export, words_text
    from .tokens import DiffTokens

    tokens = DiffTokens.load(args.tokens)
    if args.format == "words":
        words_text(tokens)  # soft tokens are refused before anything is written
    with outputs.writing() as write:
        write(path, lambda temporary: export(tokens, args.format, temporary, token=args.token))
    if args.format == "diffusers":
        print(f'wrote {path}  (pipe.load_textual_inversion("{path}", token="{args.token}"); prompt: "… {args.token}")')
    else:
        print(f"wrote {path}")


def run_defaults(args: argparse.Namespace) -> None:
    import dataclasses

    from .model_card import model_card

    card = model_card(args.model)
    config = card.default_config()
    where = f"{card.directory}/diffinv.json" if card.has_descriptor else "no diffinv.json: the paper's defaults"
    print(f"model {card.name} ({where}); captioner: {card.captioner.get('kind')}")
    print(f"{'field':<22} {'model default':<14} paper")
    for field in dataclasses.fields(InversionConfig):
        ours, papers = getattr(config, field.name), getattr(PAPER, field.name)
        mark = "" if ours == papers else "   (changed)"
        print(f"{field.name:<22} {ours!s:<14} {papers!s}{mark}")
    for init, budget in card.init_budgets.items():  # what --init INIT (or a preset starting there) runs on
        changes = ", ".join(f"{name} {value}" for name, value in budget.items())
        print(f"with init {init!r} (--init {init}, or a preset that starts there): {changes}")


def run_shapes(args: argparse.Namespace) -> None:
    _set_up_torch(args)
    if args.quiet:
        _quiet_libraries()
    if args.shapes_command == "train":
        from .shapes.train import train_world

        if args.threads is not None and args.threads < 1:
            raise DiffinvError(f"--threads must be at least 1, got {args.threads}")
        plan = None
        if args.extend is not None:
            from .shapes.train import extend_stage

            if len(args.stages or ()) != 1:
                raise DiffinvError("--extend needs exactly one --stage: the denoiser stage to train further")
            plan = extend_stage(Path(args.out), args.stages[0], args.extend)
        print(train_world(Path(args.out), plan, stages=args.stages))
        return
    if args.shapes_command == "check":
        from .shapes.evaluate import check

        def show(gate) -> None:
            print(
                f"{'PASS' if gate.passed else 'FAIL'}  {gate.name:<16} {gate.value:6.1%}  "
                f"(need ≥ {gate.threshold:.0%})  {gate.detail}",
                flush=True,
            )

        def measuring(stage: str) -> None:  # some stages take minutes on a CPU
            print(f"measuring {stage} …", file=sys.stderr, flush=True)

        gates = check(
            Path(args.model_dir) if args.model_dir else None, on_stage=None if args.quiet else measuring, on_gate=show
        )
        if not all(gate.passed for gate in gates):
            raise DiffinvError("some shapes-world gates fail")


def run_demo(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise DiffinvError(f"--port must be between 1 and 65535, got {args.port}")
    from .model_card import model_card

    model_card(args.model)  # a bad directory is reported before the page starts
    try:
        import gradio  # noqa: F401  (imported here only: `diffinv --help` stays fast)
    except ImportError:
        raise DiffinvError("the demo needs gradio: pip install 'diffinv[demo]' (or pip install gradio)") from None
    from .demo import launch

    print(f"diffinv demo on http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch(args.model, host=args.host, port=args.port)


def run_bench(args: argparse.Namespace) -> None:
    if args.bench_command == "judge":
        from .bench.judge import judge_command  # checks the run before any model loads

        judge_command(args)
        return
    from .bench.command import bench_command

    if args.bench_command == "run":
        _common_checks(args)
    bench_command(args, _load)


COMMANDS = {
    "fit": run_fit,
    "apply": run_apply,
    "analogy": run_analogy,
    "export": run_export,
    "defaults": run_defaults,
    "demo": run_demo,
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"diffinv: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .threads import prepare_environment

    prepare_environment()  # before torch is imported
    if getattr(args, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = "1"  # before the hub libraries read it
    # Library chatter (deprecations, optional-backend notices, download retries) is not for the
    # command's user; diffinv's own warnings are, as one line each.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    with warnings.catch_warnings():
        if not args.debug:
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("always", category=DiffinvWarning)
            warnings.showwarning = _show_warning
        return _run(args)


def _interrupted_note(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """What Ctrl-C left behind: the work's own account (`Interrupted`), else the command's."""
    if isinstance(interrupt, Interrupted) and interrupt.args:
        return interrupt.args[0]
    if args.command == "shapes" and args.shapes_command == "train":
        return f"the finished stages and the last checkpoint are kept in {args.out}; the same command resumes"
    if args.command == "demo":
        return "the demo stopped"
    if args.command == "bench" and args.bench_command == "run":
        return f"no result was written ({args.out} holds at most its run.json); the same command starts it again"
    # fit, analogy, export and the judge write their files under temporary names and rename them at the end
    return "no output was written"


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "shapes":
            run_shapes(args)
        elif args.command == "bench":
            run_bench(args)
        else:
            COMMANDS[args.command](args)
    except DiffinvError as error:
        print(f"diffinv: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away (`diffinv defaults | head -1`): stop quietly, as other
        # command-line tools do, and keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status of a tool that a closed pipe ended
    except KeyboardInterrupt as interrupt:
        print(f"diffinv: interrupted; {_interrupted_note(args, interrupt)}", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence against tracebacks
        if args.debug:
            raise
        first_line = (str(error).splitlines() or [""])[0]
        print(
            f"diffinv: unexpected error: {type(error).__name__}: {first_line} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
