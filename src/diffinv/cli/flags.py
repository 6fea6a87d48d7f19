"""The flags several commands share: the model and run group, the hyperparameter tables and the groups
built from them, and the argparse types of their values.

Each hyperparameter flag is one row of `CONFIG_FLAGS` (fitting) or `SAMPLING_FLAGS` (drawing B′) and
defaults to None, "the model's default", so that the model card decides every value the user does
not give. Torch-free, like everything `diffinv --help` imports.
"""

from __future__ import annotations

import argparse
import math
import os

from .. import checks
from ..checks import TOKEN_SUFFIX
from ..config import CLIP_LOSS_SPACES, INITS, PRESETS, PROMPT_SOURCES, SAMPLING_MODES, InversionConfig
from ..model_options import MEMORY_MODES

# The bundled offline world's instruction editor, with DIFF tokens fitted to the pair: its analogies come
# out right about twice as often as those of the world's text-to-image model ("shapes"), on edits no
# learned part has seen as on the others (docs/results.md, the table at its top).
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
    ("--init", "init", str, "initial DIFF tokens (auto: the encoder's where they reproduce the pairs, else a fit)"),
    (
        "--encoder-tolerance",
        "encoder_tolerance",
        float,
        "with --init auto: the share of the pairs' difference the encoder's D̃ may leave and still be used",
    ),
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
# the fitting flags outside CONFIG_FLAGS (switches and a step count, made by `add_fit_flags`)
FIT_ONLY = ["steps", "hard_tokens", "use_token_consistency", "use_clip_loss"]
CHOICES = {
    "init": INITS,
    "clip_loss_space": CLIP_LOSS_SPACES,
    "prompt_source": PROMPT_SOURCES,
    "sampling_mode": SAMPLING_MODES,
}


def fields(flags) -> list[str]:
    """The InversionConfig fields of rows of a flag table (`CONFIG_FLAGS`, `SAMPLING_FLAGS`)."""
    return [field for _, field, _, _ in flags]


def _paper(field: str) -> str:
    value = getattr(PAPER, field)
    return "the model's" if value is None else f"the model's; paper {value}"


def add_common(parser: argparse.ArgumentParser, default_model: str = DEFAULT_MODEL, why: str = "") -> None:
    """The model and run group of every command that loads a model (`why`: a word on its default)."""
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
        "--memory",
        choices=MEMORY_MODES,
        default="default",
        help="'low' for a 10-16 GB GPU: UNet checkpointing in the fit, VAE slicing and tiling, models offloaded "
        "to the CPU between stages on CUDA (slower; docs/usage.md, \"Low memory\"); default 'default'",
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


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace output files that already exist")


def add_flags(parser: argparse.ArgumentParser, flags, title: str) -> None:
    """One group with a flag per row of `flags` (`CONFIG_FLAGS`, `SAMPLING_FLAGS`), each defaulting to
    None so that the model's value applies."""
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


def add_fit_flags(parser: argparse.ArgumentParser) -> None:
    """What `fit` and `analogy` take to fit D̃: the preset, the hyperparameters, the ablations, captions."""
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a named method on the model's step budget; the flags below change it further "
        "(paper: the paper's method; default: the model's)",
    )
    add_flags(parser, CONFIG_FLAGS, "Difference Inversion hyperparameters")
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
    group.add_argument(
        "--encoder",
        metavar="DIR",
        help="start D̃ from this DIFF-token encoder, a directory `diffinv encoder train` wrote (implies --init "
        "encoder; without it --init encoder reads the model directory's diff_encoder/)",
    )
    group.add_argument("--caption-a", help="caption of A (skips the captioner)")
    group.add_argument("--caption-a-prime", help="caption of A′ (skips the captioner)")


def weighted_file(text: str) -> tuple[str, float]:
    """argparse type of --also: FILE or FILE:WEIGHT (a name ending in .safetensors, or an existing
    file, is taken whole)."""
    path, separator, weight = text.rpartition(":")
    if not separator or not path or os.path.exists(text) or text.endswith(TOKEN_SUFFIX):
        return text, 1.0  # no weight, or a colon in the file's name (c:/d.safetensors)
    try:
        value = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text}: expected FILE or FILE:WEIGHT with a number as WEIGHT, got weight {weight!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"the weight of {path} must be a finite number, got {weight}")
    return path, value
