"""`diffinv bench`: method specs, the three datasets, the directional score, the interval
arithmetic, and the runner's promises — results written as they finish, resume without
redoing work, half-written lines harmless, shards merging into one result set."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config, shape_image
from diffinv.bench.datasets import BenchTriplet, folder_dataset, instructpix2pix_dataset, shapes_dataset
from diffinv.bench.methods import PRESETS, expand_methods, parse_changes, parse_method
from diffinv.bench.metrics import Dinov2Embedder, directional_score
from diffinv.bench.report import mean_interval, paired_differences, read_results, summarize, t_quantile, write_reports
from diffinv.bench.run import RESULTS, BenchRunner, Shard, append_result, check_run_record
from diffinv.cli import main
from diffinv.errors import DiffinvError

EXAMPLES = Path(__file__).parent.parent / "examples"


# --- methods ---------------------------------------------------------------------------------------
def test_method_specs_map_to_config_changes():
    assert parse_method("difference-inversion").changes == {}
    assert parse_method("no-token-consistency").changes == {"use_token_consistency": False}
    assert parse_method("image-delta-only").changes == {"alpha": 0.0}
    assert parse_method("text-delta-only").changes == {"alpha": 1.0}
    assert parse_method("random-init").changes == {"init": "random"}
    assert parse_method("n=3").changes == {"n_tokens": 3}
    assert parse_method("alpha=0.5").changes == {"alpha": 0.5}
    assert parse_method("sample-from-noise").changes == {"sampling_mode": "noise"}
    custom = parse_method("random-init:steps=7,learning-rate=0.5")
    assert custom.changes == {"init": "random", "steps": 7, "learning_rate": 0.5} and custom.fits_tokens
    assert not parse_method("copy-b").fits_tokens and parse_method("oracle-caption").base == "oracle-caption"
    assert parse_method("n=8").config(fast_config()).n_tokens == 8


def test_presets_expand_in_order_without_duplicates():
    specs = [m.spec for m in expand_methods(["fig5", "difference-inversion", "n-sweep"])]
    assert specs == PRESETS["fig5"] + PRESETS["n-sweep"]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("dreambooth", "unknown method"),
        ("copy-b:alpha=1", "takes no config"),
        ("difference-inversion:colour=red", "bad config change"),
        ("difference-inversion:alpha", "bad config change"),
    ],
)
def test_bad_method_specs_are_refused(spec, fragment):
    with pytest.raises(DiffinvError, match=fragment):
        parse_method(spec)


def test_parse_changes_types():
    assert parse_changes("steps=10,alpha=0.25,hard_tokens=true,init=random") == {
        "steps": 10,
        "alpha": 0.25,
        "hard_tokens": True,
        "init": "random",
    }


# --- datasets --------------------------------------------------------------------------------------
def test_shapes_dataset_is_seeded_with_stable_ids_and_truth():
    first, again = shapes_dataset(6, seed=3), shapes_dataset(6, seed=3)
    assert [t.id for t in first] == [f"shapes-s3-{i:04d}" for i in range(6)]
    assert [t.truth for t in first] == [t.truth for t in again]
    assert [t.family for t in first[:5]] == ["shape", "colour", "size", "background", "dot"]
    assert all(t.caption_b_prime and t.b_prime is not None for t in first)
    only = shapes_dataset(4, families=("dot",))
    assert {t.family for t in only} == {"dot"}
    with pytest.raises(DiffinvError, match="unknown shapes families"):
        shapes_dataset(2, families=("texture",))


def test_folder_dataset_reads_the_examples_layout():
    triplets = folder_dataset(EXAMPLES)
    assert [t.id for t in triplets] == sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    colour = next(t for t in triplets if t.id == "colour")
    assert colour.family == "colour" and colour.caption_b_prime.startswith("a large blue triangle")
    assert colour.a().mode == "RGB" and colour.b_prime is not None


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(DiffinvError, match="no such directory"):
        folder_dataset(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    shape_image((16, 16), "red").save(tmp_path / "half" / "a.png")
    with pytest.raises(DiffinvError, match="1 folders lack"):
        folder_dataset(tmp_path)


def make_instructpix2pix(root: Path) -> None:
    """Three instructions with 1, 2 and 3 pairs; one instruction is spread over two folders."""
    layout = {
        "0001": ("make it snow", [11]),
        "0002": ("turn it blue", [21, 22]),
        "0003": ("add a hat", [31, 32]),
        "0004": ("Add a hat", [41]),
    }
    for folder, (edit, seeds) in layout.items():
        (root / folder).mkdir(parents=True)
        (root / folder / "prompt.json").write_text(json.dumps({"input": "x", "edit": edit, "output": "y"}))
        for seed in seeds:
            shape_image((16, 16), "red", seed=seed).save(root / folder / f"{seed}_0.jpg")
            shape_image((16, 16), "blue", seed=seed).save(root / folder / f"{seed}_1.jpg")


def test_instructpix2pix_protocol(tmp_path):
    make_instructpix2pix(tmp_path)
    triplets = instructpix2pix_dataset(tmp_path, n=300, seed=0)
    # the lone "make it snow" pair cannot be used: it has no other pair for B
    assert sorted(t.id for t in triplets) == ["0002-21", "0002-22", "0003-31", "0003-32", "0004-41"]
    for t in triplets:
        assert t.info["b_from"] != t.id
        same = {"0002": "turn it blue", "0003": "add a hat", "0004": "add a hat"}
        assert same[t.info["b_from"][:4]] == same[t.id[:4]], "B comes from a pair with the same instruction"
    assert [t.id for t in instructpix2pix_dataset(tmp_path, n=3, seed=5)] == [
        t.id for t in instructpix2pix_dataset(tmp_path, n=3, seed=5)
    ]
    assert len(instructpix2pix_dataset(tmp_path, n=3, seed=5)) == 3


def test_instructpix2pix_errors(tmp_path):
    with pytest.raises(DiffinvError, match="no InstructPix2Pix pairs"):
        instructpix2pix_dataset(tmp_path)
    (tmp_path / "0001").mkdir()
    (tmp_path / "0001" / "prompt.json").write_text("{}")
    with pytest.raises(DiffinvError, match="edit"):
        instructpix2pix_dataset(tmp_path)


# --- metrics ---------------------------------------------------------------------------------------
class ColourMean:
    """A toy embedder: the mean colour of the image."""

    name = "mean"

    def __call__(self, images):
        return torch.stack(
            [
                torch.tensor(list(image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))), dtype=torch.float32)
                for image in images
            ]
        )


def test_directional_score_signs():
    red, blue, green = (Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green"))
    dark_red = Image.new("RGB", (8, 8), (128, 0, 0))
    dark_blue = Image.new("RGB", (8, 8), (0, 0, 128))
    embedder = ColourMean()
    assert directional_score(embedder, red, blue, dark_red, dark_blue) == pytest.approx(1.0, abs=1e-5)
    assert directional_score(embedder, red, blue, dark_blue, dark_red) == pytest.approx(-1.0, abs=1e-5)
    assert directional_score(embedder, red, blue, green, green) == 0.0  # B′ = B: no change, no credit


def test_dinov2_embedder_on_a_tiny_model():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(
        Dinov2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=28,
            patch_size=14,
        )
    )
    embedder = Dinov2Embedder(model, resize=32, crop=28)
    images = [shape_image((40, 30), "red"), shape_image((30, 50), "blue")]
    assert embedder.pixels(images).shape == (2, 3, 28, 28)
    features = embedder(images)
    assert features.shape == (2, 16) and not torch.allclose(features[0], features[1])
    assert directional_score(embedder, *images, *images) == pytest.approx(1.0, abs=1e-5)
    assert directional_score(embedder, *images, *images[::-1]) == pytest.approx(-1.0, abs=1e-5)


# --- intervals and summaries ---------------------------------------------------------------------------
def test_t_quantiles_and_interval():
    assert t_quantile(10) == 2.228
    assert t_quantile(30) == pytest.approx(2.042, abs=2e-3)
    assert t_quantile(100) == pytest.approx(1.984, abs=2e-3)
    mean, half = mean_interval([1.0, 0.0, 1.0, 1.0])
    assert mean == 0.75 and half == pytest.approx(3.182 * 0.5 / 2, rel=1e-4)
    assert math.isnan(mean_interval([0.3])[1])


def test_summaries_group_by_method_and_family():
    rows = [
        {"method": "m", "id": str(i), "family": "x" if i < 2 else "y", "correct": float(i % 2), "seconds": 1.0}
        for i in range(4)
    ]
    overall = summarize(rows)
    assert overall[0]["n"] == 4 and overall[0]["correct"] == 0.5
    families = {e["family"]: e for e in summarize(rows, "family")}
    assert families["x"]["n"] == 2 and families["y"]["correct"] == 0.5


def test_family_matrix():
    from diffinv.bench.report import family_matrix

    rows = [
        {
            "method": "m",
            "id": str(i),
            "family": "x" if i < 2 else "y",
            "correct": float(i == 0),
            "edit": 1.0,
            "preserved": float(i == 0),
        }
        for i in range(4)
    ]
    assert family_matrix(rows).splitlines()[2] == "| m | 50 / 100 / 50 | 0 / 100 / 0 |"
    assert family_matrix([{"method": "m", "id": "1", "family": "x", "clip_directional": 0.1}]) == ""


def test_paired_differences_use_only_shared_triplets():
    base = [
        {"method": "difference-inversion", "id": str(i), "correct": 0.0, "clip_directional": 0.1 * i} for i in range(4)
    ]
    other = [
        {"method": "variant", "id": str(i), "correct": 1.0 if i < 2 else 0.0, "clip_directional": 0.1 * i + 0.2}
        for i in range(1, 5)
    ]
    (entry,) = paired_differences(base + other)
    assert entry["method"] == "variant − difference-inversion" and entry["n"] == 3  # ids 1, 2, 3
    assert entry["correct"] == pytest.approx(1 / 3)
    assert entry["clip_directional"] == pytest.approx(0.2) and entry["clip_directional_ci95"] == pytest.approx(
        0.0, abs=1e-9
    )
    assert paired_differences(other) == []


# --- the runner ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bench_di(backbone, clip):
    from diffinv.captioners import ClipRetrievalCaptioner
    from diffinv.pipeline import DifferenceInversion

    return DifferenceInversion(
        backbone, clip, ClipRetrievalCaptioner(clip, [CAPTION_A, CAPTION_A_PRIME, "a photo of a red square"])
    )


def tiny_triplets(count: int = 3) -> list[BenchTriplet]:
    def constant(image):
        return lambda: image

    return [
        BenchTriplet(
            id=f"t{i}",
            a=constant(shape_image((32, 32), "red", seed=i)),
            a_prime=constant(shape_image((32, 32), "blue", seed=10 + i)),
            b=constant(shape_image((32, 32), "red", "square", seed=20 + i)),
            b_prime=constant(shape_image((32, 32), "blue", "square", seed=30 + i)),
            family="colour",
            caption_b_prime="a photo of a blue square",
        )
        for i in range(count)
    ]


def runner_for(bench_di, clip, run_dir, batch=2):
    from diffinv.bench.metrics import ClipEmbedder

    return BenchRunner(bench_di, run_dir, fast_config(steps=2), [ClipEmbedder(clip)], batch_size=batch, progress=False)


def test_runner_writes_everything_and_resumes(bench_di, clip, tmp_path):
    methods = expand_methods(["difference-inversion", "copy-b", "oracle-caption"])
    triplets = tiny_triplets(3)
    assert runner_for(bench_di, clip, tmp_path).run(methods, triplets) == 9
    rows = read_results(tmp_path)
    assert sorted((r["method"], r["id"]) for r in rows) == sorted((m.spec, t.id) for m in methods for t in triplets)
    for row in rows:
        assert (tmp_path / row["b_prime"]).is_file() and (tmp_path / row["grid"]).is_file()
        assert -1 <= row["clip_directional"] <= 1 and "clip_to_truth" in row
    fitted = [r for r in rows if r["method"] == "difference-inversion"]
    assert all((tmp_path / r["loss_plot"]).read_text().startswith("<svg") for r in fitted)
    assert all(r["clip_directional"] == 0.0 for r in rows if r["method"] == "copy-b")

    # the same run again does nothing; a lost line (and a half-written one) is redone, once
    assert runner_for(bench_di, clip, tmp_path).run(methods, triplets) == 0
    lines = (tmp_path / RESULTS).read_text().splitlines()
    (tmp_path / RESULTS).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    assert len(read_results(tmp_path)) == 8
    assert runner_for(bench_di, clip, tmp_path).run(methods, triplets) == 1
    assert len(read_results(tmp_path)) == 9

    paths = write_reports(tmp_path)
    summary = paths["md"].read_text()
    assert "| difference-inversion | 3 |" in summary and "| copy-b | 3 |" in summary
    html = paths["html"].read_text()
    assert html.count("<img") == 9 and "loss</a>" in html
    assert "method,n,seconds_median" in paths["csv"].read_text().splitlines()[0]


def test_shards_split_the_triplets_and_merge_in_one_file(bench_di, clip, tmp_path):
    methods = expand_methods(["copy-b", "difference-inversion"])
    triplets = tiny_triplets(3)
    counts = [runner_for(bench_di, clip, tmp_path, batch=1).run(methods, triplets, Shard(rank, 2)) for rank in (0, 1)]
    assert counts == [4, 2]
    rows = read_results(tmp_path)
    assert len(rows) == 6 and len({(r["method"], r["id"]) for r in rows}) == 6
    assert {r["id"] for r in rows if r["index"] % 2 == 1} == {"t1"}


def test_append_result_closes_a_half_line_first(tmp_path):
    (tmp_path / RESULTS).write_text('{"method": "m", "id": "a"}\n{"method": "m", "i')
    append_result(tmp_path, {"method": "m", "id": "b"})
    assert [r["id"] for r in read_results(tmp_path)] == ["a", "b"]


def test_a_different_run_in_the_same_directory_is_refused(tmp_path):
    record = {
        "dataset": {"name": "shapes", "n": 5},
        "model": "shapes",
        "methods": ["copy-b"],
        "base_config": {"steps": 50},
        "seed": 0,
    }
    check_run_record(tmp_path, record)
    check_run_record(tmp_path, {**record, "methods": ["difference-inversion"]})  # more methods: fine
    assert json.loads((tmp_path / "run.json").read_text())["methods"] == ["copy-b", "difference-inversion"]
    with pytest.raises(DiffinvError, match="different run"):
        check_run_record(tmp_path, {**record, "base_config": {"steps": 60}})
    with pytest.raises(DiffinvError, match="different run"):
        check_run_record(tmp_path, {**record, "seed": 1})


def test_run_records_written_at_once_by_several_processes_merge(tmp_path):
    """Shard processes start together: every one's methods end up in run.json, none fails."""
    from concurrent.futures import ThreadPoolExecutor

    record = {"dataset": {"name": "shapes", "n": 5}, "model": "shapes", "base_config": {"steps": 50}, "seed": 0}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: check_run_record(tmp_path, {**record, "methods": [f"m{i}"]}), range(8)))
    assert sorted(json.loads((tmp_path / "run.json").read_text())["methods"]) == [f"m{i}" for i in range(8)]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_oracle_caption_needs_a_caption(bench_di, clip, tmp_path):
    triplet = tiny_triplets(1)[0]
    triplet.caption_b_prime = None
    with pytest.raises(DiffinvError, match="oracle-caption needs"):
        runner_for(bench_di, clip, tmp_path).run(expand_methods(["oracle-caption"]), [triplet])


# --- the command ------------------------------------------------------------------------------------
def test_bench_command_on_the_shapes_world(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "bench",
        "run",
        "--out",
        out,
        "--n",
        "3",
        "--method",
        "difference-inversion",
        "--method",
        "copy-b",
        "--set",
        "steps=3,sampling_steps=4",
        "--quiet",
    ]
    assert main([str(a) for a in argv]) == 0
    assert "ran 6 (method, triplet) pairs" in capsys.readouterr().out
    rows = read_results(out)
    assert {"edit", "preserved", "correct", "clip_directional"} <= set(rows[0])
    assert json.loads((out / "run.json").read_text())["base_config"]["steps"] == 3
    assert main([str(a) for a in argv]) == 0 and "ran 0" in capsys.readouterr().out
    assert main(["bench", "report", str(out)]) == 0 and (out / "report.html").is_file()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--dataset", "folder"], "needs --data"),
        (["--dataset", "instructpix2pix", "--data", "/nonexistent/ip2p"], "no such directory"),
        (["--method", "nope"], "unknown method"),
        (["--set", "bogus=1"], "bad config change"),
        (["--set", "alpha=2"], "alpha"),
        (["--batch", "0"], "--batch"),
        (["--embedder", "dinov2"], "bad --embedder"),
    ],
)
def test_bench_command_errors(tmp_path, capsys, argv, fragment):
    code = main(["bench", "run", "--out", str(tmp_path / "run"), "--n", "1", "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err


def test_bench_report_on_a_directory_without_results(tmp_path, capsys):
    assert main(["bench", "report", str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_two_shard_processes_share_one_result_set(tmp_path):
    """As under `accelerate launch`: RANK / WORLD_SIZE split the triplets between concurrent
    processes, which append to one results.jsonl."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "diffinv.cli",
        "bench",
        "run",
        "--out",
        str(out),
        "--n",
        "4",
        "--method",
        "copy-b",
        "--method",
        "difference-inversion",
        "--set",
        "steps=2,sampling_steps=2",
        "--quiet",
    ]
    processes = [
        subprocess.Popen(
            argv,
            env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert all("ran 4 (method, triplet) pairs (shard" in stdout for stdout, _ in outputs)
    rows = read_results(out)
    assert sorted((r["method"], r["index"]) for r in rows) == sorted(
        (m, i) for m in ("copy-b", "difference-inversion") for i in range(4)
    )
    assert "| difference-inversion | 4 |" in (out / "summary.md").read_text()


def test_bench_on_a_saved_model_with_a_folder_dataset_and_dinov2(tiny_model_dir, tmp_path, capsys):
    """The real-model path end to end, offline: a model directory, the folder layout of
    examples/, CLIP retrieval captions, and a DINOv2 loaded from a directory."""
    from transformers import Dinov2Config, Dinov2Model

    model_dir, clip_dir = tiny_model_dir
    dinov2_dir = tmp_path / "dinov2"
    Dinov2Model(
        Dinov2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=224,
            patch_size=56,
        )
    ).save_pretrained(dinov2_dir)
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a red circle\na photo of a blue square\na photo of a green triangle\n")
    out = tmp_path / "run"
    argv = [
        "bench",
        "run",
        "--out",
        out,
        "--dataset",
        "folder",
        "--data",
        EXAMPLES,
        "--n",
        "2",
        "--model",
        model_dir,
        "--clip-model",
        clip_dir,
        "--captions-from",
        captions,
        "--embedder",
        "clip",
        "--embedder",
        f"dinov2={dinov2_dir}",
        "--set",
        "steps=2,sampling_steps=2,prompt_source=caption",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    rows = read_results(out)
    assert sorted((r["method"], r["id"]) for r in rows) == sorted(
        (m, i) for m in ("difference-inversion", "copy-b") for i in ("background", "colour")
    )
    assert all({"clip_directional", "dinov2_directional", "clip_to_truth", "dinov2_to_truth"} <= set(r) for r in rows)
    assert "edit" not in rows[0]  # no classifier outside the shapes world
    capsys.readouterr()

    missing = [
        "bench",
        "run",
        "--out",
        tmp_path / "run2",
        "--dataset",
        "folder",
        "--data",
        EXAMPLES,
        "--model",
        model_dir,
        "--clip-model",
        clip_dir,
        "--captions-from",
        captions,
        "--embedder",
        f"dinov2={tmp_path / 'no-such-dinov2'}",
        "--device",
        "cpu",
        "--quiet",
    ]
    code = main([str(a) for a in missing])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-dinov2: no such DINOv2 model directory" in err and len(err.splitlines()) == 1, err
