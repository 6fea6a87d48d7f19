"""Summaries of a run: mean and 95 % interval per method (and per family), as markdown, CSV and
an HTML report with the grids and loss curves.

The interval is Student's t on the per-triplet values (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n); for the 0/1
scores of the shapes world this is the usual normal-approximation interval of a proportion.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from html import escape
from pathlib import Path

from .results import read_results, results_lock  # torch-free: `diffinv bench report` never loads torch

# Two-sided 95 % quantiles of Student's t for small samples; beyond, a Cornish–Fisher expansion.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
METRIC_ORDER = (
    "correct",
    "edit",
    "preserved",
    "layout",
    "preserved_attributes",
    "encoder_used",
    "clip_directional",
    "dinov2_directional",
    "clip_to_truth",
    "dinov2_to_truth",
    "final_loss_tc",
    "final_loss_clip",
)
# peak memory: its own column (`memory_by_method`); examples: the pairs a method was shown (--examples)
# encoder_check_*: init="auto"'s check, averaged in no table; its verdict is encoder_used
NOT_METRICS = {"index", "seconds", "peak_memory_mb", "examples", "encoder_check_pixel", "encoder_check_clip"}
PERCENT = {"correct", "edit", "preserved", "layout", "preserved_attributes"}
SHARES = {"encoder_used"}  # how often a method did something (init="auto": took the encoder's D̃), in %, not a score


RECORD_KEYS = ("dataset", "model", "methods", "base_config")


def is_score(metric: str) -> bool:
    """The scores of a B′ (shapes verdicts, directional similarities), not losses or similarity to the truth."""
    return metric in PERCENT or metric.endswith("_directional")


def t_quantile(df: int) -> float:
    if df in T_975:
        return T_975[df]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % interval); the half-width is nan for fewer than 2 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, t_quantile(n - 1) * math.sqrt(variance / n)


def metric_names(rows: list[dict]) -> list[str]:
    found = {
        k
        for row in rows
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS
    }
    return [m for m in METRIC_ORDER if m in found] + sorted(found - set(METRIC_ORDER))


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (method, id): the last written (a rerun of a triplet replaces it)."""
    return list({(row["method"], row["id"]): row for row in rows}.values())


def summarize(rows: list[dict], group: str | None = None) -> list[dict]:
    """Per method (and per `group` value, e.g. 'family'): n, median seconds, mean and interval of
    every metric. Methods keep the order in which they first appear."""
    keys = list(dict.fromkeys((row["method"], row.get(group, "") if group else "") for row in rows))
    metrics = metric_names(rows)
    table = []
    for method, value in keys:
        chosen = [r for r in rows if r["method"] == method and (not group or r.get(group, "") == value)]
        seconds = sorted(r["seconds"] for r in chosen if "seconds" in r)
        entry = {
            "method": method,
            **({group: value} if group else {}),
            "n": len(chosen),
            "seconds_median": seconds[len(seconds) // 2] if seconds else math.nan,
            **peak_memory(chosen),
        }
        for metric in metrics:
            values = [float(r[metric]) for r in chosen if metric in r]
            if values:
                entry[metric], entry[f"{metric}_ci95"] = mean_interval(values)
        table.append(entry)
    return table


def peak_memory(rows: list[dict]) -> dict:
    """{"peak_memory_mb": the largest peak of `rows`, "memory": its kind} (empty when none was
    measured); a mixture of kinds (a run resumed on other hardware) is named "mixed"."""
    measured = [r for r in rows if "peak_memory_mb" in r]
    if not measured:
        return {}
    kinds = sorted({r.get("memory", "?") for r in measured})
    return {
        "peak_memory_mb": max(float(r["peak_memory_mb"]) for r in measured),
        "memory": kinds[0] if len(kinds) == 1 else "mixed",
    }


def memory_by_method(rows: list[dict]) -> str:
    """One line per method: its peak memory over the rows (what `diffinv bench run` prints)."""
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        peak = peak_memory([r for r in rows if r["method"] == method])
        if peak:
            lines.append(f"  {method}: {peak['peak_memory_mb']:.0f} MiB ({peak['memory']})")
    return ("peak memory per method:\n" + "\n".join(lines) + "\n") if lines else ""


def paired_differences(rows: list[dict], baseline: str = "difference-inversion") -> list[dict]:
    """Per method, the mean and 95 % interval of (method − baseline) over the triplets both ran:
    a paired comparison, much tighter than comparing two means when triplets vary a lot."""
    base = {r["id"]: r for r in rows if r["method"] == baseline}
    if not base:
        return []
    scores = [m for m in metric_names(rows) if is_score(m)]
    table = []
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != baseline):
        both = [(r, base[r["id"]]) for r in rows if r["method"] == method and r["id"] in base]
        if not both:
            continue
        entry = {"method": f"{method} − {baseline}", "n": len(both), "seconds_median": math.nan}
        for metric in scores:
            deltas = [float(r[metric]) - float(b[metric]) for r, b in both if metric in r and metric in b]
            if deltas:
                entry[metric], entry[f"{metric}_ci95"] = mean_interval(deltas)
        table.append(entry)
    return table


def _cell(entry: dict, metric: str, percent: bool) -> str:
    if metric not in entry:
        return "–"
    mean, half = entry[metric], entry[f"{metric}_ci95"]
    if percent:
        return f"{100 * mean:.1f} ± {100 * half:.1f}" if not math.isnan(half) else f"{100 * mean:.1f}"
    return f"{mean:.4f} ± {half:.4f}" if not math.isnan(half) else f"{mean:.4f}"


def _memory_cell(entry: dict) -> str:
    return f"{entry['peak_memory_mb']:.0f} ({entry['memory']})" if "peak_memory_mb" in entry else "–"


def _columns(table: list[dict], only_scores: bool) -> list[str]:
    """Metric columns of a summary table; `only_scores` keeps the scores (not losses, not
    similarity to the truth), for the narrower per-family tables."""
    metrics = [m for m in metric_names(table) if not m.endswith("_ci95") and m not in ("n", "seconds_median")]
    return [m for m in metrics if is_score(m)] if only_scores else metrics


def table_cells(
    table: list[dict], group: str | None = None, scores_only: bool = False
) -> tuple[list[str], list[list[str]]]:
    """(header, rows of cells) of a summary table, shared by the markdown and HTML renderings."""
    metrics = _columns(table, only_scores=scores_only)
    timed = any(not math.isnan(entry["seconds_median"]) for entry in table)
    measured = any("peak_memory_mb" in entry for entry in table)
    header = [
        "method",
        *([group] if group else []),
        "n",
        *[f"{m} (%)" if m in PERCENT | SHARES else m for m in metrics],
        *(["s/triplet (median)"] if timed else []),
        *(["peak MiB (kind)"] if measured else []),
    ]
    rows = [
        [
            entry["method"],
            *([entry[group]] if group else []),
            str(entry["n"]),
            *[_cell(entry, m, m in PERCENT | SHARES) for m in metrics],
            *([f"{entry['seconds_median']:.2f}"] if timed else []),
            *([_memory_cell(entry)] if measured else []),
        ]
        for entry in table
    ]
    return header, rows


def markdown_table(table: list[dict], group: str | None = None, scores_only: bool = False) -> str:
    if not table:
        return "(no results)\n"
    header, rows = table_cells(table, group, scores_only)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cells) + " |" for cells in rows
    ]
    return "\n".join(lines) + "\n"


def family_matrix(
    rows: list[dict], scores: tuple[str, ...] = ("correct", "edit", "preserved"), key: str = "family"
) -> str:
    """Markdown: one row per method, one column per family (or per value of `key`, e.g. "split"),
    cells 'correct / edit / preserved' in % (the compact view of the per-family table; empty when
    the rows have no such scores)."""
    families = list(dict.fromkeys(r[key] for r in rows if r.get(key)))
    if not families or not any(scores[0] in r for r in rows):
        return ""
    lines = ["| method | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for family in families:
            chosen = [r for r in rows if r["method"] == method and r.get(key) == family and scores[0] in r]
            cells.append(
                " / ".join(f"{100 * sum(r[k] for r in chosen) / len(chosen):.0f}" for k in scores) if chosen else "–"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(table: list[dict]) -> str:
    columns = list(dict.fromkeys(k for entry in table for k in entry))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns)
    writer.writeheader()
    writer.writerows(table)
    return out.getvalue()


def _write(path: Path, text: str) -> None:
    """Atomically (other shard processes may be writing the same summary)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(
    run_dir: str | Path, max_examples: int = 12, baseline: str = "difference-inversion"
) -> dict[str, Path]:
    """summary.md, summary.csv and report.html from results.jsonl, with paired differences
    against the `baseline` method when the run has it. Returns their paths."""
    run_dir = Path(run_dir)
    with results_lock(run_dir):  # no line can be added between reading and writing
        return _write_reports(run_dir, latest_rows(read_results(run_dir)), max_examples, baseline)


def _write_reports(run_dir: Path, rows: list[dict], max_examples: int, baseline: str) -> dict[str, Path]:
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8")) if (run_dir / "run.json").exists() else {}
    overall = summarize(rows)
    by_family = summarize(rows, "family") if any(r.get("family") for r in rows) else []
    intro = (
        f"Run: {json.dumps(record.get('dataset', {}))}, model {record.get('model', '?')}.\n"
        "Mean ± 95 % interval (Student's t) over triplets.\n"
    )
    markdown = "# Benchmark summary\n\n" + intro + "\n" + markdown_table(overall)
    paired = paired_differences(rows, baseline)
    if paired:
        markdown += f"\n## Paired differences against {baseline} (same triplets)\n\n" + markdown_table(
            paired, scores_only=True
        )
    by_split = summarize(rows, "split") if any(r.get("split") for r in rows) else []
    if by_split:  # seen, unseen and compound edits side by side
        markdown += "\n## Per split: correct / edit / preserved (%)\n\n" + family_matrix(rows, key="split")
        markdown += "\n## Per split, with intervals\n\n" + markdown_table(by_split, "split", scores_only=True)
        for split in dict.fromkeys(r["split"] for r in rows if r.get("split")):
            paired_split = paired_differences([r for r in rows if r.get("split") == split], baseline)
            if paired_split:
                markdown += f"\n## Paired differences against {baseline}, {split} edits\n\n" + markdown_table(
                    paired_split, scores_only=True
                )
    matrix = family_matrix(rows)
    if matrix:
        markdown += "\n## Per family: correct / edit / preserved (%)\n\n" + matrix
    if by_family:
        markdown += "\n## Per family, with intervals\n\n" + markdown_table(by_family, "family", scores_only=True)
    paths = {"md": run_dir / "summary.md", "csv": run_dir / "summary.csv", "html": run_dir / "report.html"}
    _write(paths["md"], markdown)
    _write(paths["csv"], csv_text(overall + by_split + by_family))
    _write(paths["html"], html_report(record, rows, overall, paired, by_family, max_examples, baseline))
    return paths


def _html_table(table: list[dict], group: str | None = None, scores_only: bool = False) -> str:
    if not table:
        return "<p>(no results)</p>"
    header, rows = table_cells(table, group, scores_only)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>\n" for cells in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def html_report(
    record: dict,
    rows: list[dict],
    overall: list[dict],
    paired: list[dict],
    by_family: list[dict],
    max_examples: int,
    baseline: str,
) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "figure{display:inline-block;margin:6px}figcaption{font-size:11px}img{image-rendering:pixelated}"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>diffinv bench</title>",
        f"<style>{style}</style></head><body>",
        "<h1>diffinv bench</h1>",
        f"<pre>{escape(json.dumps({k: record.get(k) for k in RECORD_KEYS}, indent=1))}</pre>",
        "<h2>Summary</h2><p>Mean ± 95 % interval (Student's t) over triplets.</p>",
        _html_table(overall),
    ]
    if paired:
        parts += [
            f"<h2>Paired differences against {escape(baseline)} (same triplets)</h2>",
            _html_table(paired, scores_only=True),
        ]
    if by_family:
        parts += ["<h2>Per family</h2>", _html_table(by_family, "family", scores_only=True)]
    for method in dict.fromkeys(r["method"] for r in rows):
        examples = sorted((r for r in rows if r["method"] == method), key=lambda r: r.get("index", 0))[:max_examples]
        parts.append(f"<h2>{escape(method)}</h2>")
        for r in examples:
            verdict = f" · correct {int(r['correct'])}" if "correct" in r else ""
            loss = f" · <a href='{escape(r['loss_plot'])}'>loss</a>" if "loss_plot" in r else ""
            parts.append(
                f"<figure><img src='{escape(r['grid'])}' height='140'><figcaption>{escape(r['id'])} "
                f"{escape(r.get('family', ''))}{verdict}{loss}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
