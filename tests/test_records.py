"""The records under docs/runs/ rebuild their tables, and their commands would run them again.

- `diffinv bench report` on each record (a copy: it rewrites the summaries) gives back its committed
  summary.md byte for byte, with the baseline its report command names; `--judge truth` gives back
  its judge-*.md. Torch-free: `report` and the truth judge read results.jsonl only.
- Each bench step of benchmarks/world_v2.sh, rerun today, runs the methods of its record with the
  configs they had then. The step's `diffinv` lines are caught (a stand-in `diffinv` on PATH: nothing
  runs) and resolved as `bench run` resolves them before loading anything (`command.build_methods`).
  The records were written before run.json held each method's config, so the configs of the time are
  rebuilt here from what the record does hold (its base config) and from the editor's model card as
  it was when the rows ran (git history of src/diffinv/shapes/model/editor/diffinv.json).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from diffinv.bench import judge
from diffinv.bench.build import baseline_config, card_budget, config_record, parse_baseline_models
from diffinv.bench.command import build_methods
from diffinv.bench.methods import parse_method
from diffinv.bench.report import write_reports
from diffinv.cli.parser import build_parser
from diffinv.config import InversionConfig, resolve_config
from diffinv.model_card import model_card

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "docs" / "runs"
WORLD_V2 = REPO / "benchmarks" / "world_v2.sh"

# The baseline of each record's committed summary.md: its report command in docs/results.md.
REPORT_BASELINE = {
    "ed-dev2-s7": "on-editor:steps=200,weight_decay=1",
    "ed-dev2-s8": "on-editor:steps=200,weight_decay=1",
    "ed-dev2-s9": "difference-inversion",
    "heldout-v2-s120": "paper",
    "heldout-v2-s130": "paper",
    "heldout-v2-s140": "difference-inversion:steps=200",
    "heldout-v2-s150": "paper",
    "heldout-v2-s160": "on-editor",
    "heldout-v2-s160-baselines": "on-editor:init=encoder,steps=0",
    "paper-hard-s170": "paper",
    "v2-baselines-s110": "difference-inversion",
    "dev-split-s1": "on-editor:init=zeros,steps=200,weight_decay=1",
    "heldout-split-s200": "on-editor:init=zeros,steps=200,weight_decay=1",
    "examples-k1-s1": "difference-inversion",  # not among its methods: no paired table
    "examples-k3-s1": "difference-inversion",
    "dev-unseen-variants-s1": "difference-inversion",
    "heldout-unseen-s210": "on-editor:init=zeros,steps=200,weight_decay=1",
    "heldout-unseen-k3-s210": "on-editor:init=zeros,steps=200,weight_decay=1",
    "dev-gate-s2": "on-editor:init=zeros,steps=200,weight_decay=1",
    "heldout-auto-s220": "on-editor:init=zeros,steps=200,weight_decay=1",
    "heldout-auto-k3-s220": "on-editor:init=encoder,steps=0",
    "dev-t2i-encoder-s1": "difference-inversion",
}
# Records whose configs the steps are not resolved against here, and why: their run.json records
# every method's resolved config itself (`configs`), which a rerun of their step is checked against
# by `check_run_record` before it runs a triplet.
CONFIGS_RECORDED = {
    "dev-split-s1": "dev-split, on runs/world-seen with the editor card of its time (the encoder's D̃ as "
    "'on-editor', now spelled on-editor:init=encoder)",
    "heldout-split-s200": "heldout-split, likewise",
    "examples-k1-s1": "dev-examples (K = 1), every config spelled in its specs",
    "examples-k3-s1": "dev-examples (K = 3), likewise",
    "dev-unseen-variants-s1": "dev-unseen-variants, likewise",
    "heldout-unseen-s210": "heldout-unseen (K = 1), likewise",
    "heldout-unseen-k3-s210": "heldout-unseen (K = 3), likewise",
    "dev-gate-s2": "dev-auto, likewise",
    "heldout-auto-s220": "heldout-auto, likewise",
    "heldout-auto-k3-s220": "heldout-auto-k3, likewise",
    "dev-t2i-encoder-s1": "dev-t2i-encoder, on a copy of the bundled world with the encoder that step trains",
}
# Records that are not bench runs, and why they have no summary to rebuild.
NOT_BENCH_RUNS = {
    "editor-probe-s140": "the rows of benchmarks/editor_probe.py (commit 923bced), one per triplet, no method "
    "column; results.md §7 quotes their means and pairs them with heldout-v2-s140 by triplet",
}
# The world_v2.sh step that wrote each record (several steps may write one record).
STEPS = {
    "heldout": ["heldout-v2-s120"],
    "heldout-mask": ["heldout-v2-s130"],
    "heldout-steps": ["heldout-v2-s140"],
    "heldout-editor": ["heldout-v2-s150"],
    "dev-editor": ["ed-dev2-s7", "ed-dev2-s8", "ed-dev2-s9"],
    "dev-encoder": ["ed-dev2-s7", "ed-dev2-s8"],
    "heldout-encoder": ["heldout-v2-s160"],
    "heldout-encoder-baselines": ["heldout-v2-s160-baselines"],
    "paper-hard": ["paper-hard-s170"],
    "baselines": ["v2-baselines-s110"],
}
# The model each record ran on, where today's command cannot name it: the world's second training
# run, which was not kept (results.md §7); the command gives the bundled world that run's defaults.
MODEL_OF_THE_TIME = {"heldout-v2-s120": "runs/world-v2"}

# The editor's model card when the `on-editor` rows ran: the config an `on-editor:CHANGES` spec
# started from (no budget per start of D̃ yet). The probe's configuration from commit af02744 until
# the seed-150 report moved it to 200 steps at weight decay 1 (df124d5); the encoder (init
# "encoder", 0 steps) after the seed-160 report (1f8da29).
EDITOR_PROBE = {
    "prompt_source": "caption",
    "learning_rate": 0.01,
    "clip_loss_space": "in-context",
    "tc_reduction": "sum",
    "steps": 100,
    "sampling_mode": "editor",
    "sampling_steps": 20,
    "guidance_scale": 4.0,
    "image_guidance_scale": 3.0,
}
EDITOR_FIT = {**EDITOR_PROBE, "steps": 200, "weight_decay": 1.0}
# Records whose `on-editor` rows ran on the probe's card: all of them (None), or the first N (ed-dev2-s7
# and -s8: the rows of commit 6f85e77; the later ones, of ecada7f, b0ff1b1 and 1f8da29, on the
# fit's card). Any other record's ran on the fit's.
PROBE_ROWS = {"heldout-v2-s150": None, "ed-dev2-s9": None, "ed-dev2-s7": 23, "ed-dev2-s8": 23}
# What a command spells out for the editor and the record's name may leave to the card of the time:
# the start from zeros (the only start before the encoder), the fit's steps and its weight decay.
EDITOR_SPELLED = ("init=zeros", "steps=", "weight_decay=")


def records() -> list[str]:
    return sorted(path.name for path in RUNS.iterdir() if path.is_dir())


def record_of(name: str) -> dict:
    return json.loads((RUNS / name / "run.json").read_text(encoding="utf-8"))


def copy_of(name: str, tmp_path: Path) -> Path:
    """The record's files in a directory of their own (report and judge write theirs there)."""
    out = tmp_path / name
    shutil.copytree(RUNS / name, out)
    return out


# --- the summaries ------------------------------------------------------------------------------------------------
def test_every_record_is_checked_or_says_why_not():
    assert sorted([*REPORT_BASELINE, *NOT_BENCH_RUNS]) == records()
    for name in NOT_BENCH_RUNS:
        assert not (RUNS / name / "run.json").exists() and not (RUNS / name / "summary.md").exists()
    checked = {name for names in STEPS.values() for name in names}
    assert sorted(checked | set(CONFIGS_RECORDED)) == sorted(REPORT_BASELINE)
    assert all("configs" in record_of(name) for name in CONFIGS_RECORDED)


@pytest.mark.parametrize("name", sorted(REPORT_BASELINE))
def test_report_rebuilds_the_committed_summary(name, tmp_path):
    out = copy_of(name, tmp_path)
    write_reports(out, baseline=REPORT_BASELINE[name])
    assert (out / "summary.md").read_text(encoding="utf-8") == (RUNS / name / "summary.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("against", ["paper", "sdedit", "instructpix2pix", "analogist", "visii", "dia"])
def test_the_truth_judge_rebuilds_the_committed_win_rates(against, tmp_path, monkeypatch):
    """world_v2.sh baselines' `diffinv bench judge … --judge truth`: the truth judge reads the rows'
    scores, never the pictures (which the record does not keep), so blank ones stand in for them."""
    monkeypatch.setattr(judge, "triplet_images", lambda run_dir, row, data: [Image.new("RGB", (1, 1))] * 3)
    monkeypatch.setattr(judge, "_load", lambda path: Image.new("RGB", (1, 1)))
    out = copy_of("v2-baselines-s110", tmp_path)
    _, md_path = judge.output_paths(out, "difference-inversion", against)
    committed = md_path.read_text(encoding="utf-8")
    md_path.unlink()
    judge.judge_run(out, "difference-inversion", against, judge.TruthJudge())
    assert md_path.read_text(encoding="utf-8") == committed


# --- the commands -------------------------------------------------------------------------------------------------
def step_commands(step: str, tmp_path: Path) -> list[list[str]]:
    """The `diffinv` command lines of `bash benchmarks/world_v2.sh STEP`, run with a stand-in
    `diffinv` that only writes its arguments down."""
    bin_dir, caught = tmp_path / "bin", tmp_path / f"{step}.args"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "diffinv"
    stand_in.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\037" "$a"; done >> "$CAUGHT"\necho >> "$CAUGHT"\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CAUGHT": str(caught)}
    env.pop("MODEL", None)
    subprocess.run(["bash", str(WORLD_V2), step], cwd=tmp_path, env=env, check=True)
    return [line.split("\037")[:-1] for line in caught.read_text(encoding="utf-8").splitlines()]


def resolved_today(argv: list[str]) -> tuple[object, dict, dict]:
    """What `diffinv bench run ARGV` would run, resolved as it resolves before loading anything:
    (parsed arguments, base config as run.json records it, {spec: config as run.json records it})."""
    args = build_parser().parse_args(argv)
    options = SimpleNamespace(methods=args.methods or [], base_changes=args.base_changes, dataset=args.dataset)
    models = parse_baseline_models(args.baseline_models)
    methods, base, _, configs = build_methods(options, model_card(args.model), models)
    return args, json.loads(base.to_json()), {m.spec: config_record(configs[m.spec]) for m in methods}


def base_of_the_time(record: dict) -> InversionConfig:
    """The record's base config; fields added since take their defaults, each the value that leaves
    the method as it was (new options off; image guidance, a budget field, unread off the editor)."""
    return InversionConfig(**record["base_config"])


def config_of_the_time(name: str, record: dict, spec: str):
    """The config the record's method `spec` ran with: as its run.json records it (runs since run.json
    held configs); else on the editor, the editor's card of the time with the spec's changes; any
    other Difference Inversion method, the record's base config with the spec's preset and changes;
    a baseline, its published values with the bundled card's budget (neither has changed since these
    runs: baselines/*.py and the card's "bench" entry)."""
    if "configs" in record:
        return record["configs"][spec]
    method = parse_method(spec)
    if method.on_editor:
        index, probe_rows = record["methods"].index(spec), PROBE_ROWS.get(name, 0)
        card = EDITOR_PROBE if probe_rows is None or index < probe_rows else EDITOR_FIT
        return config_record(InversionConfig().replace(**card).replace(**method.changes))
    if method.fits_tokens or method.registered.load().config_class is InversionConfig:
        config = resolve_config(base_of_the_time(record), preset_name=method.preset, changes=method.changes)
        return config_record(config)
    if method.is_baseline:
        budget = card_budget(model_card("shapes"), method.base)
        return config_record(baseline_config(method.base, budget, method.changes))
    return None


def record_name(spec: str, recorded: list[str]) -> str:
    """The name the record gives the command's `spec`: the spec itself, or for the editor the spec
    without those of the fields the command spells out (`EDITOR_SPELLED`) that the record's name
    left to the card: the fewest that give a name in the record (one name only; the configs compared
    afterwards say whether it is the right one)."""
    method = parse_method(spec)
    if not method.on_editor or spec in recorded:
        return spec
    name, _, changes = spec.partition(":")
    items = changes.split(",")
    spelled = [item for item in items if item.startswith(EDITOR_SPELLED)]
    for count in range(1, len(spelled) + 1):
        candidates = set()
        for dropped in itertools.combinations(spelled, count):
            kept = [item for item in items if item not in dropped]
            candidates.add(f"{name}:{','.join(kept)}" if kept else name)
        found = sorted(candidates & set(recorded))
        assert len(found) <= 1, f"{spec}: recorded as {found}?"
        if found:
            return found[0]
    raise AssertionError(f"{spec}: not in the record, with or without {', '.join(spelled)}")


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_runs_its_records_methods_with_their_configs(step, tmp_path):
    ran: dict[str, dict] = {}  # record → {recorded name: today's config}
    for argv in step_commands(step, tmp_path):
        if argv[:2] != ["bench", "run"]:
            assert argv[:2] == ["bench", "judge"]
            continue
        args, base, configs = resolved_today(argv)
        name = Path(args.out).name
        assert name in STEPS[step], f"{step} writes {args.out}, which is not its record"
        record = record_of(name)
        assert record["model"] == MODEL_OF_THE_TIME.get(name, args.model)
        dataset = {"name": "shapes", "n": args.n, "seed": args.triplet_seed, "families": "all", "layout_range": 5.0}
        assert dataset == record["dataset"] and args.seed == record["seed"]
        assert base == json.loads(base_of_the_time(record).to_json()), f"{step}: {name}'s base config"
        for spec, config in configs.items():
            recorded = record_name(spec, record["methods"])
            assert recorded not in ran.setdefault(name, {}), f"{spec}: {recorded} named twice"
            expected = config_of_the_time(name, record, recorded)
            assert config == expected, f"{step}: {spec} (recorded as {recorded}) runs otherwise than {name}: " + str(
                {k: (expected.get(k), v) for k, v in config.items() if expected.get(k) != v}
                if config and expected
                else (expected, config)
            )
            ran[name][recorded] = config
    for name, methods in ran.items():  # a record written by several steps: every step's rows are in it
        assert set(methods) <= set(record_of(name)["methods"])
    if step not in ("dev-editor", "dev-encoder"):
        assert {name: sorted(methods) for name, methods in ran.items()} == {
            name: sorted(record_of(name)["methods"]) for name in STEPS[step]
        }


def test_the_development_steps_together_run_every_row_of_their_records(tmp_path):
    ran: dict[str, set] = {}
    for step in ("dev-editor", "dev-encoder"):
        for argv in step_commands(step, tmp_path):
            args, _, configs = resolved_today(argv)
            name = Path(args.out).name
            ran.setdefault(name, set()).update(record_name(spec, record_of(name)["methods"]) for spec in configs)
    assert ran == {name: set(record_of(name)["methods"]) for name in ("ed-dev2-s7", "ed-dev2-s8", "ed-dev2-s9")}
