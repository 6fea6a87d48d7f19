"""Loading models, or saying in one line why not: the device and dtype, which backbone a model
directory asks for, and the errors of a missing model turned into what to do about them.

Shared by the pipeline (`DifferenceInversion.from_pretrained`) and the baselines, which load
their own diffusers pipelines the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch

from .backbones import InstructPix2PixBackbone, StableDiffusionBackbone, StableDiffusionXLBackbone
from .checks import check_device
from .errors import DiffinvError
from .model_card import EDITOR_PIPELINE, looks_like_a_path

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Loaded = TypeVar("Loaded")


def load_or_explain(name: str, offline: bool, load: Callable[[], Loaded]) -> Loaded:
    """`load()`, with a missing or unreadable model `name` (a directory or a hub id) turned into one
    `DiffinvError` line that says what to do. offline: the hub was not to be asked, only its cache."""
    try:
        return load()
    except (OSError, ValueError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        if os.path.isdir(name):
            raise DiffinvError(f"could not load the model directory {name!r}: {first_line}") from None
        if looks_like_a_path(name):
            raise DiffinvError(f"{name}: no such model directory (and not a hub id of the form owner/name)") from None
        if offline:
            raise DiffinvError(
                f"could not load {name!r}: it is not in the hub cache, and offline mode is on "
                "(--offline or HF_HUB_OFFLINE=1); download it once online, or give a local directory"
            ) from None
        raise DiffinvError(
            f"could not load {name!r} from the hub or its cache ({type(error).__name__}); check the id and the "
            "network, log in for gated models, or give a local directory"
        ) from None


def resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """Defaults: CUDA if present, else CPU; bfloat16 on CUDA (fp16's range can underflow the small
    gradients reaching D̃), float32 on CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, torch.device):
        check_device(str(device))
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DiffinvError(f"device {str(device)!r} asked for, but PyTorch sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DiffinvError(
                f"device {str(device)!r} asked for, but PyTorch sees {torch.cuda.device_count()} GPU(s)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DiffinvError("device 'mps' asked for, but PyTorch has no MPS (Apple GPU) support here")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise DiffinvError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    return device, dtype


def backbone_class(source: str, local_files_only: bool) -> type[StableDiffusionBackbone]:
    """The backbone for a model, from the pipeline class its `model_index.json` names: SDXL for
    `StableDiffusionXL…`, the instruction editor for `StableDiffusionInstructPix2PixPipeline`,
    SD 1.x / 2.x otherwise. Reads only that small file (from the hub or its cache for a hub id);
    an OSError when it cannot be had, which `load_or_explain` words."""
    from diffusers import DiffusionPipeline

    class_name = DiffusionPipeline.load_config(source, local_files_only=local_files_only).get("_class_name", "")
    if class_name == EDITOR_PIPELINE:
        return InstructPix2PixBackbone
    return StableDiffusionXLBackbone if class_name.startswith("StableDiffusionXL") else StableDiffusionBackbone
