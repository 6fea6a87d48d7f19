"""The `diffinv` command: fit, apply, analogy.

Errors in the user's input print one line on stderr and exit with status 2; an unexpected
failure prints one line and exits with 1 (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import DiffinvError  # torch-free: `--help` stays instant

DEFAULT_MODEL = "shapes"  # the bundled offline world; real use: a Stable Diffusion hub id or directory

# (flag, InversionConfig field, type, help). Every flag defaults to None = "keep the config's value".
CONFIG_FLAGS = [
    ("--n-tokens", "n_tokens", int, "number of DIFF tokens n (paper: 5)"),
    ("--alpha", "alpha", float, "slerp ratio: 0 = image delta only, 1 = text delta only (paper: 0.8)"),
    ("--lambda-tc", "lambda_tc", float, "weight of the token consistency loss (paper: 0.01)"),
    ("--lambda-clip", "lambda_clip", float, "weight of the CLIP delta loss (paper: 6)"),
    ("--init", "init", str, "initial DIFF tokens: zeros (paper) or random"),
    ("--lr", "learning_rate", float, "AdamW learning rate (VISII: 1e-3)"),
    ("--clip-loss-space", "clip_loss_space", str, "text-tower (encode D̃ with CLIP's text tower) or token-mean"),
    ("--prompt-source", "prompt_source", str, "prompts of A, A′ and B: pez (paper) or caption (faster)"),
    ("--pez-steps", "pez_steps", int, "PEZ optimisation steps per image (PEZ: 3000)"),
    ("--pez-prompt-len", "pez_prompt_len", int, "tokens in a PEZ prompt (PEZ: 16)"),
    ("--resolution", "resolution", int, "working resolution: images get about this² pixels (default: the model's)"),
]
SAMPLING_FLAGS = [
    ("--mode", "sampling_mode", str, "draw B′ by img2img from B (default) or from noise"),
    ("--strength", "strength", float, "img2img strength in (0, 1] (default 0.8)"),
    ("--guidance-scale", "guidance_scale", float, "classifier-free guidance scale (default 7.5)"),
    ("--sampling-steps", "sampling_steps", int, "denoising steps when drawing B′ (default 50)"),
]


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and run")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=(
            "Stable Diffusion 1.x/2.x hub id or local directory, e.g. stabilityai/stable-diffusion-2-1; 'shapes' "
            "(default) is the bundled offline demo world"
        ),
    )
    group.add_argument(
        "--clip-model", help="CLIPModel hub id or directory (default: the CLIP matching the model's text encoder)"
    )
    group.add_argument(
        "--captions-from", metavar="FILE", help="caption by CLIP retrieval among the lines of FILE instead of BLIP-2"
    )
    group.add_argument("--device", help="cpu, cuda, cuda:1, … (default: cuda if available)")
    group.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="model precision (default: bfloat16 on GPU, float32 on CPU)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for PEZ, the optimisation and sampling (default 0)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")
    group.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")


CHOICES = {
    "init": ["zeros", "random"],
    "clip_loss_space": ["text-tower", "token-mean"],
    "prompt_source": ["pez", "caption"],
    "sampling_mode": ["img2img", "noise"],
}


def _add_flags(parser: argparse.ArgumentParser, flags, title: str) -> None:
    group = parser.add_argument_group(title)
    for flag, field, kind, text in flags:
        metavar = None if field in CHOICES else flag.lstrip("-").upper().replace("-", "_")
        group.add_argument(
            flag, dest=field, type=kind, default=None, choices=CHOICES.get(field), metavar=metavar, help=text
        )


def _add_fit_flags(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser, CONFIG_FLAGS, "Difference Inversion hyperparameters")
    group = parser.add_argument_group("fitting")
    group.add_argument("--steps", dest="steps", type=int, default=None, help="optimisation steps N (VISII: 1000)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffinv",
        description="Image analogies A : A′ :: B : B′ by Difference Inversion (CVPR 2025).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser(
        "fit",
        help="learn DIFF tokens from A and A′",
        description="Learn DIFF tokens holding the difference A → A′ and save them as safetensors.",
    )
    fit.add_argument("a", metavar="A", help="the image before the change")
    fit.add_argument("a_prime", metavar="A_PRIME", help="the image after the change")
    fit.add_argument("-o", "--output", required=True, help="token file to write (.safetensors)")
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
        help="B′ image to write (.png); also writes <stem>-grid.png and <stem>.safetensors",
    )
    analogy.add_argument("--prompt", help="prompt_B (default: PEZ or caption)")
    _add_common(analogy)
    _add_fit_flags(analogy)
    _add_flags(analogy, SAMPLING_FLAGS, "drawing B′")

    shapes = commands.add_parser(
        "shapes",
        help="the bundled shapes world: check its models, train them",
        description="The offline shapes world (a demonstration and test world, not a photo model).",
    )
    shape_commands = shapes.add_subparsers(dest="shapes_command", required=True, metavar="ACTION")
    check = shape_commands.add_parser("check", help="print the four quality gates; exit 0 only if all hold")
    check.add_argument("--model-dir", help="shapes model directory (default: the bundled one)")
    train = shape_commands.add_parser(
        "train", help="train the shapes world's models from scratch (resumes an interrupted run)"
    )
    train.add_argument(
        "--out", required=True, help="output directory (a Stable Diffusion directory with clip/ and classifier/)"
    )
    for action in (check, train):
        action.add_argument("--quiet", action="store_true", help="no progress bars")
        action.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")

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
            "clip-loss-token-mean, hard-tokens, sample-from-noise), NAME:field=value,…, or a preset (fig5, n-sweep, "
            "alpha-sweep, open-choices). Default: difference-inversion and copy-b (+ oracle-caption on shapes)"
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
    run.add_argument("--max-examples", type=int, default=12, help="grids per method in report.html (default 12)")
    _add_common(run)
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
    return parser


def _overrides(args: argparse.Namespace, flags) -> dict:
    names = [field for _, field, _, _ in flags]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


FIT_ONLY = ["steps", "hard_tokens", "use_token_consistency", "use_clip_loss"]


def _load(args: argparse.Namespace):
    from .captioners import ClipRetrievalCaptioner
    from .pipeline import DifferenceInversion

    if args.quiet:  # also the loading bars of diffusers and transformers, not only ours
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    di = DifferenceInversion.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, clip_model=args.clip_model
    )
    if args.captions_from:
        path = Path(args.captions_from)
        if not path.is_file():
            raise DiffinvError(f"{path}: no such caption file")
        lines = [
            line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]
        di.captioner = ClipRetrievalCaptioner(di.clip, lines)
    return di


def _captions(args: argparse.Namespace):
    if (args.caption_a is None) != (args.caption_a_prime is None):
        raise DiffinvError("give both --caption-a and --caption-a-prime, or neither")
    return None if args.caption_a is None else (args.caption_a, args.caption_a_prime)


def _fit_overrides(args: argparse.Namespace) -> dict:
    """Hyperparameters given on the command line, validated before any model is loaded."""
    from .config import InversionConfig

    values = _overrides(args, CONFIG_FLAGS + SAMPLING_FLAGS)
    values.update({name: getattr(args, name) for name in FIT_ONLY if getattr(args, name, None) is not None})
    InversionConfig(**values)
    return values


def _check_images(*paths: str) -> None:
    """Fail on unreadable images before loading any model (which takes a while)."""
    from .images import load_image

    for path in paths:
        load_image(path)


def _check_output(path: str | os.PathLike, must_be_dir: bool = False) -> None:
    path = Path(path)
    if must_be_dir:
        if path.exists() and not path.is_dir():
            raise DiffinvError(f"{path}: exists and is not a directory")
    elif path.is_dir():
        raise DiffinvError(f"{path}: is a directory; give a file name")


def run_fit(args: argparse.Namespace) -> None:
    _check_images(args.a, args.a_prime)
    _check_output(args.output)
    overrides, captions = _fit_overrides(args), _captions(args)
    di = _load(args)
    config = di.default_config.replace(**overrides)
    tokens = di.fit(args.a, args.a_prime, config, captions=captions, seed=args.seed, progress=not args.quiet)
    tokens.save(args.output)
    print(f"wrote {args.output}  (prompt_A: {tokens.prompt_a!r}; prompt_A′: {tokens.prompt_a_prime!r})")
    if tokens.hard_text:
        print(f"hard DIFF tokens: {tokens.hard_text!r}")


def run_apply(args: argparse.Namespace) -> None:
    from .tokens import DiffTokens

    tokens = DiffTokens.load(args.tokens)
    _check_images(*args.b)
    _check_output(args.output, must_be_dir=True)
    config = tokens.config.replace(**_overrides(args, SAMPLING_FLAGS))
    di = _load(args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    used = set()
    for path in args.b:
        stem = Path(path).stem
        name, index = f"{stem}.png", 1
        while name in used:
            index += 1
            name = f"{stem}-{index}.png"
        used.add(name)
        b_prime = di.apply(tokens, path, seed=args.seed, prompt=args.prompt, config=config, progress=not args.quiet)
        b_prime.save(out_dir / name)
        print(f"wrote {out_dir / name}")


def run_analogy(args: argparse.Namespace) -> None:
    from .grid import image_grid
    from .pipeline import as_rgb

    _check_images(args.a, args.a_prime, args.b)
    _check_output(args.output)
    overrides, captions = _fit_overrides(args), _captions(args)
    di = _load(args)
    config = di.default_config.replace(**overrides)
    b_prime, tokens = di.analogy(
        args.a,
        args.a_prime,
        args.b,
        config,
        seed=args.seed,
        captions=captions,
        prompt_b=args.prompt,
        progress=not args.quiet,
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    b_prime.save(output)
    grid_path = output.with_name(f"{output.stem}-grid.png")
    # ASCII primes: Pillow's built-in font has no ′.
    image_grid([as_rgb(args.a), as_rgb(args.a_prime), as_rgb(args.b), b_prime], ["A", "A'", "B", "B'"]).save(grid_path)
    tokens_path = output.with_suffix(".safetensors")
    tokens.save(tokens_path)
    print(f"wrote {output}, {grid_path} and {tokens_path}")


def run_shapes(args: argparse.Namespace) -> None:
    if args.shapes_command == "train":
        from .shapes.train import train_world

        print(train_world(Path(args.out)))
        return
    if args.shapes_command == "check":
        from .shapes.evaluate import check

        gates = check(Path(args.model_dir) if args.model_dir else None)
        for gate in gates:
            print(
                f"{'PASS' if gate.passed else 'FAIL'}  {gate.name:<11} {gate.value:6.1%}  "
                f"(need ≥ {gate.threshold:.0%})  {gate.detail}"
            )
        if not all(gate.passed for gate in gates):
            raise DiffinvError("some shapes-world gates fail")


def _embedder_specs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, model) per --embedder, checked before any model loads."""
    specs = args.embedders or (["clip"] if args.model == "shapes" else ["clip", "dinov2=facebook/dinov2-base"])
    parsed = []
    for spec in specs:
        name, _, model_id = spec.partition("=")
        if name not in ("clip", "dinov2") or (name == "dinov2" and not model_id):
            raise DiffinvError(f"bad --embedder {spec!r}: use clip, clip=MODEL or dinov2=MODEL")
        parsed.append((name, model_id))
    return parsed


def _embedders(specs: list[tuple[str, str]], di) -> list:
    from .bench.metrics import ClipEmbedder, Dinov2Embedder
    from .clip_space import ClipSpace

    embedders = []
    for name, model_id in specs:
        if name == "clip":
            clip = ClipSpace.from_pretrained(model_id, di.clip.device, di.clip.model.dtype) if model_id else di.clip
            embedders.append(ClipEmbedder(clip))
        else:
            embedders.append(Dinov2Embedder.from_pretrained(model_id, di.clip.device))
    return embedders


def run_bench(args: argparse.Namespace) -> None:
    from .bench.report import write_reports

    if args.bench_command == "report":
        if not (Path(args.run_dir) / "results.jsonl").exists():
            raise DiffinvError(f"{args.run_dir}: no results.jsonl (not a bench run directory)")
        paths = write_reports(args.run_dir, args.max_examples, args.baseline)
        print(f"wrote {paths['md']}, {paths['csv']} and {paths['html']}")
        return

    import json

    from .bench.datasets import folder_dataset, instructpix2pix_dataset, shapes_dataset
    from .bench.methods import expand_methods, parse_changes
    from .bench.run import BenchRunner, Shard, check_run_record, local_device
    from .config import InversionConfig
    from .shapes import shapes_config

    if args.dataset == "shapes":
        if args.data:
            raise DiffinvError("--data is for the folder and instructpix2pix datasets")
        triplets = shapes_dataset(
            args.n or 100, args.triplet_seed, tuple(args.families.split(",")) if args.families else None
        )
        dataset = {"name": "shapes", "n": args.n or 100, "seed": args.triplet_seed, "families": args.families or "all"}
    elif not args.data:
        raise DiffinvError(f"--dataset {args.dataset} needs --data DIR")
    elif args.dataset == "folder":
        triplets = folder_dataset(args.data)[: args.n]
        dataset = {"name": "folder", "data": Path(args.data).name, "n": len(triplets)}
    else:
        triplets = instructpix2pix_dataset(args.data, args.n or 300, args.triplet_seed)
        dataset = {
            "name": "instructpix2pix",
            "data": Path(args.data).name,
            "n": len(triplets),
            "seed": args.triplet_seed,
        }
    default_methods = ["difference-inversion", "copy-b"] + (["oracle-caption"] if args.dataset == "shapes" else [])
    methods = expand_methods(args.methods or default_methods)
    # Everything that can be wrong is checked before the model loads (minutes, for a real one).
    base_config = (shapes_config() if args.model == "shapes" else InversionConfig()).replace(
        **parse_changes(args.base_changes)
    )
    for method in methods:
        method.config(base_config)
    if args.batch is not None and args.batch < 1:
        raise DiffinvError(f"--batch must be at least 1, got {args.batch}")
    embedder_specs = _embedder_specs(args)
    run_dir = Path(args.out)
    _check_output(run_dir, must_be_dir=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "dataset": dataset,
        "model": args.model,
        "methods": [m.spec for m in methods],
        "base_config": json.loads(base_config.to_json()),
        "seed": args.seed,
    }
    check_run_record(run_dir, record)

    shard = Shard.from_environment()
    args.device = args.device or local_device()
    di = _load(args)
    classifier = None
    if args.model == "shapes":
        from .shapes import MODEL_DIR
        from .shapes.classifier import AttributeClassifier

        classifier = AttributeClassifier.load(MODEL_DIR / "classifier")
    batch = args.batch if args.batch is not None else (8 if args.model == "shapes" else 1)
    runner = BenchRunner(
        di, run_dir, base_config, _embedders(embedder_specs, di), classifier, batch, args.seed, progress=not args.quiet
    )
    count = runner.run(methods, triplets, shard)
    paths = write_reports(run_dir, args.max_examples)
    part = f" (shard {shard.rank + 1} of {shard.world_size})" if shard.world_size > 1 else ""
    print(f"ran {count} (method, triplet) pairs{part}; wrote {paths['md']}, {paths['csv']} and {paths['html']}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library chatter (deprecations, optional-backend notices) is not for the command's user.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    if not args.debug:
        warnings.filterwarnings("ignore")
    import torch

    # Subnormal floats are tens of times slower on x86 CPUs and change nothing here.
    torch.set_flush_denormal(True)
    try:
        {"fit": run_fit, "apply": run_apply, "analogy": run_analogy, "shapes": run_shapes, "bench": run_bench}[
            args.command
        ](args)
    except DiffinvError as error:
        print(f"diffinv: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffinv: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
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
