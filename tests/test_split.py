"""The shapes world's edit types and their declared split: which edits a learned analogy component
(the DIFF-token encoder) may train on, triplets of one half or of two attributes at once, and a
training stream that no triplet is drawn from."""

import random
from collections import Counter
from pathlib import Path

import pytest

from diffinv.errors import DiffinvError
from diffinv.shapes.data import split_edit_pairs
from diffinv.shapes.evaluate import score
from diffinv.shapes.world import (
    ATTRIBUTES,
    COMPOUND,
    FAMILIES,
    LAYOUT_RANGE,
    SPLIT,
    UNSEEN_FAMILIES,
    EditType,
    all_edit_types,
    split_of,
    triplets,
)


def test_the_split_covers_every_edit_type_once():
    everything = set(all_edit_types())
    assert len(everything) == 42
    assert SPLIT["seen"] | SPLIT["unseen"] == everything and not SPLIT["seen"] & SPLIT["unseen"]
    per_family = Counter(edit.family for edit in SPLIT["unseen"])
    for family in FAMILIES:
        total = sum(1 for edit in everything if edit.family == family)
        expected = total if family in UNSEEN_FAMILIES else round(total / 3)
        assert per_family[family] == expected, family


def test_the_split_is_fixed():
    """Changing the split changes which figures are honest: it is declared once, and stays."""
    partial = sorted(
        (edit.family, edit.source, edit.target) for edit in SPLIT["unseen"] if edit.family not in UNSEEN_FAMILIES
    )
    assert partial == [
        ("background", "black", "gray"),
        ("background", "white", "black"),
        ("colour", "blue", "green"),
        ("colour", "blue", "purple"),
        ("colour", "blue", "red"),
        ("colour", "blue", "yellow"),
        ("colour", "purple", "blue"),
        ("colour", "red", "blue"),
        ("colour", "yellow", "red"),
        ("size", "large", "small"),
    ]


@pytest.mark.parametrize("split", ["seen", "unseen"])
def test_triplets_of_a_split_apply_only_its_edit_types(split):
    drawn = triplets(60, seed=3, layout_range=LAYOUT_RANGE, split=split)
    assert all(split_of(t) == split for t in drawn)
    assert all(t.edits[0] == EditType(t.family, getattr(t.b, t.family), getattr(t.b_prime, t.family)) for t in drawn)
    families = {t.family for t in drawn}
    assert families == ({"colour", "size", "background"} if split == "seen" else set(FAMILIES))
    assert triplets(60, seed=3, layout_range=LAYOUT_RANGE, split=split) == drawn  # seeded


def test_compound_triplets_change_two_attributes_on_both_sides():
    for t in triplets(40, seed=1, layout_range=LAYOUT_RANGE, split=COMPOUND):
        assert t.family == COMPOUND and len(t.changed) == 2 and split_of(t) == COMPOUND
        for before, after in ((t.a, t.a_prime), (t.b, t.b_prime)):
            assert {k for k in ATTRIBUTES if getattr(before, k) != getattr(after, k)} == set(t.changed)
            assert (before.dx, before.dy) == (after.dx, after.dy)
        assert all(getattr(t.a, k) == getattr(t.b, k) for k in t.changed)
        assert " and " in t.instruction


def test_a_compound_b_prime_is_right_only_with_both_changes():
    t = triplets(1, seed=0, layout_range=LAYOUT_RANGE, split=COMPOUND)[0]
    right = {**t.b_prime.attributes, "centre": (t.b_prime.dx, t.b_prime.dy)}
    assert score(right, t, layout_threshold=1.0)["correct"] == 1.0
    half = {**right, t.changed[0]: getattr(t.b, t.changed[0])}
    assert score(half, t, layout_threshold=1.0) == {**score(half, t, 1.0), "edit": 0.0, "correct": 0.0}


def test_triplets_without_a_split_are_drawn_as_before():
    """The draws of every recorded run: split=None keeps the integer-seeded stream."""
    rng = random.Random(5)
    from diffinv.shapes.world import make_triplet

    expected = [make_triplet(FAMILIES[i % 5], rng, LAYOUT_RANGE) for i in range(10)]
    assert triplets(10, seed=5, layout_range=LAYOUT_RANGE) == expected


@pytest.mark.parametrize("seeds", [pytest.param(range(1000), marks=pytest.mark.slow), range(100)])
def test_the_encoders_pairs_are_seen_edits_from_a_stream_no_triplet_uses(seeds):
    """The bundled plan's 12,000 pairs (offsets included) against 200 triplets of every triplet seed
    0–999 (slow: 25 s; the default run checks seeds 0–99), and 50 of each split's."""
    from diffinv.shapes.descriptor import TrainingPlan

    plan = TrainingPlan()
    pairs = split_edit_pairs(plan.n_edit_pairs, f"diff_encoder/{plan.seed}", LAYOUT_RANGE, SPLIT["seen"])
    edits = {
        EditType(f, getattr(a, f), getattr(b, f))
        for a, b in pairs
        for f in ATTRIBUTES
        if getattr(a, f) != getattr(b, f)
    }
    assert edits == SPLIT["seen"]
    scenes = {scene for pair in pairs for scene in pair}
    for seed in seeds:
        drawn = triplets(200, seed=seed, layout_range=LAYOUT_RANGE)
        drawn += [
            t
            for split in ("seen", "unseen", COMPOUND)
            for t in triplets(50, seed, layout_range=LAYOUT_RANGE, split=split)
        ]
        assert not {scene for t in drawn for scene in (t.a, t.a_prime, t.b, t.b_prime)} & scenes, seed


def bundled_plan():
    """The plan the bundled world was trained by (its training.json)."""
    import json

    from diffinv.shapes import MODEL_DIR
    from diffinv.shapes.descriptor import TrainingPlan

    return TrainingPlan.from_record(json.loads((MODEL_DIR / "training.json").read_text())["plan"])


@pytest.mark.parametrize("seeds", [pytest.param(range(1000), marks=pytest.mark.slow), range(40)])
def test_no_scene_of_the_worlds_training_streams_is_a_triplet(seeds):
    """The data streams (renders, edit pairs, both kinds of grid; offsets included) of today's plan
    and of the bundled world's against 200 triplets of every kind of each triplet seed 0–999 (slow;
    the default run checks seeds 0–39). Today's plan draws from keyed streams: no triplet at all.
    The bundled world was trained on integer streams (`data_streams` "integer"): no triplet of a
    split, which every --split run draws, but the unsplit triplets of seeds 0–3 share its streams."""
    from diffinv.shapes.data import training_scenes
    from diffinv.shapes.descriptor import TrainingPlan

    bundled = bundled_plan()
    assert (bundled.data_streams, TrainingPlan().data_streams) == ("integer", "keyed")
    old, new = (set().union(*training_scenes(plan).values()) for plan in (bundled, TrainingPlan()))
    assert min(len(old), len(new)) > 60_000
    old_meets = set()
    for seed in seeds:
        split_scenes = {
            scene
            for split in ("seen", "unseen", COMPOUND)
            for t in triplets(200, seed, layout_range=LAYOUT_RANGE, split=split)
            for scene in (t.a, t.a_prime, t.b, t.b_prime)
        }
        unsplit = {s for t in triplets(200, seed, layout_range=LAYOUT_RANGE) for s in (t.a, t.a_prime, t.b, t.b_prime)}
        assert not (split_scenes | unsplit) & new, seed
        assert not split_scenes & old, seed
        if unsplit & old:
            old_meets.add(seed)
    assert old_meets == {0, 1, 2, 3} & set(seeds)


def test_a_plan_recorded_before_keyed_streams_draws_as_it_did():
    from diffinv.shapes.descriptor import TrainingPlan

    assert TrainingPlan.from_record({"seed": 5}).stream("renders", 0) == 5
    assert TrainingPlan.from_record({"seed": 5}).stream("edit pairs", 1) == 6
    assert TrainingPlan(seed=5).stream("edit pairs", 1) == "edit pairs/5"
    with pytest.raises(DiffinvError, match="data_streams must be one of"):
        TrainingPlan(data_streams="mixed")


def test_a_world_is_resumed_by_the_plan_it_recorded(tmp_path):
    import json
    from dataclasses import asdict

    from diffinv.shapes.descriptor import TrainingPlan
    from diffinv.shapes.train import recorded_plan

    assert recorded_plan(tmp_path) is None  # a new world: today's plan
    plan = asdict(TrainingPlan(seed=5, n_images=7))
    del plan["data_streams"]  # written before the field existed
    (tmp_path / "training.json").write_text(json.dumps({"plan": plan, "seconds": {}}))
    assert recorded_plan(tmp_path) == TrainingPlan(seed=5, n_images=7, data_streams="integer")


# --- the bench: --split -----------------------------------------------------------------------------------
def test_the_bench_draws_each_split_side_by_side():
    from diffinv.bench.datasets import shapes_dataset

    drawn = shapes_dataset(4, seed=2, layout_range=LAYOUT_RANGE, split="all")
    assert [t.split for t in drawn] == ["seen"] * 4 + ["unseen"] * 4 + [COMPOUND] * 4
    assert len({t.id for t in drawn}) == 12 and all(t.split in t.id for t in drawn)
    assert all(split_of(t.truth) == t.split for t in drawn)
    assert [t.id for t in shapes_dataset(3, seed=2)] == ["shapes-s2-0000", "shapes-s2-0001", "shapes-s2-0002"]


def test_the_report_gives_each_split_and_its_paired_differences(tmp_path):
    import json

    from diffinv.bench.report import write_reports

    rows = []
    for split, right in (("seen", 1.0), ("unseen", 0.0), (COMPOUND, 0.0)):
        for i in range(4):
            for method, correct in (("a", right), ("b", 0.0)):
                scores = {"correct": correct, "edit": 1.0, "preserved": correct}
                rows.append({"method": method, "id": f"{split}-{i}", "split": split, "grid": "g.png", **scores})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "run.json").write_text("{}")
    summary = Path(write_reports(tmp_path, baseline="b")["md"]).read_text()
    assert "## Per split: correct / edit / preserved (%)" in summary
    assert "| a | 100 / 100 / 100 | 0 / 100 / 0 | 0 / 100 / 0 |" in summary
    assert "## Paired differences against b, seen edits" in summary and "unseen edits" in summary


def test_split_needs_a_model_that_records_what_it_learned_from(tmp_path):
    from diffinv.bench.command import RunOptions, check_learned_split, run_command
    from diffinv.errors import DiffinvError
    from diffinv.model_card import model_card, write_descriptor

    def no_loading(options):
        raise AssertionError("a model was loaded before the split was checked")

    (tmp_path / "plain").mkdir()
    write_descriptor(tmp_path / "plain", name="plain", world={"version": 2, "layout_range": LAYOUT_RANGE})
    with pytest.raises(DiffinvError, match="learned_split"):
        run_command(RunOptions(out=tmp_path / "run", n=1, split="unseen", model=str(tmp_path / "plain")), no_loading)
    check_learned_split(model_card("shapes"), None)  # 'none': learns nothing across pairs
    check_learned_split(model_card("shapes"), model_card("shapes-editor"))  # the bundled encoder: 'seen'
    write_descriptor(tmp_path / "plain", name="every", learned_split="all")
    with pytest.warns(UserWarning, match="its 'unseen' edits are seen"):
        check_learned_split(model_card("shapes"), model_card(tmp_path / "plain"))
