"""The command tree of `diffinv`: every command and action with its own arguments and help; the flags
several commands share are `flags.py`'s.

Usage errors come out as every other error does, one line with status 2, and each names the help of
the (sub)command it concerns. Torch-free: `diffinv --help` builds this and nothing else.
"""

from __future__ import annotations

import argparse

from .. import __version__
from .encoder import add_encoder_parser
from .flags import (
    BENCH_MODEL,
    DEFAULT_MODEL,
    SAMPLING_FLAGS,
    add_common,
    add_fit_flags,
    add_flags,
    add_overwrite,
    weighted_file,
)


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
    """The parser of `diffinv` and all its commands (`main` dispatches on `command`)."""
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
    fit.add_argument(
        "more_images",
        metavar="MORE",
        nargs="*",
        help="further example pairs of the same edit, A2 A2_PRIME A3 A3_PRIME … (one D̃ from all the pairs)",
    )
    fit.add_argument("-o", "--output", required=True, help="token file to write (.safetensors)")
    _add_pair_flag(fit)
    add_overwrite(fit)
    add_common(fit)
    add_fit_flags(fit)

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
        type=weighted_file,
        metavar="FILE[:WEIGHT]",
        help="repeatable: add WEIGHT (default 1) × the DIFF tokens of FILE, D̃ = w·D̃(TOKENS) + Σ wᵢ·D̃(FILEᵢ); "
        "every file needs the same number and width of tokens and the same model",
    )
    apply.add_argument(
        "--weight", type=float, default=1.0, help="weight w of TOKENS when combined with --also (default 1)"
    )
    add_overwrite(apply)
    add_common(apply)
    add_flags(apply, SAMPLING_FLAGS, "drawing B′")

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
    _add_pair_flag(analogy)
    add_overwrite(analogy)
    add_common(analogy)
    add_fit_flags(analogy)
    add_flags(analogy, SAMPLING_FLAGS, "drawing B′")

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
    add_overwrite(export)
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
    add_encoder_parser(commands)
    return parser


def _add_pair_flag(parser: argparse.ArgumentParser) -> None:
    """--pair A A_PRIME, repeatable: further example pairs of the edit (`fit` and `analogy`)."""
    parser.add_argument(
        "--pair",
        dest="pairs",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "A_PRIME"),
        help="repeatable: a further example pair of the same edit; D̃ is fitted on all the pairs together "
        "(the losses averaged over them)",
    )


def _add_bench_parser(commands) -> None:
    """`diffinv bench` and its actions run, report and judge (their handlers: `diffinv.bench`)."""
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
        choices=["shapes", "folder", "instructpix2pix", "reedit", "lorweb", "relation252k", "analogist"],
        default="shapes",
        help=(
            "shapes (seeded, offline; default), folder (--data DIR of triplet folders), instructpix2pix (--data: a "
            "local copy), or a published benchmark in its own layout (--data: a local copy): reedit (ReEdit-Bench), "
            "lorweb (LoRWeB's layout of Relation252K), relation252k (Relation252K's own), analogist (Analogist's "
            "task folders); see docs/bench.md"
        ),
    )
    run.add_argument("--data", help="dataset directory (every dataset but shapes)")
    run.add_argument(
        "--n",
        type=int,
        help=(
            "number of triplets: shapes default 100, instructpix2pix 300 (the paper's), folder: the first N, "
            "published sets: N taking the families in turn (default all)"
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
        "--split",
        choices=["seen", "unseen", "compound", "all"],
        help="shapes only: triplets whose edit types are the world's seen or unseen half (what a learned analogy "
        "component may train on), two attributes at once (compound), or --n of each side by side (all); "
        "default: every edit type",
    )
    run.add_argument(
        "--examples",
        type=int,
        default=1,
        metavar="K",
        help="shapes only: show methods K example pairs of each triplet's edit (its own A, A′ and K − 1 more whose "
        "other attributes are drawn anew; the triplets stay the same); only methods that take several examples "
        "(difference-inversion, on-editor and the references) run with K > 1 (default 1)",
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
            "analogist, dia, kontext, visualcloze, qwen-edit; sdedit:strength=0.6 sets its own config), "
            "NAME:field=value,…, "
            "or a set (fig5, n-sweep, "
            "alpha-sweep, open-choices, keep-b, baselines, recent-editors). "
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
    add_common(
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
