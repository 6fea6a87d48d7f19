"""The paper's VLM judge (Sec. 5): two-option pairwise comparison of two methods' B′.

For every triplet where both METHOD and AGAINST have a B′ in results.jsonl, the judge is shown
A, A′, B and the two candidate B′ and asked which candidate best completes A : A′ :: B : ?. It
is asked twice, once in each order: the first order is drawn at random (seeded per triplet by
`seed` and the triplet id, so a resumed or partial run draws the same orders), the second
swaps the two candidates. Position bias thus cancels out:

- win: METHOD preferred in both orders (score 1);
- loss: AGAINST preferred in both orders (score 0);
- tie: the two orders disagree, or an answer could not be parsed (score ½).

The win rate is the mean score over triplets (ties count half), with a 95 % Student-t interval
over triplets (`report.mean_interval`); the decisive win rate wins / (wins + losses) is given
too, and every count (wins, ties, losses, unparseable answers), overall and per family.

Where A, A′ and B come from: the run's grids (`grids/<method>/<id>.png`, A | A′ | B | B′ …),
cut back into tiles — exact when the pictures of a triplet share one aspect ratio, as in every
bundled dataset — or, with `data=`, a folder dataset's own files.

Writes `judge-<method>-vs-<against>.json` (every decision, in both orders; resumable: triplets
already judged with the same judge and seed are skipped) and `judge-<method>-vs-<against>.md`.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from ..errors import DiffinvError
from .report import latest_rows, mean_interval
from .results import RESULTS, read_results

QUESTION = (
    "The first image is A and the second is A'; A' is A with some change. The third image is B. "
    "Images 4 and 5 are two candidates, candidate 1 and candidate 2, for B': B with the same change as from A to A'. "
    "Which candidate best completes the analogy A : A' :: B : ? Answer with 1 or 2 only."
)
GRID_LABEL_HEIGHT = 18  # grid.image_grid's defaults, as the bench runner writes its grids
GRID_GAP = 4


class Judge(Protocol):
    """Anything that looks at [A, A′, B, candidate 1, candidate 2] and answers "1" or "2" (or
    text holding the choice); anything else counts as no preference."""

    name: str

    def __call__(self, images: list[Image.Image], question: str) -> str: ...


def parse_choice(answer: str) -> int | None:
    """1 or 2 from a judge's answer ("2", "Candidate 1.", "the second"); None when it names
    neither or both."""
    text = answer.strip().lower()
    digits = set(re.findall(r"(?<![0-9])([12])(?![0-9])", text))
    words = {1 for w in ("first", "one") if re.search(rf"\b{w}\b", text)} | {
        2 for w in ("second", "two") if re.search(rf"\b{w}\b", text)
    }
    found = {int(d) for d in digits} or words
    return found.pop() if len(found) == 1 else None


class TruthJudge:
    """A perfect judge on the shapes world: prefers the candidate whose results row scores
    better on `correct`, then `edit`, then `preserved` (the classifier's verdicts against the
    ground truth); equal on all three: "tie" (no preference). It reads each candidate's row
    from `image.info["bench_row"]`, which `judge_run` attaches; it checks the protocol's
    arithmetic, not a model."""

    name = "truth"
    KEYS = ("correct", "edit", "preserved")

    def __call__(self, images: list[Image.Image], question: str) -> str:
        rows = [images[3].info.get("bench_row"), images[4].info.get("bench_row")]
        if any(row is None or "correct" not in row for row in rows):
            raise DiffinvError("--judge truth needs shapes-world rows (with 'correct' scores)")
        first, second = (tuple(float(row.get(k, 0)) for k in self.KEYS) for row in rows)
        return "1" if first > second else "2" if second > first else "tie"


class TransformersJudge:
    """Any transformers image-text-to-text model (AutoProcessor + AutoModelForImageTextToText,
    e.g. a Qwen2-VL, Idefics3, LLaVA-OneVision or SmolVLM checkpoint): one user turn of five
    images and the question through the processor's chat template, greedy decoding of a few
    tokens, the new text returned (parsed to 1 / 2 by `parse_choice`)."""

    def __init__(self, model_id_or_dir: str, device: str = "cpu", max_new_tokens: int = 8):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = str(model_id_or_dir)
        self.device = device
        self.max_new_tokens = max_new_tokens
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(model_id_or_dir)
            self.model = AutoModelForImageTextToText.from_pretrained(model_id_or_dir, dtype=dtype)
        except OSError as error:
            first = (str(error).splitlines() or [""])[0]
            raise DiffinvError(f"cannot load the judge {model_id_or_dir}: {first}") from None
        self.model.to(device).eval()

    def __call__(self, images: list[Image.Image], question: str) -> str:
        import torch

        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[prompt], images=[image.convert("RGB") for image in images], return_tensors="pt")
        inputs = inputs.to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0]


# --- images ------------------------------------------------------------------------------------------------
def grid_tiles(grid: Image.Image, b_prime: Image.Image) -> list[Image.Image]:
    """A, A′ and B cut from a bench grid (A | A′ | B | B′ [| true B′], every tile scaled to one
    height), assuming the tiles share B′'s aspect ratio; DiffinvError when the widths do not add up."""
    height = grid.height - GRID_LABEL_HEIGHT
    width = max(1, round(b_prime.width * height / b_prime.height))
    for count in (4, 5):
        if count * width + GRID_GAP * (count - 1) == grid.width:
            return [
                grid.crop((i * (width + GRID_GAP), GRID_LABEL_HEIGHT, i * (width + GRID_GAP) + width, grid.height))
                for i in range(3)
            ]
    raise DiffinvError("the grids' tiles differ in width (pictures of different shapes): give --data")


def _load(path: Path) -> Image.Image:
    if not path.exists():
        raise DiffinvError(f"{path}: missing")
    with Image.open(path) as image:
        return image.convert("RGB")


def triplet_images(run_dir: Path, row: dict, dataset: dict | None) -> list[Image.Image]:
    """[A, A′, B] of a results row: from `dataset` (id → BenchTriplet) when given, else the grid."""
    if dataset is not None:
        if row["id"] not in dataset:
            raise DiffinvError(f"triplet {row['id']} is not in --data")
        triplet = dataset[row["id"]]
        return [triplet.a(), triplet.a_prime(), triplet.b()]
    return grid_tiles(_load(run_dir / row["grid"]), _load(run_dir / row["b_prime"]))


# --- the protocol ------------------------------------------------------------------------------------------
def rows_of(run_dir: str | Path, method: str, against: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """The latest rows of both methods by triplet id; DiffinvError (before any model loads)
    when the directory is not a run or a method has no rows."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS).exists():
        raise DiffinvError(f"{run_dir}: no results.jsonl (not a bench run directory)")
    if method == against:
        raise DiffinvError(f"--method and --against are both {method!r}")
    rows = latest_rows(read_results(run_dir))
    found = list(dict.fromkeys(r["method"] for r in rows))
    by_method = {}
    for name in (method, against):
        chosen = {r["id"]: r for r in rows if r["method"] == name and r.get("b_prime")}
        if not chosen:
            raise DiffinvError(f"{run_dir}: no results of method {name!r} (it has: {', '.join(found) or 'none'})")
        by_method[name] = chosen
    return by_method[method], by_method[against]


def outcome(choices: list[int | None], method_positions: list[int]) -> str:
    """'win' when METHOD is chosen in both orders, 'loss' when AGAINST is, else 'tie'."""
    picked = [c == p if c is not None else None for c, p in zip(choices, method_positions)]
    if all(p is True for p in picked):
        return "win"
    if all(p is False for p in picked):
        return "loss"
    return "tie"


SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def summarize_decisions(decisions: list[dict]) -> dict:
    """Counts, win rate (ties half) ± 95 % Student-t interval, decisive win rate."""
    n = len(decisions)
    counts = {k: sum(d["outcome"] == k for d in decisions) for k in ("win", "tie", "loss")}
    unparsed = sum(a["choice"] is None for d in decisions for a in d["asks"])  # a tie, or an answer not understood
    summary = {"n": n, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"], "unparsed": unparsed}
    if n:
        rate, half = mean_interval([SCORE[d["outcome"]] for d in decisions])
        summary.update(win_rate=rate, win_rate_ci95=half)
        decisive = counts["win"] + counts["loss"]
        summary["decisive_win_rate"] = counts["win"] / decisive if decisive else math.nan
    return summary


def _percent(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def markdown_summary(result: dict) -> str:
    method, against = result["method"], result["against"]
    lines = [
        f"# VLM judge: {method} vs {against}",
        "",
        f"Judge: {result['judge']}, seed {result['seed']}. Each triplet asked in both orders (the first drawn at"
        f" random); a win needs {method} preferred in both, a loss {against} in both, anything else is a tie"
        " (counted half). Win rate: mean over triplets ± 95 % interval (Student t); decisive: wins/(wins + losses).",
        "",
        "| family | n | wins | ties | losses | answers naming neither | win rate (%) | decisive win rate (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = [("all", result["summary"])] + list(result.get("by_family", {}).items())
    for family, s in groups:
        rate = "–"
        if s["n"]:
            half = s["win_rate_ci95"]
            rate = _percent(s["win_rate"]) + ("" if math.isnan(half) else f" ± {100 * half:.1f}")
        lines.append(
            f"| {family} | {s['n']} | {s['wins']} | {s['ties']} | {s['losses']} | {s['unparsed']} | {rate} | "
            f"{_percent(s.get('decisive_win_rate', math.nan))} |"
        )
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def slug(text: str) -> str:
    """As `run.slug` (which imports torch): a file-system-safe name for a method spec."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def output_paths(run_dir: str | Path, method: str, against: str) -> tuple[Path, Path]:
    stem = f"judge-{slug(method)}-vs-{slug(against)}"
    return Path(run_dir) / f"{stem}.json", Path(run_dir) / f"{stem}.md"


def judge_run(
    run_dir: str | Path,
    method: str,
    against: str,
    judge: Judge,
    seed: int = 0,
    data: dict | None = None,
    progress: bool = False,
) -> dict:
    """Judge METHOD against AGAINST on every triplet both have; write the JSON of decisions and
    the markdown summary (after each triplet, so a kill loses one); return the result dict.
    `data`: id → BenchTriplet to take A, A′ and B from (default: the run's grids)."""
    run_dir = Path(run_dir)
    mine, theirs = rows_of(run_dir, method, against)
    json_path, md_path = output_paths(run_dir, method, against)
    name = getattr(judge, "name", type(judge).__name__)
    done: dict[str, dict] = {}
    if json_path.exists():
        previous = json.loads(json_path.read_text(encoding="utf-8"))
        if previous.get("judge") == name and previous.get("seed") == seed:
            done = {d["id"]: d for d in previous.get("decisions", [])}
    ids = sorted((i for i in mine if i in theirs), key=lambda i: (mine[i].get("index", 0), i))
    result = {"method": method, "against": against, "judge": name, "seed": seed, "question": QUESTION}
    decisions = []
    for count, triplet_id in enumerate(ids):
        if triplet_id in done:
            decisions.append(done[triplet_id])
            continue
        row = {method: mine[triplet_id], against: theirs[triplet_id]}
        context = triplet_images(run_dir, mine[triplet_id], data)
        candidates = {}
        for key in (method, against):
            image = _load(run_dir / row[key]["b_prime"])
            image.info["bench_row"] = row[key]  # TruthJudge reads it; a VLM sees pixels only
            candidates[key] = image
        first = [method, against]
        random.Random(f"{seed}\n{triplet_id}").shuffle(first)
        asks = []
        for order in (first, first[::-1]):
            answer = str(judge(context + [candidates[order[0]], candidates[order[1]]], QUESTION))
            asks.append({"order": order, "answer": answer[:200], "choice": parse_choice(answer)})
        verdict = outcome([a["choice"] for a in asks], [a["order"].index(method) + 1 for a in asks])
        decisions.append(
            {"id": triplet_id, "family": mine[triplet_id].get("family", ""), "asks": asks, "outcome": verdict}
        )
        if progress:
            print(f"{count + 1}/{len(ids)} {triplet_id}: {verdict}", flush=True)
        _finish(result, decisions, json_path, md_path)
    return _finish(result, decisions, json_path, md_path)


def _no_nan(value):
    """NaN (an interval of one triplet, no decisive triplet) as null: the JSON stays standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def _finish(result: dict, decisions: list[dict], json_path: Path, md_path: Path) -> dict:
    result = {**result, "summary": summarize_decisions(decisions)}
    families = list(dict.fromkeys(d["family"] for d in decisions if d["family"]))
    if families:
        result["by_family"] = {f: summarize_decisions([d for d in decisions if d["family"] == f]) for f in families}
    result["decisions"] = decisions
    _write(json_path, json.dumps(_no_nan(result), indent=1))
    _write(md_path, markdown_summary(result))
    return result


@dataclass(frozen=True, kw_only=True)
class JudgeOptions:
    """What `diffinv bench judge` reads, with the command line's defaults."""

    run_dir: str | os.PathLike  # RUN_DIR: a bench run directory
    against: str  # --against: the method compared against
    judge: str  # --judge: a transformers image-text-to-text model (hub id or directory), or "truth"
    method: str = "difference-inversion"  # --method
    device: str | None = None  # --device: the judge model's (None: `run.local_device`)
    seed: int = 0  # --seed: seeds the random order of the candidates
    data: str | os.PathLike | None = None  # --data: a folder dataset to take A, A′ and B from (None: the grids)
    quiet: bool = False  # --quiet: no line per triplet


def judge_command(options: JudgeOptions) -> None:
    """`diffinv bench judge RUN --against METHOD [--method METHOD] --judge MODEL|truth`: judge, write
    the decisions and the summary, print the win rate. `--judge truth` never loads torch."""
    rows_of(options.run_dir, options.method, options.against)  # checked before any model loads
    data = None
    if options.data:
        from .datasets import folder_dataset

        data = {t.id: t for t in folder_dataset(options.data)}
    if options.judge == "truth":
        judge = TruthJudge()
    else:
        from .run import local_device

        judge = TransformersJudge(options.judge, options.device or local_device())
    result = judge_run(
        options.run_dir, options.method, options.against, judge, options.seed, data, progress=not options.quiet
    )
    s = result["summary"]
    json_path, md_path = output_paths(options.run_dir, options.method, options.against)
    rate = "n/a"
    if s["n"]:
        half = s["win_rate_ci95"]
        rate = f"{100 * s['win_rate']:.1f}%" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")
    print(
        f"{options.method} vs {options.against}: win rate {rate} over {s['n']} triplets "
        f"({s['wins']} wins, {s['ties']} ties, {s['losses']} losses, {s['unparsed']} answers naming neither); "
        f"wrote {json_path} and {md_path}"
    )
