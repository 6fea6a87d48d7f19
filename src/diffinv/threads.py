"""How many CPU threads torch uses, and how its OpenMP threads wait.

Torch-free until `set_up_torch` runs, so that `prepare_environment` can set OpenMP's
environment before torch (and its OpenMP runtime) is first imported.
"""

from __future__ import annotations


def prepare_environment() -> None:
    """Set the OpenMP environment the command line runs under. Call before importing torch."""


def set_up_torch(threads: int | None) -> None:
    """Torch's thread count (`threads`, or the default when None) and its CPU float settings."""
    import torch

    # Subnormal floats are tens of times slower on x86 CPUs and change nothing here.
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
