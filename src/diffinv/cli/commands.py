"""The commands on DIFF tokens: `fit`, `apply`, `analogy`, `export` and `defaults`.

Each handler runs the pre-load checks (`preflight.py`) and plans every output file (`checks.Outputs`)
before `load_model`, so that a mistake is one line within seconds; then it does the work and writes
its files under temporary names, renamed into place at the end.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ..checks import IMAGE_SUFFIXES, TOKEN_SUFFIX, Outputs
from ..config import InversionConfig
from ..errors import DiffinvError, DiffinvWarning, Interrupted
from .flags import CONFIG_FLAGS, FIT_ONLY, PAPER, SAMPLING_FLAGS, fields
from .load import load_model, model_options
from .preflight import (
    caption_lines,
    captioner_use,
    check_downloads,
    check_images,
    common_checks,
    drawing_config,
    example_paths,
    given,
    given_captions,
    planned_config,
    read_images,
)


def _pairs_of(images: list) -> list[tuple]:
    """Images read in pair order (A, A′, A2, A2′, …) as pairs."""
    return [(images[i], images[i + 1]) for i in range(0, len(images), 2)]


def run_fit(args: argparse.Namespace) -> None:
    """Learn DIFF tokens from A and A′ (and any further example pairs) and write the token file."""
    card = common_checks(args)
    config = planned_config(args, card, fields(CONFIG_FLAGS) + FIT_ONLY)
    captions = given_captions(args)
    paths = [path for pair in example_paths(args) for path in pair]
    outputs = Outputs(paths, args.overwrite)
    tokens_path = outputs.add(args.output, (TOKEN_SUFFIX,), "token file")
    pairs = _pairs_of(read_images(*paths))
    caption_lines(args)  # a bad caption file is reported now
    check_downloads(args, card, captioner_use(args, card, config, fitting=True, drawing=False))

    di = load_model(model_options(args))
    progress = not args.quiet
    if len(pairs) == 1:
        tokens = di.fit(*pairs[0], config, captions=captions, seed=args.seed, progress=progress)
    else:  # one D̃ from every pair; captions given are the first pair's
        tokens = di.fit(pairs, config=config, captions=captions, seed=args.seed, progress=progress)
    with outputs.writing() as write:
        write(tokens_path, tokens.save)
    fitted_on = f"{len(pairs)} pairs; first " if len(pairs) > 1 else ""
    print(f"wrote {tokens_path}  ({fitted_on}prompt_A: {tokens.prompt_a!r}; prompt_A′: {tokens.prompt_a_prime!r})")
    if tokens.hard_text:
        print(f"hard DIFF tokens: {tokens.hard_text!r}")
    _say_route(tokens)


def _say_route(tokens) -> None:
    """With --init auto: whether D̃ is the encoder's or fitted, and the check that decided."""
    if tokens.encoder_check is not None:
        from ..encoder_check import EncoderCheck

        print(EncoderCheck.from_dict(tokens.encoder_check).describe())


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
    """Draw B′ for each B with the DIFF tokens of a file (combined with --also), writing each as it finishes."""
    card = common_checks(args)
    sampling = given(args, fields(SAMPLING_FLAGS))
    card.default_config().replace(**sampling)  # invalid values are reported before anything loads
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise DiffinvError(f"{out_dir}: exists and is not a directory")
    also = [path for path, _ in args.also]
    outputs = Outputs([args.tokens, *also, *args.b], args.overwrite)
    paths = [outputs.add(out_dir / name, (".png",), "B′ image") for name in _apply_names(args.b)]
    check_images(*args.b)
    caption_lines(args)  # a bad caption file is reported now

    from ..tokens import DiffTokens

    tokens = DiffTokens.load(args.tokens)
    if args.also or args.weight != 1:
        from ..export import combine

        others = [DiffTokens.load(path) for path in also]
        tokens = combine([tokens, *others], [args.weight, *(weight for _, weight in args.also)])
    config = drawing_config(tokens, card, sampling)
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
    check_downloads(args, card, captioner_use(args, card, config, fitting=False, drawing=True))
    di = load_model(model_options(args))
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


def run_analogy(args: argparse.Namespace) -> None:
    """Fit on A and A′, draw B′, and write B′, the grid A | A′ | B | B′ and the tokens together."""
    card = common_checks(args)
    config = planned_config(args, card, fields(CONFIG_FLAGS + SAMPLING_FLAGS) + FIT_ONLY)
    captions = given_captions(args)
    example_files = [path for pair in example_paths(args)[1:] for path in pair]  # --pair
    outputs = Outputs([args.a, args.a_prime, args.b, *example_files], args.overwrite)
    b_prime_path = outputs.add(args.output, IMAGE_SUFFIXES, "B′ image")
    grid_path = outputs.add(b_prime_path.with_name(f"{b_prime_path.stem}-grid.png"), (".png",), "grid")
    tokens_path = outputs.add(b_prime_path.with_suffix(TOKEN_SUFFIX), (TOKEN_SUFFIX,), "token file")
    images = read_images(args.a, args.a_prime, args.b)  # read once: for the analogy and the grid
    examples = _pairs_of(read_images(*example_files))
    caption_lines(args)  # a bad caption file is reported now
    check_downloads(args, card, captioner_use(args, card, config, fitting=True, drawing=True))

    from ..grid import image_grid

    di = load_model(model_options(args))
    b_prime, tokens = di.analogy(
        *images,
        config,
        seed=args.seed,
        captions=captions,
        prompt_b=args.prompt,
        progress=not args.quiet,
        **({"examples": examples} if examples else {}),
    )
    # ASCII primes: Pillow's built-in font has no ′.
    grid = image_grid([*images, b_prime], ["A", "A'", "B", "B'"])
    with outputs.writing() as write:
        write(b_prime_path, b_prime.save)
        write(grid_path, grid.save)
        write(tokens_path, tokens.save)
    print(f"wrote {b_prime_path}, {grid_path} and {tokens_path}")
    _say_route(tokens)


def run_export(args: argparse.Namespace) -> None:
    """Write a token file's DIFF tokens in another tool's format; no model is loaded."""
    from ..export import FORMATS, check_token

    check_token(args.token)
    outputs = Outputs([args.tokens], args.overwrite)
    path = outputs.add(args.output, (FORMATS[args.format],), f"{args.format} export")

    from ..export import export, words_text
    from ..tokens import DiffTokens

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
    """Print every hyperparameter with the model's default beside the paper's; no model is loaded."""
    import dataclasses

    from ..model_card import model_card

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
