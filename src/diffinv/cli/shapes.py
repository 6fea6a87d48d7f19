"""`diffinv shapes check` and `diffinv shapes train`: the bundled world's quality gates, and training a
world from scratch (`diffinv.shapes` does the work; this reads the flags and prints)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DiffinvError
from .load import quiet_libraries, set_up_torch
from .preflight import check_threads


def run_shapes(args: argparse.Namespace) -> None:
    if args.shapes_command == "train":
        check_threads(args.threads)  # before torch, which refuses a count below 1 in its own words
    set_up_torch(args)
    if args.quiet:
        quiet_libraries()
    if args.shapes_command == "train":
        _train(args)
    elif args.shapes_command == "check":
        _check(args)


def _train(args: argparse.Namespace) -> None:
    """Every stage not yet done (or those of --stage), or one finished stage taken further (--extend)."""
    from ..shapes.train import extend_stage, train_world

    plan = None
    if args.extend is not None:
        if len(args.stages or ()) != 1:
            raise DiffinvError("--extend needs exactly one --stage: the denoiser stage to train further")
        plan = extend_stage(Path(args.out), args.stages[0], args.extend)
    print(train_world(Path(args.out), plan, stages=args.stages))


def _check(args: argparse.Namespace) -> None:
    """Each gate printed as it is measured; a failing one makes the command fail."""
    from ..shapes.evaluate import check

    def show(gate) -> None:
        print(
            f"{'PASS' if gate.passed else 'FAIL'}  {gate.name:<16} {gate.value:6.1%}  "
            f"(need ≥ {gate.threshold:.0%})  {gate.detail}",
            flush=True,
        )

    def measuring(stage: str) -> None:  # some stages take minutes on a CPU
        print(f"measuring {stage} …", file=sys.stderr, flush=True)

    gates = check(
        Path(args.model_dir) if args.model_dir else None, on_stage=None if args.quiet else measuring, on_gate=show
    )
    if not all(gate.passed for gate in gates):
        raise DiffinvError("some shapes-world gates fail")
