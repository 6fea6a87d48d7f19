"""`diffinv bench run | report | judge`: the harness's own handlers (`diffinv.bench`), given the model
loader of the command line and, for `run`, its checks of the model and run group first."""

from __future__ import annotations

import argparse

from .load import load_model
from .preflight import common_checks


def run_bench(args: argparse.Namespace) -> None:
    if args.bench_command == "judge":
        from ..bench.judge import judge_command  # checks the run before any model loads

        judge_command(args)
        return
    from ..bench.command import bench_command

    if args.bench_command == "run":
        common_checks(args)
    bench_command(args, load_model)
