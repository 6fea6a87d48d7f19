"""`diffinv demo`: the Gradio page of `diffinv.demo`, after the port, the model and gradio are checked."""

from __future__ import annotations

import argparse

from ..errors import DiffinvError


def run_demo(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise DiffinvError(f"--port must be between 1 and 65535, got {args.port}")
    from ..model_card import model_card

    model_card(args.model)  # a bad directory is reported before the page starts
    try:
        import gradio  # noqa: F401  (imported here only: `diffinv --help` stays fast)
    except ImportError:
        raise DiffinvError("the demo needs gradio: pip install 'diffinv[demo]' (or pip install gradio)") from None
    from ..demo import launch

    print(f"diffinv demo on http://{args.host}:{args.port} (Ctrl+C stops it)")
    launch(args.model, host=args.host, port=args.port)
