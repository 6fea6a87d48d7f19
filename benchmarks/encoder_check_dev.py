"""init="auto"'s tolerance on development records: what each tolerance would have made right.

For every triplet of a bench record that holds both routes on the world's editor (the encoder's D̃
with no fit, and the per-pair fit from zeros), this runs init="auto"'s check on the triplet's
example pair, with the row's seed (`DifferenceInversion._encoder_check`: A drawn with the encoder's
D̃, the share of A → A′ left in pixels and in CLIP's image space), and prints, per tolerance and
split, the % correct of the route the check would have taken: the encoder's row where both ratios
are within the tolerance, the fit's row otherwise. The B′ are the record's, so no fit runs here.

    python benchmarks/encoder_check_dev.py docs/runs/dev-split-s1 docs/runs/dev-gate-s2 [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch

from diffinv.pipeline import DifferenceInversion
from diffinv.shapes import MODEL_DIR
from diffinv.shapes.world import LAYOUT_RANGE, render, triplets

SPLITS = ("seen", "unseen", "compound")
ENCODER = ("on-editor", "on-editor:init=encoder,steps=0")  # the encoder's row, as each record names it
FIT = "on-editor:init=zeros,steps=200,weight_decay=1"
TOLERANCES = (0.1, 0.2, 0.3, 0.4, 0.5)


def checked_rows(pipe: DifferenceInversion, record: Path) -> list[dict]:
    """One entry per triplet of `record`: its split, both routes' verdicts, and the check's ratios."""
    run = json.loads((record / "run.json").read_text())
    seed, n = run["dataset"]["seed"], run["dataset"]["n"]
    by_triplet = collections.defaultdict(dict)
    for line in (record / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_triplet[row["id"]][row["method"]] = row
    config = pipe.config_for(init="auto")
    entries = []
    for split in SPLITS:
        for i, triplet in enumerate(triplets(n, seed, layout_range=LAYOUT_RANGE, split=split)):
            rows = by_triplet[f"shapes-s{seed}-{split}-{i:04d}"]
            encoder = next(rows[name] for name in ENCODER if name in rows)
            row_seed = encoder["index"]  # the bench fits and draws triplet `index` with seed `index`
            working = pipe.working_pairs([(render(triplet.a), render(triplet.a_prime))], config)
            task = pipe._prepare_pairs(working, config, [None], [None], row_seed, False, None)
            encoded = pipe._fit_tasks([task], config.replace(init="encoder", steps=0), [row_seed], False)[0]
            check = pipe._encoder_check(task, encoded, config, row_seed)
            entries.append(
                {
                    "record": record.name,
                    "split": split,
                    "family": triplet.family,
                    "pixel": check.pixel,
                    "clip": check.clip,
                    "encoder": encoder["correct"],
                    "fit": rows[FIT]["correct"],
                }
            )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the per-triplet entries here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = DifferenceInversion.from_pretrained(str(MODEL_DIR / "editor"))
    entries = [entry for record in args.records for entry in checked_rows(pipe, record)]
    if args.json:
        args.json.write_text(json.dumps(entries, indent=1))

    def percent(chosen) -> str:
        """% correct per split of the rows `chosen` picks (entry → the chosen route's verdict)."""
        cells = []
        for split in SPLITS:
            verdicts = [chosen(entry) for entry in entries if entry["split"] == split]
            cells.append(f"{100 * sum(verdicts) / len(verdicts):.1f}")
        return " | ".join(cells)

    print("| route | " + " | ".join(SPLITS) + " |")
    print("|---|" + "---|" * len(SPLITS))
    print(f"| the fit | {percent(lambda e: e['fit'])} |")
    print(f"| the encoder | {percent(lambda e: e['encoder'])} |")
    for tolerance in TOLERANCES:
        auto = percent(lambda e, t=tolerance: e["encoder"] if e["pixel"] <= t and e["clip"] <= t else e["fit"])
        print(f"| auto, tolerance {tolerance} | {auto} |")
    print(f"| the better route per triplet (knows the truth) | {percent(lambda e: max(e['encoder'], e['fit']))} |")


if __name__ == "__main__":
    main()
