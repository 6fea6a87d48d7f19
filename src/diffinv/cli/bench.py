"""`diffinv bench run | report | judge`: the flags turned into the harness's options (`RunOptions`,
`ReportOptions`, `JudgeOptions`, here and nowhere else) and handed to its handlers (`diffinv.bench`);
`run` gets the command line's model loader, after its checks of the model and run group."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .load import load_model
from .preflight import common_checks

if TYPE_CHECKING:
    from ..bench.command import ReportOptions, RunOptions
    from ..bench.judge import JudgeOptions


def run_bench(args: argparse.Namespace) -> None:
    """`diffinv bench ACTION`: the action's handler, given its options."""
    if args.bench_command == "judge":
        from ..bench.judge import judge_command  # checks the run before any model loads

        judge_command(judge_options(args))
    elif args.bench_command == "report":
        from ..bench.command import report_command

        report_command(report_options(args))
    else:
        from ..bench.command import run_command

        common_checks(args)
        run_command(run_options(args), load_model)


def run_options(args: argparse.Namespace) -> RunOptions:
    """`diffinv bench run`'s flags; a repeatable flag left out (None) as an empty sequence."""
    from ..bench.command import RunOptions

    return RunOptions(
        out=args.out,
        dataset=args.dataset,
        data=args.data,
        n=args.n,
        triplet_seed=args.triplet_seed,
        families=args.families,
        split=args.split,
        examples=args.examples,
        methods=args.methods or (),
        base_changes=args.base_changes,
        embedders=args.embedders or (),
        batch=args.batch,
        baseline_models=args.baseline_models or (),
        max_examples=args.max_examples,
        model=args.model,
        clip_model=args.clip_model,
        captions_from=args.captions_from,
        offline=args.offline,
        device=args.device,
        dtype=args.dtype,
        threads=args.threads,
        memory=args.memory,
        seed=args.seed,
        quiet=args.quiet,
    )


def report_options(args: argparse.Namespace) -> ReportOptions:
    """`diffinv bench report`'s arguments."""
    from ..bench.command import ReportOptions

    return ReportOptions(run_dir=args.run_dir, max_examples=args.max_examples, baseline=args.baseline)


def judge_options(args: argparse.Namespace) -> JudgeOptions:
    """`diffinv bench judge`'s arguments."""
    from ..bench.judge import JudgeOptions

    return JudgeOptions(
        run_dir=args.run_dir,
        against=args.against,
        judge=args.judge,
        method=args.method,
        device=args.device,
        seed=args.seed,
        data=args.data,
        quiet=args.quiet,
    )
