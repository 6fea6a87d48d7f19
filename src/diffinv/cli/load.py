"""Torch and the model of a command, once every check has passed: torch's threads, quiet libraries under
--quiet, and `DifferenceInversion.from_pretrained` with the flags of the model and run group, given to
`load_model` as a `ModelOptions` (`model_options` builds it from the flags; the bench builds its own).

Torch-free to import: torch and the libraries come in inside these functions, so that `diffinv --help`
and every refusal before loading stay instant.
"""

from __future__ import annotations

import argparse

from ..model_options import ModelOptions


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The model and run group's flags (`flags.add_common`) as the loader's options."""
    return ModelOptions(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        clip_model=args.clip_model,
        captions_from=args.captions_from,
        offline=args.offline,
        threads=args.threads,
        quiet=args.quiet,
        diff_encoder=getattr(args, "encoder", None),
        memory=getattr(args, "memory", "default"),
    )


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


def load_model(options: ModelOptions):
    """The model of `options` (--model), with --captions-from as its captioner when given; torch's
    threads and, under --quiet, the libraries' loading bars set up first."""
    from ..captioners import ClipRetrievalCaptioner
    from ..model_card import read_caption_lines
    from ..pipeline import DifferenceInversion
    from ..threads import set_up_torch

    set_up_torch(options.threads)
    if options.quiet:
        quiet_libraries()
    di = DifferenceInversion.from_pretrained(
        options.model,
        device=options.device,
        dtype=options.dtype,
        clip_model=options.clip_model,
        offline=options.offline or None,
        diff_encoder=options.diff_encoder,
        memory=options.memory,
    )
    if options.captions_from:
        di.captioner = ClipRetrievalCaptioner(di.clip, read_caption_lines(options.captions_from))
    return di
