"""Torch and the model of a command, once every check has passed: torch's threads, quiet libraries under
--quiet, and `DifferenceInversion.from_pretrained` with the flags of the model and run group.

Torch-free to import: torch and the libraries come in inside these functions, so that `diffinv --help`
and every refusal before loading stay instant.
"""

from __future__ import annotations

import argparse

from .preflight import caption_lines


def set_up_torch(args: argparse.Namespace) -> None:
    """Torch's threads as --threads says (`threads.set_up_torch`; default torch's)."""
    from ..threads import set_up_torch

    set_up_torch(getattr(args, "threads", None))


def quiet_libraries() -> None:
    """--quiet: no loading bars from diffusers and transformers either, not only no bars of ours."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_model(args: argparse.Namespace):
    """The model of --model, with --captions-from as its captioner when given."""
    from ..captioners import ClipRetrievalCaptioner
    from ..pipeline import DifferenceInversion

    set_up_torch(args)
    if args.quiet:
        quiet_libraries()
    di = DifferenceInversion.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, clip_model=args.clip_model, offline=args.offline or None
    )
    if args.captions_from:
        di.captioner = ClipRetrievalCaptioner(di.clip, caption_lines(args))
    return di
