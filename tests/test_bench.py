"""`diffinv bench`: method specs, the three datasets, the directional score, the interval
arithmetic, and the runner's promises — results written as they finish, resume without
redoing work, half-written lines harmless, shards merging into one result set, processes on one
directory splitting the work by claims; the command's checks before the model loads, and a
report that never imports torch."""

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config, shape_image
from diffinv.bench.datasets import BenchTriplet, folder_dataset, instructpix2pix_dataset, shapes_dataset
from diffinv.bench.methods import METHOD_SETS, expand_methods, parse_changes, parse_method
from diffinv.bench.metrics import Dinov2Embedder, directional_score
from diffinv.bench.report import mean_interval, paired_differences, read_results, summarize, t_quantile, write_reports
from diffinv.bench.results import RESULTS, append_result, check_run_record, claim_path
from diffinv.bench.run import BenchRunner, Shard
from diffinv.cli import main
from diffinv.config import InversionConfig
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
    assert specs == METHOD_SETS["fig5"] + METHOD_SETS["n-sweep"]


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
    lines = dict(line.split(": ", 1) for line in (EXAMPLES / "colour" / "captions.txt").read_text().splitlines())
    assert colour.family == "colour" and colour.caption_b_prime == lines["b_prime"]
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


def test_a_run_recorded_before_an_option_existed_is_the_same_run_at_its_default(tmp_path):
    """A new InversionConfig option at its default changes nothing an older run did; set otherwise, it
    makes another run (base config and a method's config alike)."""
    record = {"dataset": {"name": "shapes"}, "model": "shapes", "methods": ["m"], "seed": 0}
    record["base_config"] = {"steps": 50}
    check_run_record(tmp_path, {**record, "configs": {"m": {"steps": 50}}})
    newer = {"steps": 50, "encoder_tolerance": InversionConfig().encoder_tolerance}
    check_run_record(tmp_path, {**record, "base_config": newer, "configs": {"m": newer}})
    other = {**newer, "encoder_tolerance": 0.9}
    with pytest.raises(DiffinvError, match="different run"):
        check_run_record(tmp_path, {**record, "base_config": other})
    with pytest.raises(DiffinvError, match="ran m with another config"):
        check_run_record(tmp_path, {**record, "base_config": newer, "configs": {"m": other}})


def test_run_records_written_at_once_by_several_processes_merge(tmp_path):
    """Shard processes start together: every one's methods end up in run.json, none fails."""
    from concurrent.futures import ThreadPoolExecutor

    record = {"dataset": {"name": "shapes", "n": 5}, "model": "shapes", "base_config": {"steps": 50}, "seed": 0}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: check_run_record(tmp_path, {**record, "methods": [f"m{i}"]}), range(8)))
    assert sorted(json.loads((tmp_path / "run.json").read_text())["methods"]) == [f"m{i}" for i in range(8)]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rows_of_init_auto_say_whether_the_encoders_tokens_were_kept(backbone, clip, tmp_path):
    """init="auto" (a tolerance of 0 here: every triplet fitted) records the check in each row, and the
    report gives how often the encoder's D̃ was kept."""
    from diffinv.bench.report import write_reports
    from diffinv.captioners import ClipRetrievalCaptioner
    from diffinv.pipeline import DifferenceInversion
    from test_diff_encoder import random_encoder

    captioner = ClipRetrievalCaptioner(clip, [CAPTION_A, CAPTION_A_PRIME, "a photo of a red square"])
    di = DifferenceInversion(backbone, clip, captioner, diff_encoder=random_encoder(clip, backbone))
    triplets = tiny_triplets(2)
    methods = expand_methods(["difference-inversion:init=auto,encoder_tolerance=0"])
    assert runner_for(di, clip, tmp_path).run(methods, triplets) == 2
    rows = read_results(tmp_path)
    assert [row["encoder_used"] for row in rows] == [0.0, 0.0]
    assert all(row["encoder_check_pixel"] > 0 and row["encoder_check_clip"] > 0 for row in rows)
    assert all(row["final_loss_tc"] > 0 for row in rows)  # fitted: a loss history
    write_reports(tmp_path)
    assert "| encoder_used (%) |" in (tmp_path / "summary.md").read_text()


def test_the_b_context_loss_fits_each_triplet_for_its_own_bs_prompt(bench_di, clip, tmp_path, monkeypatch):
    seen = []
    fit_many = bench_di.fit_many

    def spy(pairs, config, seeds, progress=False, prompts_b=None):
        seen.append((list(seeds), prompts_b))
        return fit_many(pairs, config, seeds=seeds, progress=progress, prompts_b=prompts_b)

    monkeypatch.setattr(bench_di, "fit_many", spy)
    triplets = tiny_triplets(2)
    methods = expand_methods(["difference-inversion:lambda_clip_b=6", "difference-inversion"])
    assert runner_for(bench_di, clip, tmp_path).run(methods, triplets) == 4
    (seeds, prompts_b), (_, plain) = seen
    config = methods[0].config(fast_config(steps=2))
    assert prompts_b == [bench_di.describe_b(t.b(), config, seed, False) for t, seed in zip(triplets, seeds)]
    assert all(prompts_b) and plain is None


def test_oracle_caption_needs_a_caption(bench_di, clip, tmp_path):
    triplet = tiny_triplets(1)[0]
    triplet.caption_b_prime = None
    with pytest.raises(DiffinvError, match="oracle-caption needs"):
        runner_for(bench_di, clip, tmp_path).run(expand_methods(["oracle-caption"]), [triplet])


# --- processes sharing one directory: claims -----------------------------------------------------------------
class FakeDI:
    """A cheap stand-in for `DifferenceInversion`: a "fit" returns empty tokens, B′ = B. It
    records the triplet indices of every fit (seed = index, as the runner seeds them)."""

    def __init__(self, barrier=None):
        self.fits, self.barrier, self.local = [], barrier, threading.local()

    def fit_many(self, pairs, config, seeds, progress=False, prompts_b=None):
        from types import SimpleNamespace

        self.fits.append(tuple(seeds))
        if self.barrier is not None and not getattr(self.local, "waited", False):
            self.local.waited = True
            self.barrier.wait(timeout=20)  # both runners are fitting at once: both have work
        return [SimpleNamespace(history={}, hard_text=None) for _ in pairs]

    def apply(self, tokens, b, seed=0, prompt=None, config=None, progress=False):
        return b


class SlowColourMean(ColourMean):
    """ColourMean that takes a little time, so that two runners interleave."""

    def __call__(self, images):
        import time

        time.sleep(0.003)
        return super().__call__(images)


def small_triplets(count: int) -> list[BenchTriplet]:
    image = shape_image((8, 8), "red")
    return [
        BenchTriplet(id=f"s{i:02d}", a=lambda: image, a_prime=lambda: image, b=lambda: image) for i in range(count)
    ]


def fake_runner(di, run_dir, batch=1, embedder=None):
    return BenchRunner(di, run_dir, fast_config(), [embedder or ColourMean()], batch_size=batch, progress=False)


def claims_left(run_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "claims").glob("*.json"))]


def test_two_runners_on_one_directory_split_the_work(tmp_path):
    """No sharding: both runners walk the same list, each claims a chunk (all `batch` triplets
    fitted together) before working on it, so every (method, triplet) is run exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    di = FakeDI(threading.Barrier(2))
    methods, triplets = expand_methods(["difference-inversion", "copy-b"]), small_triplets(12)
    runners = [fake_runner(di, tmp_path, batch=3, embedder=SlowColourMean()) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(lambda runner: runner.run(methods, triplets), runners))
    rows = read_results(tmp_path)
    pairs = sorted((r["method"], r["id"]) for r in rows)
    assert pairs == sorted((m.spec, t.id) for m in methods for t in triplets), "each pair exactly once"
    assert sum(counts) == 24 and min(counts) > 0, counts
    # a chunk is claimed whole: four fits of three consecutive triplets, none split or repeated
    assert sorted(di.fits) == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)]
    assert claims_left(tmp_path) == []
    assert fake_runner(FakeDI(), tmp_path).run(methods, triplets) == 0


SHARED_RUN_SCRIPT = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_bench import ColourMean, FakeDI, fake_runner, small_triplets
from diffinv.bench.methods import expand_methods

class Slow(ColourMean):
    def __call__(self, images):
        time.sleep(0.01)
        return super().__call__(images)

run_dir, me = Path(sys.argv[1]), sys.argv[2]
(run_dir / f"ready-{{me}}").touch()
while len(list(run_dir.glob("ready-*"))) < 2:  # start together
    time.sleep(0.01)
count = fake_runner(FakeDI(), run_dir, embedder=Slow()).run(expand_methods(["copy-b"]), small_triplets(40))
print(json.dumps({{"count": count}}))
"""


def test_two_processes_on_one_directory_split_the_work(tmp_path):
    """The same with two real processes (the lock is a file lock between processes)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "shared_run.py"
    script.write_text(SHARED_RUN_SCRIPT.format(tests=str(Path(__file__).parent)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, str(script), str(run_dir), me], env=env, stdout=subprocess.PIPE, text=True)
        for me in ("a", "b")
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    counts = [json.loads(out.splitlines()[-1])["count"] for out in outputs]
    rows = read_results(run_dir)
    assert sorted(r["id"] for r in rows) == [t.id for t in small_triplets(40)], "each triplet exactly once"
    assert sum(counts) == 40 and min(counts) > 0, counts
    assert claims_left(run_dir) == []


def test_stale_claims_are_taken_over_and_live_ones_respected(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is gone
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = socket.gethostname()
    claims = {
        "s00": {"host": host, "pid": dead.pid},  # killed run: stale
        "s01": {"host": host, "pid": alive.pid},  # another process at work: respected
        "s02": {"host": "elsewhere", "pid": dead.pid},  # another host: cannot be checked, respected
        "s03": {"host": host, "pid": os.getpid(), "token": "an earlier process with this pid"},  # stale
        "s04": None,  # half-written by a kill: stale
        "s05": {"host": host, "pid": alive.pid},  # claimed, but its row is written: done
    }
    try:
        for triplet_id, claim in claims.items():
            path = claim_path(tmp_path, "copy-b", triplet_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                '{"host": "' if claim is None else json.dumps({"method": "copy-b", "id": triplet_id, **claim})
            )
        check_run_record(tmp_path, {"dataset": {}, "methods": ["copy-b"]})
        append_result(tmp_path, {"method": "copy-b", "id": "s05"})
        assert not claim_path(tmp_path, "copy-b", "s05").exists(), "a written row drops the pair's claim"

        count = fake_runner(FakeDI(), tmp_path).run(expand_methods(["copy-b"]), small_triplets(8))
        assert count == 5  # s00, s03, s04 taken over; s06, s07 free; s01, s02 held by others; s05 done
        assert sorted(r["id"] for r in read_results(tmp_path)) == ["s00", "s03", "s04", "s05", "s06", "s07"]
        assert sorted(c["id"] for c in claims_left(tmp_path)) == ["s01", "s02"]
    finally:
        alive.kill()
        alive.wait()
    # the process holding s01 is gone now: the same command takes it over
    assert fake_runner(FakeDI(), tmp_path).run(expand_methods(["copy-b"]), small_triplets(8)) == 1


def test_a_failing_runner_releases_its_claims(tmp_path):
    class Failing(ColourMean):
        calls = 0

        def __call__(self, images):
            Failing.calls += 1
            if Failing.calls == 3:
                raise RuntimeError("out of memory")
            return super().__call__(images)

    methods, triplets = expand_methods(["difference-inversion"]), small_triplets(6)
    with pytest.raises(RuntimeError):
        fake_runner(FakeDI(), tmp_path, batch=3, embedder=Failing()).run(methods, triplets)
    assert len(read_results(tmp_path)) == 2 and claims_left(tmp_path) == []
    assert fake_runner(FakeDI(), tmp_path, batch=3).run(methods, triplets) == 4


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


@pytest.mark.slow
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


def test_the_report_never_imports_torch(tmp_path):
    """`diffinv bench report` reads results and writes summaries: no torch (seconds to import)."""
    import subprocess
    import sys

    rows = [
        {"method": m, "id": f"t{i}", "index": i, "family": "x", "clip_directional": 0.1 * i, "grid": "g.png"}
        for m in ("difference-inversion", "copy-b")
        for i in range(3)
    ]
    (tmp_path / RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "run.json").write_text(json.dumps({"dataset": {"name": "folder"}, "model": "m", "methods": []}))
    code = (
        "import sys\n"
        "from diffinv.bench.report import write_reports\n"
        "from diffinv.bench.command import ReportOptions, report_command\n"
        f"write_reports({str(tmp_path)!r})\n"
        f"report_command(ReportOptions(run_dir={str(tmp_path)!r}, max_examples=2, baseline='copy-b'))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout
    assert "| copy-b | 3 |" in (tmp_path / "summary.md").read_text()
    assert "Paired differences against copy-b" in (tmp_path / "summary.md").read_text()


# --- bench/command.py: what cli/ calls ------------------------------------------------------------------------
def bench_options(*argv):
    """The options `diffinv bench ARGV` hands its handler: the command line parsed, then turned into
    `RunOptions`, `ReportOptions` or `JudgeOptions` by `cli.bench`'s converters."""
    from diffinv.cli import build_parser
    from diffinv.cli.bench import judge_options, report_options, run_options

    args = build_parser().parse_args(["bench", *map(str, argv)])
    return {"run": run_options, "report": report_options, "judge": judge_options}[args.bench_command](args)


def no_loading(options):
    raise AssertionError("the model was loaded before every check was made")


def write_card(directory: Path, **values) -> Path:
    from diffinv.model_card import write_descriptor

    directory.mkdir(parents=True, exist_ok=True)
    write_descriptor(directory, **values)
    return directory


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--dataset", "folder"], "needs --data"),
        (["--data", "x"], "--data is for the folder"),
        (["--families", "texture"], "unknown shapes families"),
        (["--dataset", "instructpix2pix", "--data", "/nonexistent/ip2p"], "no such directory"),
        (["--method", "nope"], "unknown method"),
        (["--set", "bogus=1"], "bad config change"),
        (["--set", "alpha=2"], "alpha"),
        (["--batch", "0"], "--batch must be at least 1, got 0"),
        (["--embedder", "dinov2"], "bad --embedder"),
        (["--embedder", "dinov2=/nonexistent/dinov2"], "/nonexistent/dinov2: no such DINOv2 model directory"),
    ],
)
def test_run_command_checks_everything_before_loading(tmp_path, argv, fragment):
    from diffinv.bench.command import run_command

    with pytest.raises(DiffinvError, match=fragment.replace("-", r"\-").replace("/", r"/")):
        run_command(bench_options("run", "--out", tmp_path / "run", "--n", "1", "--quiet", *argv), no_loading)


def test_run_command_refuses_a_file_for_out_and_a_different_run(tmp_path):
    from diffinv.bench.command import run_command

    (tmp_path / "file").write_text("x")
    with pytest.raises(DiffinvError, match="exists and is not a directory"):
        run_command(bench_options("run", "--out", tmp_path / "file", "--n", "1"), no_loading)
    check_run_record(tmp_path / "run", {"dataset": {"name": "other"}, "methods": []})
    with pytest.raises(DiffinvError, match="different run"):
        run_command(bench_options("run", "--out", tmp_path / "run", "--n", "1"), no_loading)


def test_bench_defaults_come_from_the_model_card(tmp_path):
    from diffinv.bench.command import batch_size, build_methods, classifier_path, embedder_specs
    from diffinv.model_card import model_card

    shapes = model_card("shapes")
    options = bench_options("run", "--out", tmp_path, "--set", "steps=7")
    assert embedder_specs(options, shapes) == [("clip", "")] and batch_size(options, shapes) == 8
    methods, base, _, _ = build_methods(options, shapes)
    assert base == shapes.default_config().replace(steps=7)
    assert [m.spec for m in methods] == ["difference-inversion", "copy-b", "oracle-caption"]
    assert classifier_path(shapes) == shapes.path("classifier")

    (tmp_path / "plain").mkdir()
    plain = model_card(str(tmp_path / "plain"))  # no descriptor: the paper's defaults
    assert embedder_specs(options, model_card("someone/some-model")) == [
        ("clip", ""),
        ("dinov2", "facebook/dinov2-base"),
    ]
    assert embedder_specs(options, plain) == [("clip", ""), ("dinov2", "facebook/dinov2-base")]
    assert batch_size(options, plain) == 1 and classifier_path(plain) is None
    assert build_methods(options, plain)[1] == plain.default_config().replace(steps=7)
    folder = bench_options("run", "--out", tmp_path, "--dataset", "folder", "--batch", "3", "--embedder", "clip=x")
    assert [m.spec for m in build_methods(folder, plain)[0]] == ["difference-inversion", "copy-b"]
    assert batch_size(folder, shapes) == 3 and embedder_specs(folder, shapes) == [("clip", "x")]

    own = model_card(write_card(tmp_path / "own", bench={"batch": 4, "embedders": ["clip=y"], "classifier": "cls"}))
    assert batch_size(options, own) == 4 and embedder_specs(options, own) == [("clip", "y")]
    with pytest.raises(DiffinvError, match="classifier"):
        classifier_path(own)  # named but missing: reported before the model loads


def test_run_command_on_the_shapes_world(tmp_path, capsys):
    """The whole command with the bundled world: its card gives the base config, the classifier
    (exact scores) and the batch; a second call resumes and runs nothing."""
    from diffinv.bench.command import report_command, run_command
    from diffinv.model_card import model_card
    from diffinv.pipeline import DifferenceInversion

    loads = []

    def load(options):
        loads.append(options.device)
        return DifferenceInversion.from_pretrained(options.model, device=options.device)

    out = tmp_path / "run"
    argv = ["run", "--out", out, "--n", "3", "--method", "difference-inversion", "--method", "copy-b"]
    argv += ["--set", "steps=3,sampling_steps=4", "--quiet"]
    run_command(bench_options(*argv), load)
    assert "ran 6 (method, triplet) pairs; wrote" in capsys.readouterr().out and loads == ["cpu"]
    rows = read_results(out)
    assert {"edit", "preserved", "correct", "clip_directional"} <= set(rows[0])
    record = json.loads((out / "run.json").read_text())
    assert record["base_config"] == json.loads(
        model_card("shapes").default_config().replace(steps=3, sampling_steps=4).to_json()
    )
    run_command(bench_options(*argv), load)
    assert "ran 0 (method, triplet) pairs" in capsys.readouterr().out
    report_command(bench_options("report", out, "--baseline", "copy-b"))
    assert capsys.readouterr().out.startswith(f"wrote {out / 'summary.md'}")
    assert "Paired differences against copy-b" in (out / "summary.md").read_text()
    with pytest.raises(DiffinvError, match="no results.jsonl"):
        report_command(bench_options("report", tmp_path))


def test_a_benchmark_runs_from_python_without_the_command_line(tmp_path, capsys):
    """docs/bench.md's example: options and a loader, no argparse (a tiny run on the bundled world)."""
    from diffinv.bench.command import RunOptions, run_command
    from diffinv.model_options import ModelOptions
    from diffinv.pipeline import DifferenceInversion

    given = []

    def load_model(options: ModelOptions) -> DifferenceInversion:
        given.append(options)
        return DifferenceInversion.from_pretrained(options.model, device=options.device)

    out = tmp_path / "x"
    options = RunOptions(out=out, n=2, methods=["difference-inversion"], base_changes="steps=3,sampling_steps=4")
    run_command(options, load_model=load_model)
    assert "ran 2 (method, triplet) pairs; wrote" in capsys.readouterr().out
    assert given == [ModelOptions(model="shapes", device="cpu")]
    assert [row["method"] for row in read_results(out)] == ["difference-inversion"] * 2
    assert json.loads((out / "run.json").read_text())["base_config"]["steps"] == 3


def test_the_options_hold_every_flag_with_the_command_lines_defaults():
    """Each action's options: one field per flag of the action (none for the command line's own),
    each defaulting as the flag does; the loader's options from any model-loading command's flags."""
    import dataclasses

    from diffinv.bench.command import ReportOptions, RunOptions
    from diffinv.bench.judge import JudgeOptions
    from diffinv.cli import build_parser
    from diffinv.cli.load import model_options
    from diffinv.model_options import ModelOptions

    judge = ["judge", "x", "--against", "copy-b", "--judge", "truth"]
    for argv, options in [
        (["run", "--out", "x"], RunOptions(out="x")),
        (["report", "x"], ReportOptions(run_dir="x")),
        (judge, JudgeOptions(run_dir="x", against="copy-b", judge="truth")),
    ]:
        assert bench_options(*argv) == options
        flags = set(vars(build_parser().parse_args(["bench", *argv])))
        assert flags - {"command", "bench_command", "debug", "parser_of_command"} == {
            field.name for field in dataclasses.fields(options)
        }
    given = bench_options("run", "--out", "x", "--method", "copy-b", "--set", "steps=3", "--threads", "2")
    assert given == RunOptions(out="x", methods=["copy-b"], base_changes="steps=3", threads=2)
    assert given.model_options("cpu") == ModelOptions(model="shapes", device="cpu", threads=2)
    analogy = build_parser().parse_args(["analogy", "a.png", "a2.png", "b.png", "-o", "b2.png", "--quiet"])
    assert model_options(analogy) == ModelOptions(model="shapes-editor", quiet=True)


def test_run_command_keeps_a_blip2_captioner_loaded_for_the_run(clip, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from diffinv.bench.command import run_command
    from diffinv.captioners import Blip2Captioner

    captioner = Blip2Captioner()
    seen = []
    original = BenchRunner.run

    def run(self, *args, **kwargs):
        seen.append(self.di.captioner.keep_loaded)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BenchRunner, "run", run)
    fake = SimpleNamespace(clip=clip, captioner=captioner)
    run_command(
        bench_options("run", "--out", tmp_path, "--n", "2", "--method", "copy-b", "--quiet"), lambda options: fake
    )
    assert seen == [True] and captioner.keep_loaded is False  # kept for the run, as it was afterwards
    assert len(read_results(tmp_path)) == 2
