"""`diffinv bench judge`: the two-option, both-orders VLM judge protocol on a fake run directory.

The run directory is written by hand (tiny one-colour PNGs, grids made as the bench runner
makes them, results.jsonl rows with known shapes-world verdicts), so the expected win rate can be
computed by hand. A tiny random LLaVA built in code stands in for a real VLM.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diffinv.bench.judge import QUESTION, TransformersJudge, TruthJudge, judge_run, outcome, parse_choice
from diffinv.cli import main
from diffinv.grid import image_grid

A, A_PRIME, B = (200, 0, 0), (0, 0, 200), (200, 200, 0)
METHODS = {"difference-inversion": (0, 200, 0), "copy-b": (0, 200, 200)}
# id → family and the verdicts of (difference-inversion, copy-b); None: that method has no row
TRIPLETS = {
    "t0": ("colour", {"correct": 1, "edit": 1, "preserved": 1}, {"correct": 0, "edit": 0, "preserved": 1}),  # win
    "t1": ("colour", {"correct": 0, "edit": 1, "preserved": 0}, {"correct": 0, "edit": 0, "preserved": 1}),  # win
    "t2": ("dot", {"correct": 0, "edit": 0, "preserved": 0}, {"correct": 0, "edit": 0, "preserved": 1}),  # loss
    "t3": ("dot", {"correct": 0, "edit": 0, "preserved": 1}, {"correct": 0, "edit": 0, "preserved": 1}),  # tie
    "t4": ("dot", {"correct": 1, "edit": 1, "preserved": 1}, None),  # copy-b missing: not judged
}
EXPECTED_RATE = (1 + 1 + 0 + 0.5) / 4


def solid(colour) -> Image.Image:
    return Image.new("RGB", (8, 8), colour)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    rows = []
    for index, (triplet_id, (family, *verdicts)) in enumerate(TRIPLETS.items()):
        for (method, colour), verdict in zip(METHODS.items(), verdicts):
            if verdict is None:
                continue
            paths = {"b_prime": f"images/{method}/{triplet_id}.png", "grid": f"grids/{method}/{triplet_id}.png"}
            for path in paths.values():
                (run / path).parent.mkdir(parents=True, exist_ok=True)
            solid(colour).save(run / paths["b_prime"])
            tiles = [solid(A), solid(A_PRIME), solid(B), solid(colour)] + ([solid(B)] if index % 2 else [])
            image_grid(tiles, ["A", "A'", "B", "B'", "true B'"][: len(tiles)], height=128).save(run / paths["grid"])
            rows.append({"method": method, "id": triplet_id, "index": index, "family": family, **paths, **verdict})
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (run / "run.json").write_text(json.dumps({"dataset": {"name": "shapes"}}), encoding="utf-8")
    return run


class Recording:
    """TruthJudge, recording what it was shown (the colour of each picture)."""

    name = "truth"

    def __init__(self):
        self.calls = []

    def __call__(self, images, question):
        self.calls.append(([image.getpixel((image.width // 2, image.height // 2)) for image in images], question))
        return TruthJudge()(images, question)


def colour_to_method(colour):
    return next(m for m, c in METHODS.items() if c == colour)


def test_parse_choice_and_outcome():
    assert parse_choice("2") == 2 and parse_choice(" Candidate 1.") == 1 and parse_choice("the second one") is None
    assert parse_choice("second") == 2 and parse_choice("") is None and parse_choice("1 or 2") is None
    assert parse_choice("12") is None and parse_choice("tie") is None
    assert outcome([1, 2], [1, 2]) == "win" and outcome([2, 1], [1, 2]) == "loss"
    assert outcome([1, 1], [1, 2]) == "tie" and outcome([None, 2], [1, 2]) == "tie"


def test_truth_judge_win_rate_both_orders_and_tiles(run_dir):
    judge = Recording()
    result = judge_run(run_dir, "difference-inversion", "copy-b", judge, seed=0)
    summary = result["summary"]
    assert summary["n"] == 4 and (summary["wins"], summary["ties"], summary["losses"]) == (2, 1, 1)
    assert summary["win_rate"] == pytest.approx(EXPECTED_RATE)
    assert summary["decisive_win_rate"] == pytest.approx(2 / 3)
    assert summary["unparsed"] == 2  # the tie: the truth judge names no candidate, in both orders
    assert result["by_family"]["colour"]["win_rate"] == 1.0 and result["by_family"]["dot"]["win_rate"] == 0.25
    assert [d["outcome"] for d in result["decisions"]] == ["win", "win", "loss", "tie"]
    # every triplet asked twice, the second time with the candidates swapped; A, A′, B cut from the grids
    assert len(judge.calls) == 8
    for first, second in zip(judge.calls[::2], judge.calls[1::2]):
        (colours, question), (swapped, _) = first, second
        assert question == QUESTION and len(colours) == 5
        assert colours[:3] == [A, A_PRIME, B] and swapped[:3] == [A, A_PRIME, B]
        assert colours[3:] == swapped[3:][::-1] and {colour_to_method(c) for c in colours[3:]} == set(METHODS)
    for decision, (colours, _) in zip(result["decisions"], judge.calls[::2]):
        assert decision["asks"][0]["order"] == [colour_to_method(c) for c in colours[3:]]
    # the files: every decision in both orders, and the markdown table
    saved = json.loads((run_dir / "judge-difference-inversion-vs-copy-b.json").read_text())
    assert saved["summary"]["win_rate"] == pytest.approx(EXPECTED_RATE) and len(saved["decisions"]) == 4
    markdown = (run_dir / "judge-difference-inversion-vs-copy-b.md").read_text()
    assert "| all | 4 | 2 | 1 | 1 |" in markdown and "| colour |" in markdown and "62.5" in markdown
    # resumable: nothing is asked again
    again = Recording()
    assert judge_run(run_dir, "difference-inversion", "copy-b", again, seed=0)["summary"] == summary
    assert again.calls == []


def test_the_order_is_seeded(run_dir):
    def first_orders(seed):
        result = judge_run(run_dir, "difference-inversion", "copy-b", TruthJudge(), seed=seed)
        return [d["asks"][0]["order"] for d in result["decisions"]], result["summary"]["win_rate"]

    orders, rate = first_orders(0)
    assert first_orders(0) == (orders, rate)
    others = [first_orders(seed) for seed in range(1, 6)]
    assert any(o != orders for o, _ in others)  # another seed draws other orders somewhere
    assert all(r == pytest.approx(EXPECTED_RATE) for _, r in others)  # a perfect judge does not care


def tiny_llava(directory) -> None:
    """A random LLaVA small enough to build in a second, with a word-level tokenizer and a chat
    template taking several images; its head is zero, so it always answers the pad token ("")."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "1", "2", "USER:", "ASSISTANT:"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.add_tokens(["<image>"], special_tokens=True)
    template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}"
        "{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=fast,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=4, vision_feature_select_strategy="default"
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def test_transformers_judge_on_a_tiny_vlm(run_dir, tmp_path):
    directory = tmp_path / "tiny-vlm"
    tiny_llava(directory)
    judge = TransformersJudge(str(directory), "cpu")
    images = [solid(c) for c in (A, A_PRIME, B, *METHODS.values())]
    answer = judge(images, QUESTION)
    assert isinstance(answer, str) and parse_choice(answer) is None
    result = judge_run(run_dir, "difference-inversion", "copy-b", judge, seed=0)
    summary = result["summary"]
    assert (summary["n"], summary["ties"], summary["unparsed"]) == (4, 4, 8)
    assert summary["win_rate"] == pytest.approx(0.5) and result["judge"] == str(directory)


def test_bench_judge_command(run_dir, capsys):
    assert main(["bench", "judge", str(run_dir), "--against", "copy-b", "--judge", "truth", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "win rate 62.5%" in out and "2 wins, 1 ties, 1 losses" in out
    assert (run_dir / "judge-difference-inversion-vs-copy-b.md").exists()
    # a missing method, or no run directory: one line, exit 2, before any model loads
    assert main(["bench", "judge", str(run_dir), "--against", "oracle-caption", "--judge", "no/such-model"]) == 2
    err = capsys.readouterr().err
    assert "oracle-caption" in err and err.count("\n") == 1
    missing = str(run_dir / "missing")
    assert main(["bench", "judge", missing, "--against", "copy-b", "--judge", "truth"]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_images_from_a_folder_dataset_and_one_triplet(run_dir, tmp_path):
    """--data: A, A′ and B read from the folder dataset's files rather than cut from the grids."""
    data = tmp_path / "data"
    colours = {"a": (10, 10, 10), "a_prime": (20, 20, 20), "b": (30, 30, 30)}
    for triplet_id in TRIPLETS:
        (data / triplet_id).mkdir(parents=True)
        for stem, colour in colours.items():
            solid(colour).save(data / triplet_id / f"{stem}.png")
    from diffinv.bench.datasets import folder_dataset

    judge = Recording()
    result = judge_run(run_dir, "difference-inversion", "copy-b", judge, data={t.id: t for t in folder_dataset(data)})
    assert all(colours_[:3] == list(colours.values()) for colours_, _ in judge.calls)
    assert result["summary"]["win_rate"] == pytest.approx(EXPECTED_RATE)
    # one triplet: no interval, written as null in standard JSON
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] == "t0"))
    one = judge_run(run_dir, "copy-b", "difference-inversion", TruthJudge())
    assert one["summary"]["win_rate"] == 0.0
    saved = json.loads((run_dir / "judge-copy-b-vs-difference-inversion.json").read_text(), parse_constant=None)
    assert saved["summary"]["win_rate_ci95"] is None


def test_the_truth_judge_from_python_never_imports_torch(run_dir):
    """`judge_command` with its options and no command line; `--judge truth` reads JSON and pictures only."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from diffinv.bench.judge import JudgeOptions, judge_command\n"
        f"judge_command(JudgeOptions(run_dir={str(run_dir)!r}, against='copy-b', judge='truth', quiet=True))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "win rate 62.5%" in done.stdout and done.stdout.splitlines()[-1] == "[]", done.stdout
