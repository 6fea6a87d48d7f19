"""Which model a command loads, and how: what a model loader is given.

The command line's loader (`cli.load.load_model`) takes a `ModelOptions`, as does any loader given
to the bench (`bench.command.run_command`). Torch-free: building options loads nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import DiffinvError

# --memory: "default" changes nothing; "low" fits a 10–16 GB GPU (`diffinv.memory`, docs/usage.md "Low memory")
MEMORY_MODES = ("default", "low")


def check_memory_mode(memory: str) -> None:
    """Refuse, in one line, a memory mode other than `MEMORY_MODES`."""
    if memory not in MEMORY_MODES:
        raise DiffinvError(f"memory must be one of {', '.join(MEMORY_MODES)}; got {memory!r}")


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """The model and run flags of a command that loads a model (`diffinv analogy --help`, "model
    and run"): None and False leave the choice to the loader and the model's card."""

    model: str  # --model: hub id, directory, 'shapes-editor' or 'shapes'
    device: str | None = None  # --device: cpu, cuda, cuda:N or mps (None: CUDA if present)
    dtype: str | None = None  # --dtype: float32, float16 or bfloat16 (None: by device)
    clip_model: str | None = None  # --clip-model (None: the CLIP matching the model's text encoder)
    captions_from: str | os.PathLike | None = None  # --captions-from: caption by CLIP retrieval among its lines
    offline: bool = False  # --offline: never use the network
    threads: int | None = None  # --threads: torch's CPU threads (None: torch's default)
    quiet: bool = False  # --quiet: no loading bars
    diff_encoder: str | os.PathLike | None = None  # --encoder: a DIFF-token encoder directory (None: the model's)
    memory: str = "default"  # --memory: "low" for a 10–16 GB GPU (`diffinv.memory`)
