"""The `diffinv` command: fit, apply, analogy, export, defaults, shapes, bench, demo, encoder.

Every argument, every output path and every hyperparameter is checked before torch or a model
loads; a problem prints one line on stderr and exits with status 2. Outputs never replace an
existing file without --overwrite, never an input, and are written under temporary names and
renamed into place at the end. An unexpected failure prints one line and exits with 1
(`--debug` shows the traceback).

The package: `flags.py` (the flags several commands share) and `parser.py` (the command tree);
`preflight.py` (the checks before any model loads) and `load.py` (torch and the model); the
handlers in `commands.py` (fit, apply, analogy, export, defaults), `shapes.py`, `demo.py`,
`bench.py` and `encoder.py`; here `main`, which turns their errors into messages and exit codes. Nothing imported
at the top of these modules imports torch, so `diffinv --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from ..errors import DiffinvError, DiffinvWarning, Interrupted  # torch-free: `--help` and the checks stay instant
from .bench import run_bench
from .commands import run_analogy, run_apply, run_defaults, run_export, run_fit
from .demo import run_demo
from .encoder import run_encoder
from .parser import build_parser
from .shapes import run_shapes

__all__ = ["build_parser", "main"]

COMMANDS = {
    "fit": run_fit,
    "apply": run_apply,
    "analogy": run_analogy,
    "export": run_export,
    "defaults": run_defaults,
    "shapes": run_shapes,
    "demo": run_demo,
    "bench": run_bench,
    "encoder": run_encoder,
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"diffinv: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command of `argv` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    from ..threads import prepare_environment

    prepare_environment()  # before torch is imported
    if getattr(args, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = "1"  # before the hub libraries read it
    # Library chatter (deprecations, optional-backend notices, download retries) is not for the
    # command's user; diffinv's own warnings are, as one line each.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    with warnings.catch_warnings():
        if not args.debug:
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("always", category=DiffinvWarning)
            warnings.showwarning = _show_warning
        return _run(args)


def _interrupted_note(args: argparse.Namespace, interrupt: KeyboardInterrupt) -> str:
    """What Ctrl-C left behind: the work's own account (`Interrupted`), else the command's."""
    if isinstance(interrupt, Interrupted) and interrupt.args:
        return interrupt.args[0]
    if args.command == "shapes" and args.shapes_command == "train":
        return f"the finished stages and the last checkpoint are kept in {args.out}; the same command resumes"
    if args.command == "encoder":
        return f"{args.output} keeps the run's record and its last checkpoint; the same command resumes"
    if args.command == "demo":
        return "the demo stopped"
    if args.command == "bench" and args.bench_command == "run":
        return f"no result was written ({args.out} holds at most its run.json); the same command starts it again"
    # fit, analogy, export and the judge write their files under temporary names and rename them at the end
    return "no output was written"


def _run(args: argparse.Namespace) -> int:
    """The command's handler, its errors turned into one line each and an exit status."""
    try:
        COMMANDS[args.command](args)
    except DiffinvError as error:
        print(f"diffinv: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output went away (`diffinv defaults | head -1`): stop quietly, as other
        # command-line tools do, and keep Python from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status of a tool that a closed pipe ended
    except KeyboardInterrupt as interrupt:
        print(f"diffinv: interrupted; {_interrupted_note(args, interrupt)}", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence against tracebacks
        if args.debug:
            raise
        first_line = (str(error).splitlines() or [""])[0]
        print(
            f"diffinv: unexpected error: {type(error).__name__}: {first_line} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1
    return 0
