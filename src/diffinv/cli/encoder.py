"""`diffinv encoder train`: a DIFF-token encoder for a model, trained on a directory of before/after pairs.

The output directory OUT holds, when training is done, `diff_encoder.json` and
`diff_encoder.safetensors` (what `--encoder OUT` or a model directory's `diff_encoder/` is read from)
and `encoder_training.json`, the record of the run: what it trained on and with which settings,
whether it finished, its loss curve. While it trains, OUT also holds the run's checkpoint
(`checkpoint/`, see `encoder_training`), from which the same command resumes. An OUT that holds
anything else, or a run of other settings, is refused unless --overwrite (which starts afresh,
removing only the files named here).

Under `accelerate launch` every process runs this command; each loads the model and reads the data,
the training is data-parallel (`encoder_training`), and only the main process writes. Torch-free to
import: `diffinv --help` builds the parser from here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..checks import check_resolution
from ..errors import DiffinvError
from .flags import add_common
from .load import load_model, model_options
from .preflight import caption_lines, common_checks

RECORD_NAME = "encoder_training.json"
RECORD_FORMAT = "diffinv.encoder-training/1"
CHECKPOINT_DIR = "checkpoint"
CAPTION_BATCH = 16  # images per captioner call, for pairs of a text-to-image model given without captions


def add_encoder_parser(commands) -> None:
    """`diffinv encoder train` and its flags, as one more command of `commands` (the parser's subparsers)."""
    encoder = commands.add_parser(
        "encoder",
        help="train a DIFF-token encoder for a model on before/after pairs (--init encoder starts from it)",
        description="A DIFF-token encoder predicts D̃ from a pair's CLIP image features; see docs/usage.md.",
    )
    actions = encoder.add_subparsers(dest="encoder_command", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train (or resume) an encoder into -o OUT",
        description=(
            "Train a DIFF-token encoder for --model on the pairs of --data: on an instruction editor with the "
            "editor's loss, on a text-to-image model with the paper's token-consistency loss. Checkpoints every "
            "--checkpoint-every steps and on Ctrl-C; the same command resumes. Data-parallel under `accelerate "
            "launch -m diffinv.cli encoder train …`."
        ),
    )
    train.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="pair folders DIR/<pair>/before.png + after.png [+ captions.txt with 'before: …' / 'after: …' lines], "
        "or a local copy of the InstructPix2Pix data (DIR/<dir>/prompt.json, <seed>_0.jpg, <seed>_1.jpg)",
    )
    train.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory of the encoder")
    train.add_argument("--steps", type=int, default=2000, help="optimisation steps (default 2000)")
    train.add_argument("--batch", type=int, default=32, help="pairs per step, across all processes (default 32)")
    train.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine schedule (default 1e-3)")
    train.add_argument("--n-tokens", type=int, help="DIFF tokens the encoder makes (default: the model's n_tokens)")
    train.add_argument(
        "--resolution", type=int, help="images are centre-cropped and resized to this² (default: the model's native)"
    )
    train.add_argument("--max-pairs", type=int, help="train on the first N pairs only (default: all)")
    train.add_argument(
        "--one-way",
        action="store_true",
        help="do not also train each pair turned round (after → before)",
    )
    train.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    train.add_argument("--log-every", type=int, default=100, help="steps between loss lines (default 100)")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUT that holds another run or other files (only this command's files are removed)",
    )
    add_common(train)


def run_encoder(args: argparse.Namespace) -> None:
    """`diffinv encoder ACTION`."""
    if args.encoder_command == "train":
        train_encoder(args)


def train_encoder(args: argparse.Namespace) -> None:
    """Check everything, then load the model, read the pairs and train; the main process writes OUT."""
    card = common_checks(args)
    for flag, value in (
        ("--steps", args.steps),
        ("--batch", args.batch),
        ("--checkpoint-every", args.checkpoint_every),
        ("--log-every", args.log_every),
        ("--n-tokens", args.n_tokens),
        ("--resolution", args.resolution),
        ("--max-pairs", args.max_pairs),
    ):
        if value is not None and value < 1:
            raise DiffinvError(f"{flag} must be at least 1, got {value}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise DiffinvError(f"--lr must be a finite number > 0, got {args.lr}")
    check_resolution(args.resolution, card.native_resolution())
    from ..pair_data import find_pairs

    layout, pairs = find_pairs(args.data)
    pairs = pairs[: args.max_pairs] if args.max_pairs else pairs
    caption_lines(args)  # a bad caption file is reported now
    out = Path(args.output)
    run = dict(
        model=card.name,
        data=str(Path(args.data).resolve()),
        layout=layout,
        pairs=len(pairs),
        steps=args.steps,
        batch=args.batch,
        learning_rate=args.lr,
        n_tokens=args.n_tokens or card.default_config().n_tokens,
        resolution=args.resolution,
        both_ways=not args.one_way,
        seed=args.seed,
    )
    state = plan_output(out, run, args.overwrite)
    if state == "done":
        print(f"{out}: already trained by this command, nothing to do (--overwrite trains it again)")
        return

    import torch
    from accelerate import Accelerator

    from ..encoder_training import read_checkpoint_state, remove_checkpoint, train_diff_encoder
    from ..pair_data import load_pair_image

    # On CPU (asked for, or no GPU) processes launched together talk through gloo (accelerate's "multi-CPU").
    on_cpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    accelerator = Accelerator(cpu=on_cpu, device_placement=False)
    main = accelerator.is_main_process
    if main and state == "fresh":
        _clear(out)
        _write_record(out, {"format": RECORD_FORMAT, "run": run, "finished": False})
    accelerator.wait_for_everyone()  # the other processes read what the main one prepared
    device = args.device if args.device not in (None, "cuda") else str(accelerator.device)  # one GPU per process
    di = load_model(replace(model_options(args), device=device))
    backbone = di.backbone
    size = args.resolution or backbone.native_resolution
    size = max(backbone.size_multiple, size // backbone.size_multiple * backbone.size_multiple)
    befores = [_reader(load_pair_image, pair.before, size) for pair in pairs]
    afters = [_reader(load_pair_image, pair.after, size) for pair in pairs]
    prompts = None if backbone.takes_instructions else _prompts(di, pairs, size, args.quiet)

    # The record keeps the loss curve and the time of every leg of an interrupted run: the losses
    # logged after its checkpoint are dropped, since those steps are taken again.
    record = _read_record(out) if state == "resume" else None
    record = record or {"format": RECORD_FORMAT, "run": run, "finished": False, "losses": [], "seconds": 0.0}
    reached = (read_checkpoint_state(out / CHECKPOINT_DIR) or {}).get("step", 0)
    record["losses"] = [entry for entry in record.get("losses", []) if entry[0] <= reached]
    record["kind"], earlier_seconds, start = _kind(backbone), record.get("seconds", 0.0), time.time()

    def log(step: int, loss: float) -> None:
        record["losses"].append([step, round(loss, 6)])
        record["seconds"] = round(earlier_seconds + time.time() - start, 1)
        _write_record(out, record)
        if not args.quiet:
            from tqdm.auto import tqdm

            tqdm.write(f"step {step}/{args.steps}: loss {loss:.4f}", file=sys.stderr)

    torch.manual_seed(args.seed)  # the encoder's initial weights (accelerate's DDP spreads the main process's)
    encoder = train_diff_encoder(
        backbone,
        di.clip,
        befores,
        afters,
        args.steps,
        n_tokens=run["n_tokens"],
        batch=args.batch,
        learning_rate=args.lr,
        checkpoint=out / CHECKPOINT_DIR,
        checkpoint_every=args.checkpoint_every,
        generator=torch.Generator().manual_seed(args.seed),
        progress=not args.quiet,
        both_ways=run["both_ways"],
        prompts=prompts,
        accelerator=accelerator,
        log=log,
        log_every=args.log_every,
    )
    if main:
        encoder.save_pretrained(out)  # each file under a temporary name, then moved into place
        record |= {"finished": True, "processes": accelerator.num_processes}
        record["seconds"] = round(earlier_seconds + time.time() - start, 1)
        _write_record(out, record)  # last: the run is finished once this says so
        remove_checkpoint(out / CHECKPOINT_DIR)
        print(f"wrote {out}  (use it: diffinv fit --model {card.name} --init encoder --encoder {out} …)")
    accelerator.wait_for_everyone()


def plan_output(out: Path, run: dict, overwrite: bool) -> str:
    """What to do with OUT for this `run`: "fresh" (train from the start), "resume" (this run's
    unfinished checkpoint is there) or "done" (this run finished there); anything else is refused
    unless `overwrite`, which makes it "fresh"."""
    if out.exists() and not out.is_dir():
        raise DiffinvError(f"{out}: is a file; the encoder is written as a directory, give another -o")
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    record = _read_record(out)
    if overwrite:
        return "fresh"
    if record is None:
        raise DiffinvError(
            f"{out}: exists and is not a DIFF-token encoder's training run; give another -o, or --overwrite to "
            "write the encoder into it anyway"
        )
    differing = [key for key in run if record.get("run", {}).get(key) != run[key]]
    if differing:
        key = differing[0]
        raise DiffinvError(
            f"{out}: holds a training run of other settings ({key} {record.get('run', {}).get(key)!r}, not "
            f"{run[key]!r}); repeat that run's command to resume it, give another -o, or --overwrite to start afresh"
        )
    return "done" if record.get("finished") else "resume"


def _read_record(out: Path) -> dict | None:
    path = out / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _write_record(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    temporary = out / f".{RECORD_NAME}.partial-{os.getpid()}"
    temporary.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(temporary, out / RECORD_NAME)


def _clear(out: Path) -> None:
    """Remove this command's files from OUT (an earlier run's), and nothing else."""
    from ..diff_encoder import CONFIG_NAME, WEIGHTS_NAME
    from ..encoder_training import remove_checkpoint

    if (out / CHECKPOINT_DIR).is_dir():
        remove_checkpoint(out / CHECKPOINT_DIR)
    for name in (CONFIG_NAME, WEIGHTS_NAME, RECORD_NAME):
        (out / name).unlink(missing_ok=True)


def _reader(load, path: Path, size: int):
    return lambda: load(path, size)


def _kind(backbone) -> str:
    return "editor" if backbone.takes_instructions else "text-to-image"


def _prompts(di, pairs, size: int, quiet: bool) -> list[tuple[str, str]]:
    """(prompt of before, prompt of after) per pair for a text-to-image model's L_tc: the captions
    given with the data, else the model's captioner's (or --captions-from's), in batches."""
    from ..pair_data import load_pair_image

    missing = [
        (i, side) for i, pair in enumerate(pairs) for side in ("before", "after") if _caption(pair, side) is None
    ]
    captions = {}
    if missing and not quiet:
        print(f"captioning {len(missing)} images without captions …", file=sys.stderr, flush=True)
    for start in range(0, len(missing), CAPTION_BATCH):
        chunk = missing[start : start + CAPTION_BATCH]
        images = [load_pair_image(getattr(pairs[i], side), size) for i, side in chunk]
        captions.update(zip(chunk, di.captioner(images)))
    return [
        tuple(_caption(pair, side) or captions[(i, side)] for side in ("before", "after"))
        for i, pair in enumerate(pairs)
    ]


def _caption(pair, side: str) -> str | None:
    return pair.caption_before if side == "before" else pair.caption_after
