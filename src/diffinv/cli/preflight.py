"""The checks a command runs before torch or any model loads, so that a mistake costs seconds, not
minutes: the device and threads, the configuration the run will use, the images, the caption file,
whether a download is needed and possible, and whether captions given will be read at all.

Each rule is the one the pipeline follows, asked of its owner rather than restated here: the run's
configuration of `ModelCard.config_for`, the model's kind of `ModelCard.is_editor`, a download of
`ModelCard.needs_download` and `captions_with_blip2`, captions of `InversionConfig.needs_pair_captions`
and `needs_b_caption`, sampling modes of `config.check_sampling_mode`. Every problem is a
`DiffinvError`, which `main` prints as one line with status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import checks
from ..config import InversionConfig, check_sampling_mode
from ..errors import DiffinvError, DiffinvWarning


def common_checks(args: argparse.Namespace):
    """Device and threads; returns the model's card."""
    from ..model_card import model_card

    checks.check_device(args.device)
    check_threads(args.threads)
    if getattr(args, "encoder", None) is not None:
        check_encoder_directory(args.encoder)
    return model_card(args.model)


def check_encoder_directory(directory: str) -> None:
    """--encoder names a directory with a DIFF-token encoder's two files (`diff_encoder`)."""
    from pathlib import Path

    missing = [
        name for name in ("diff_encoder.json", "diff_encoder.safetensors") if not (Path(directory) / name).is_file()
    ]
    if missing:
        raise DiffinvError(
            f"--encoder {directory}: no DIFF-token encoder there (missing {' and '.join(missing)}; "
            "`diffinv encoder train -o DIR` writes one)"
        )


def check_threads(threads: int | None) -> None:
    """--threads, where given, is a count of threads."""
    if threads is not None and threads < 1:
        raise DiffinvError(f"--threads must be at least 1, got {threads}")


def given(args: argparse.Namespace, fields: list[str]) -> dict:
    """The InversionConfig fields among `fields` whose flags were given (a flag left out is None)."""
    return {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}


def planned_config(args: argparse.Namespace, card, fields: list[str]) -> InversionConfig:
    """The model's defaults, the preset and the flags given, with the model's budget for the start of
    D̃ they choose (`ModelCard.config_for`), validated; the resolution checked against the model's
    native size where the directory tells it. --encoder without --init means --init encoder."""
    changes = given(args, fields)
    if getattr(args, "encoder", None) is not None and "init" in fields:
        changes.setdefault("init", "encoder")
    config = card.config_for(getattr(args, "preset", None), changes)
    checks.check_resolution(config.resolution, card.native_resolution())
    return config


def drawing_config(tokens, card, sampling: dict) -> InversionConfig:
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
        config = config.drawn_on(own, editor)
    config = config.replace(**sampling)
    if editor is not None:
        check_sampling_mode(config.sampling_mode, card.name, editor)
    return config


def given_captions(args: argparse.Namespace) -> tuple[str, str] | None:
    """--caption-a and --caption-a-prime as the pair the fit takes, or None for the captioner's."""
    if (args.caption_a is None) != (args.caption_a_prime is None):
        raise DiffinvError("give both --caption-a and --caption-a-prime, or neither")
    return None if args.caption_a is None else (args.caption_a, args.caption_a_prime)


def example_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (A, A′) paths of `fit` or `analogy`: A A_PRIME, then `fit`'s further images taken two by
    two, then each --pair. An odd number of images is one line."""
    more = list(getattr(args, "more_images", None) or [])
    if len(more) % 2:
        raise DiffinvError(
            f"fit takes pairs of images, A A_PRIME [A2 A2_PRIME …], and got {len(more) + 2}, an odd number; "
            f"{more[-1]} has no A′"
        )
    pairs = [(args.a, args.a_prime)] + [(more[i], more[i + 1]) for i in range(0, len(more), 2)]
    return pairs + [tuple(pair) for pair in getattr(args, "pairs", None) or []]


def check_images(*paths: str) -> None:
    """Fail on unreadable, tiny or too elongated images before loading any model (`apply`: its Bs,
    which may be many, are read again one at a time as they are drawn)."""
    read_images(*paths)


def read_images(*paths: str) -> list:
    """Each image read once, as RGB (`images.as_rgb`): an unreadable, tiny or too elongated one
    fails here, before any model loads, and the images read are the ones the command works on."""
    from ..images import as_rgb

    return [as_rgb(path) for path in paths]


def caption_lines(args: argparse.Namespace) -> list[str] | None:
    """The candidate captions of --captions-from, or None; a missing or empty file fails here."""
    from ..model_card import read_caption_lines

    return read_caption_lines(args.captions_from) if args.captions_from else None


def check_downloads(args: argparse.Namespace, card, needs_captioner: bool) -> None:
    """Say now, not after minutes of retries, that a model must be downloaded but cannot be
    (offline, or the hub unreachable); say once that BLIP-2 is about to be downloaded, and how to
    do without it."""
    from ..model_card import hub_cache_file

    offline = args.offline or checks.hub_offline()
    skip = "give --caption-a and --caption-a-prime (and --prompt for B), or --captions-from FILE"
    if card.needs_download():
        if offline:
            raise DiffinvError(
                f"{card.source}: not a local directory and not in the hub cache, and offline mode is on "
                "(--offline or HF_HUB_OFFLINE=1); give a local directory or download it once online"
            )
        if not _hub_reachable(card.source):
            raise DiffinvError(f"{card.source}: not in the hub cache, and the hub cannot be reached to download it")
    if not (needs_captioner and card.captions_with_blip2 and not args.captions_from):
        return
    from ..captioners import DEFAULT_BLIP2  # here: captioners imports torch

    if hub_cache_file(DEFAULT_BLIP2, "config.json") is None:
        if offline:
            raise DiffinvError(
                f"captions are needed but the captioner {DEFAULT_BLIP2} is not in the hub cache; {skip}"
            )
        if not _hub_reachable(DEFAULT_BLIP2):
            raise DiffinvError(
                f"captions are needed but the captioner {DEFAULT_BLIP2} is not in the hub cache and the hub "
                f"cannot be reached; {skip}"
            )
        print(f"diffinv: downloading the captioner {DEFAULT_BLIP2} (several GB); to skip it, {skip}", file=sys.stderr)


def _hub_reachable(repo: str) -> bool:
    """Whether the hub answers about `repo` within seconds (any answer: gated, missing… the loader
    then says what)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().model_info(repo, timeout=10)
    except HfHubHTTPError:  # the hub answered (gated, missing…): the loader says what
        return True
    except Exception:  # no network, DNS, time-out: the download would retry for minutes
        return False
    return True


def captioner_use(args: argparse.Namespace, card, config: InversionConfig, fitting: bool, drawing: bool) -> bool:
    """Whether the run needs the captioner (`InversionConfig.needs_pair_captions` for the fit,
    `needs_b_caption` for B), the rule the pipeline follows. Captions given that the run will not
    read (--captions-from, --caption-a/--caption-a-prime) are said to do nothing, in one line."""
    editor = bool(card.is_editor())  # None (a hub model not in the cache): as a text-to-image model
    pair = fitting and config.needs_pair_captions(editor)
    # --caption-a/--caption-a-prime describe the first pair: further pairs are the captioner's
    uncaptioned = getattr(args, "caption_a", None) is None or len(example_paths(args)) > 1
    needs = (pair and uncaptioned) or (drawing and args.prompt is None and config.needs_b_caption(editor))
    if fitting and getattr(args, "caption_a", None) is not None and not pair:
        _unused("--caption-a and --caption-a-prime", config, editor)
    if args.captions_from and not needs:
        _unused("--captions-from", config, editor)
    return needs


def _unused(flags: str, config: InversionConfig, editor: bool) -> None:
    """One warning line: `flags` were given, and why this run reads none of them."""
    if config.steps == 0:
        why = f"D̃ is taken from the model's encoder with no fit (init {config.init!r}, steps 0)"
    elif editor:
        why = "an instruction editor's fit reads no captions with these settings (alpha 0 or no CLIP loss)"
    else:
        why = "these settings read no captions"
    warnings.warn(f"{flags} changes nothing here: {why}", DiffinvWarning, stacklevel=1)
