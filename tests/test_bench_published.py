"""The published benchmarks (`diffinv.bench.published`), each on a miniature copy written here in its
own published layout (file names, JSON keys, image formats), and peak memory per method."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from diffinv.bench.datasets import BenchTriplet
from diffinv.bench.memory import PeakMemory
from diffinv.bench.published import (
    analogist_dataset,
    families_in_turn,
    lorweb_dataset,
    reedit_dataset,
    relation252k_dataset,
)
from diffinv.bench.report import markdown_table, memory_by_method, summarize
from diffinv.errors import DiffinvError

RED, GREEN, BLUE, YELLOW = (220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 20)
SIZE = 32


def solid(colour, size=(SIZE, SIZE)) -> Image.Image:
    return Image.new("RGB", size, colour)


def side_by_side(*colours) -> Image.Image:
    """Tiles of `colours` left to right (Relation252K's pairs, LoRWeB's control strips)."""
    strip = Image.new("RGB", (SIZE * len(colours), SIZE))
    for index, colour in enumerate(colours):
        strip.paste(solid(colour), (index * SIZE, 0))
    return strip


def colour_of(image: Image.Image) -> tuple[int, int, int]:
    """The centre pixel (JPEG blurs the seams of a tile, never its middle much)."""
    return image.getpixel((image.width // 2, image.height // 2))


def close(found, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(found, expected))


def one_line_error(call, fragment: str) -> str:
    with pytest.raises(DiffinvError) as caught:
        call()
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    return message


# --- ReEdit-Bench: <pair>/0_0 0_1 1_0 [1_1], .png as the code reads them, .jpg as the project page --------
def write_reedit(root: Path, with_truth: bool = True) -> Path:
    for name, suffix in (("add_butterfly", ".png"), ("bg_ocean-41", ".jpg"), ("style_cartoon-23", ".png")):
        folder = root / name
        folder.mkdir(parents=True)
        for stem, colour in zip(("0_0", "0_1", "1_0", "1_1"), (RED, GREEN, BLUE, YELLOW)):
            if stem != "1_1" or with_truth:
                solid(colour).save(folder / f"{stem}{suffix}")
    return root


def test_reedit_reads_its_tuple_folders(tmp_path):
    triplets = reedit_dataset(write_reedit(tmp_path / "reedit"))
    assert [t.id for t in triplets] == ["add_butterfly", "bg_ocean-41", "style_cartoon-23"]
    assert [t.family for t in triplets] == ["add", "bg", "style"]
    for triplet in triplets:
        images = (triplet.a(), triplet.a_prime(), triplet.b(), triplet.b_prime())
        assert all(close(colour_of(i), c) for i, c in zip(images, (RED, GREEN, BLUE, YELLOW)))
        assert triplet.caption_b_prime is None and triplet.instruction is None  # ReEdit-Bench has no words
    without_truth = reedit_dataset(write_reedit(tmp_path / "code-layout", with_truth=False))
    assert [t.b_prime for t in without_truth] == [None] * 3  # the authors' code reads folders without y_edit


def test_reedit_partial_copies_name_the_missing_file(tmp_path):
    root = write_reedit(tmp_path / "reedit")
    (root / "bg_ocean-41" / "1_0.jpg").unlink()
    one_line_error(lambda: reedit_dataset(root), "bg_ocean-41/1_0.png (or .jpg): missing, the y (B) image")
    solid(BLUE).save(root / "bg_ocean-41" / "1_0.jpg")
    (root / "style_cartoon-23" / "1_1.png").unlink()
    one_line_error(lambda: reedit_dataset(root), "style_cartoon-23/1_1.png (or .jpg): missing, the y_edit")
    (root / "stray").mkdir()
    one_line_error(lambda: reedit_dataset(root), "stray/0_0.png")
    one_line_error(lambda: reedit_dataset(tmp_path / "nowhere"), "no such directory")


# --- LoRWeB: analogy_metadata.json, control/<id>.jpg (A | A′ | B), target/<id>.jpg and .txt ------------------
def write_lorweb(root: Path) -> Path:
    (root / "control").mkdir(parents=True)
    (root / "target").mkdir()
    entries = []
    for number, category in enumerate(("115-Colored Pencil Filter", "203-Add Hat")):
        analogy_id = f"analogy_{category}_a.jpg_{category}_c.jpg_{number:04d}"
        side_by_side(RED, GREEN, BLUE).save(root / "control" / f"{analogy_id}.jpg", quality=95)
        solid(YELLOW).save(root / "target" / f"{analogy_id}.jpg", quality=95)
        prompt = f"apply the {category} relation"
        (root / "target" / f"{analogy_id}.txt").write_text(prompt)
        pair = {"edit_prompt": prompt, "left_image_description": "before", "img_name": "a.jpg"}
        entries.append(
            {
                "analogy_id": analogy_id,
                "edit_prompt": prompt,
                "category": category,
                "direction": "forward",
                "control_image_path": f"control/{analogy_id}.jpg",
                "target_image_path": f"target/{analogy_id}.jpg",
                "caption_path": f"target/{analogy_id}.txt",
                "pair_A": {**pair, "image_id": f"{category}_a.jpg", "right_image_description": "A after"},
                "pair_C": {**pair, "image_id": f"{category}_c.jpg", "right_image_description": "C after"},
            }
        )
    (root / "analogy_metadata.json").write_text(json.dumps(entries, indent=2))
    return root


def test_lorweb_cuts_the_control_strip(tmp_path):
    triplets = lorweb_dataset(write_lorweb(tmp_path / "lorweb"))
    assert [t.family for t in triplets] == ["115-Colored Pencil Filter", "203-Add Hat"]
    assert triplets[0].id == "analogy_115-Colored-Pencil-Filter_a.jpg_115-Colored-Pencil-Filter_c.jpg_0000"
    first = triplets[0]
    assert first.a().size == (SIZE, SIZE)
    images = (first.a(), first.a_prime(), first.b(), first.b_prime())
    assert all(close(colour_of(i), c) for i, c in zip(images, (RED, GREEN, BLUE, YELLOW)))
    assert first.instruction == "apply the 115-Colored Pencil Filter relation"
    assert first.caption_b_prime == "C after" and first.info == {"direction": "forward"}


def test_lorweb_partial_copies(tmp_path):
    root = write_lorweb(tmp_path / "lorweb")
    metadata = json.loads((root / "analogy_metadata.json").read_text())
    del metadata[1]["target_image_path"]
    (root / "analogy_metadata.json").write_text(json.dumps(metadata))
    one_line_error(lambda: lorweb_dataset(root), 'entry 1 has no "target_image_path" key')
    root = write_lorweb(tmp_path / "again")
    (root / json.loads((root / "analogy_metadata.json").read_text())[0]["control_image_path"]).unlink()
    one_line_error(lambda: lorweb_dataset(root), "missing, the A | A′ | B control strip of entry 0")
    (root / "analogy_metadata.json").unlink()
    one_line_error(lambda: lorweb_dataset(root), "analogy_metadata.json: missing")


# --- Relation252K: <category>/Group1/labels.json and before | after pairs ------------------------------------
def write_relation252k(root: Path) -> Path:
    for category, colours in (("115-Colored Pencil Filter", (RED, GREEN)), ("203-Add Hat", (BLUE, YELLOW))):
        group = root / category / "Group1"
        group.mkdir(parents=True)
        labels = []
        for number in (1, 2):
            name = f"{number}.jpg"
            side_by_side(*colours if number == 1 else colours[::-1]).save(group / name, quality=95)
            labels.append(
                {
                    "left_image_description": f"{category} before {number}",
                    "right_image_description": f"{category} after {number}",
                    "edit_instruction": f"{category} edit {number}",
                    "img_name": name,
                }
            )
        (group / "labels.json").write_text(json.dumps(labels, indent=2))
    return root


def test_relation252k_pairs_each_example_with_the_next_of_its_relation(tmp_path):
    triplets = relation252k_dataset(write_relation252k(tmp_path / "r252k"))
    assert [t.id for t in triplets] == [
        "115-Colored-Pencil-Filter__1-2",
        "115-Colored-Pencil-Filter__2-1",
        "203-Add-Hat__1-2",
        "203-Add-Hat__2-1",
    ]
    first = triplets[0]  # A → A′ from 1.jpg (red | green), B → B′ from 2.jpg (green | red)
    images = (first.a(), first.a_prime(), first.b(), first.b_prime())
    assert all(close(colour_of(i), c) for i, c in zip(images, (RED, GREEN, GREEN, RED)))
    assert first.family == "115-Colored Pencil Filter" and first.instruction == "115-Colored Pencil Filter edit 1"
    assert first.caption_b_prime == "115-Colored Pencil Filter after 2" and first.info == {"b_from": "2.jpg"}


def test_relation252k_partial_copies(tmp_path):
    root = write_relation252k(tmp_path / "r252k")
    labels = root / "203-Add Hat" / "Group1" / "labels.json"
    entries = json.loads(labels.read_text())
    del entries[0]["edit_instruction"]
    labels.write_text(json.dumps(entries))
    one_line_error(lambda: relation252k_dataset(root), 'entry 0 has no "edit_instruction" key')
    root = write_relation252k(tmp_path / "again")
    (root / "203-Add Hat" / "Group1" / "2.jpg").unlink()
    one_line_error(lambda: relation252k_dataset(root), "Group1/2.jpg: missing, an image named in labels.json")
    (root / "203-Add Hat" / "Group1" / "labels.json").unlink()
    one_line_error(lambda: relation252k_dataset(root), "labels.json: missing")


# --- Analogist: <task>_raw/001-003 (+ <task>_processed/prompts.txt), evaluation grids + *_gpt4_out.txt -------
def analogist_grid(colours) -> Image.Image:
    """A 512×512 grid as Analogist's visual prompting makes it: cells of 256, each image inset by 2
    pixels (253 wide), A | A′ over B | black (masked)."""
    grid, cell, border = Image.new("RGB", (512, 512), (255, 255, 255)), 256, 2
    inner = int(cell - 1.5 * border)
    for (column, row), colour in zip(((0, 0), (1, 0), (0, 1), (1, 1)), colours):
        left = border if column == 0 else cell + border - 1
        top = border if row == 0 else cell + border - 1
        grid.paste(solid(colour, (inner, inner)), (left, top))
    return grid


def write_analogist(root: Path) -> Path:
    (root / "caricature_processed").mkdir(parents=True)  # only the processed grid, no raw images
    analogist_grid((RED, GREEN, BLUE, (0, 0, 0))).save(root / "caricature_processed" / "input.png")
    (root / "caricature_processed" / "prompts.txt").write_text("a drawn face\n")
    for task, prompts in (("colorization", "a toy in colour\na coloured toy\n"), ("corgi", None)):
        raw = root / f"{task}_raw"
        raw.mkdir(parents=True)
        for stem, colour in zip(("001", "002", "003"), (RED, GREEN, BLUE)):
            solid(colour).save(raw / f"{stem}.png")
        if prompts:
            (root / f"{task}_processed").mkdir()
            (root / f"{task}_processed" / "prompts.txt").write_text(prompts)
    category = root / "low_level_tasks_processed"
    (category / "deblur_masked").mkdir(parents=True)
    for name in ("0001.png", "0002.png"):
        analogist_grid((RED, GREEN, BLUE, (0, 0, 0))).save(category / "deblur_masked" / name)
    (category / "deblur_gpt4_out.txt").write_text("0001\ta sharp cat\ta crisp cat\n0002\ta sharp dog\ta crisp dog\n")
    return root


def test_analogist_reads_examples_and_evaluation_grids(tmp_path):
    triplets = analogist_dataset(write_analogist(tmp_path / "analogist"))
    assert [(t.id, t.family) for t in triplets] == [
        ("caricature", "caricature"),
        ("colorization", "colorization"),
        ("corgi", "corgi"),
        ("deblur__0001", "deblur"),
        ("deblur__0002", "deblur"),
    ]
    captions = ["a drawn face", "a toy in colour", None, "a sharp cat", "a sharp dog"]
    assert [t.caption_b_prime for t in triplets] == captions
    assert all(t.b_prime is None for t in triplets)  # Analogist publishes no ground truth
    for triplet in (triplets[0], triplets[1], triplets[3]):
        images = (triplet.a(), triplet.a_prime(), triplet.b())
        assert all(close(colour_of(i), c, tolerance=0) for i, c in zip(images, (RED, GREEN, BLUE)))
    cell = triplets[3].b()
    assert cell.size == (253, 253) and cell.getextrema() == ((20, 20), (20, 20), (220, 220))  # no border in it
    assert triplets[3].info == {"category": "low_level_tasks"}


def test_analogist_partial_copies(tmp_path):
    root = write_analogist(tmp_path / "analogist")
    (root / "corgi_raw" / "002.png").unlink()
    one_line_error(lambda: analogist_dataset(root), "corgi_raw/002.png: missing, the A′ image of task corgi")
    solid(GREEN).save(root / "corgi_raw" / "002.png")
    (root / "low_level_tasks_processed" / "deblur_masked" / "0002.png").unlink()
    one_line_error(lambda: analogist_dataset(root), "2 prompt lines for 1 grids in deblur_masked")
    (root / "low_level_tasks_processed" / "deblur_gpt4_out.txt").unlink()
    one_line_error(lambda: analogist_dataset(root), "deblur_gpt4_out.txt: missing")
    (root / "low_level_tasks_processed" / "denoise_gpt4_out.txt").write_text("0001\ta clean cat\n")
    one_line_error(lambda: analogist_dataset(root), "denoise_masked: missing, the grids that denoise_gpt4_out.txt")
    one_line_error(lambda: analogist_dataset(tmp_path), "no Analogist tasks")


def test_a_subset_takes_the_families_in_turn():
    def triplet(family, number):
        return BenchTriplet(id=f"{family}{number}", a=None, a_prime=None, b=None, family=family)

    triplets = [triplet("add", 1), triplet("add", 2), triplet("add", 3), triplet("bg", 1), triplet("style", 1)]
    assert [t.id for t in families_in_turn(triplets, 4)] == ["add1", "bg1", "style1", "add2"]
    assert families_in_turn(triplets, None) == triplets and families_in_turn(triplets, 9) == triplets


# --- peak memory ----------------------------------------------------------------------------------------------
def test_peak_memory_sees_an_allocation_and_resets_between_stretches():
    memory = PeakMemory("cpu")
    assert memory.kind in ("rss", "rss-growth")
    memory.start()
    block = bytearray(64 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just reserved
    big = memory.peak_mb()
    del block
    memory.start()
    small = memory.peak_mb()
    if memory.kind == "rss":  # the whole process's peak, reset at start()
        assert big - small > 50
    else:  # only the growth of the all-time peak
        assert big > 50 and small < 5


def test_peak_memory_on_a_gpu_is_torchs_peak_reset_per_stretch(monkeypatch):
    """The CUDA path without a GPU: the peak statistics of the model's device are reset at start()
    and read at peak_mb() (torch's own counters stand in)."""
    import torch

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: calls.append(("read", device)) or 3 * 2**30)
    memory = PeakMemory("cuda:1")
    memory.start()
    assert memory.kind == "cuda" and memory.peak_mb() == 3072.0
    assert calls == [("reset", "cuda:1"), ("read", "cuda:1")]


def test_the_summary_reports_each_methods_largest_peak():
    rows = [
        {"method": "difference-inversion", "id": "a", "seconds": 1.0, "peak_memory_mb": 900.0, "memory": "cuda"},
        {"method": "difference-inversion", "id": "b", "seconds": 1.0, "peak_memory_mb": 1200.0, "memory": "cuda"},
        {"method": "copy-b", "id": "a", "seconds": 0.0, "peak_memory_mb": 300.0, "memory": "cuda"},
    ]
    table = summarize(rows)
    assert [(e["peak_memory_mb"], e["memory"]) for e in table] == [(1200.0, "cuda"), (300.0, "cuda")]
    assert "peak_memory_mb" not in [m for m in table[0] if m.endswith("_ci95")]  # not averaged as a metric
    assert "| peak MiB (kind) |" in markdown_table(table) and "| 1200 (cuda) |" in markdown_table(table)
    assert (
        memory_by_method(rows)
        == "peak memory per method:\n  difference-inversion: 1200 MiB (cuda)\n  copy-b: 300 MiB (cuda)\n"
    )
    assert memory_by_method([{"method": "copy-b", "id": "a"}]) == ""


# --- end to end ----------------------------------------------------------------------------------------------
def test_bench_run_on_a_published_set(di, tmp_path, capsys):
    """`diffinv bench run --dataset reedit --data DIR --method copy-b` as the command line parses it, on
    the session's tiny model (the command's own loader would load the bundled world: seconds)."""
    from diffinv.bench.command import run_command
    from diffinv.bench.results import read_results
    from diffinv.cli import build_parser
    from diffinv.cli.bench import run_options

    data, out = write_reedit(tmp_path / "reedit"), tmp_path / "run"
    argv = ["bench", "run", "--dataset", "reedit", "--data", data, "--method", "copy-b", "--n", "2"]
    argv += ["--out", out, "--embedder", "clip", "--quiet"]
    run_command(run_options(build_parser().parse_args([str(a) for a in argv])), lambda options: di)
    printed = capsys.readouterr().out
    assert "ran 2 (method, triplet) pairs" in printed and "peak memory per method:\n  copy-b: " in printed
    rows = read_results(out)
    assert [(r["id"], r["family"]) for r in rows] == [("add_butterfly", "add"), ("bg_ocean-41", "bg")]
    assert all("clip_to_truth" in r and r["peak_memory_mb"] > 0 and r["memory"] for r in rows)
    record = json.loads((out / "run.json").read_text())["dataset"]
    assert record == {"name": "reedit", "data": "reedit", "n": 2}
    assert "peak MiB (kind)" in (out / "summary.md").read_text()


def test_the_published_sets_need_data(tmp_path, capsys):
    from diffinv.cli import main

    code = main(["bench", "run", "--dataset", "lorweb", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "--dataset lorweb needs --data DIR" in err, err
