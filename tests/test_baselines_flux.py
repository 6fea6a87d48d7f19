"""FLUX.1 Kontext and VisualCloze as baselines, offline on tiny random components of the real
diffusers / transformers classes: what each pipeline is given (the grid holds A, A′ and B where
they belong), where B′ is cut from, B′'s size, seeds, settings, and loading the published
checkpoint in its model card's dtype or refusing another kind of model in one line."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffinv.baselines import Kontext, KontextConfig, VisualCloze, VisualClozeConfig, own_model
from diffinv.baselines.kontext import INSTRUCTION, analogy_grid, grid_size
from diffinv.baselines.visualcloze import TASK_PROMPT, drawn_size
from diffinv.bench.report import read_results
from diffinv.cli import main
from diffinv.errors import DiffinvError
from diffinv.testing import tiny_kontext_pipeline, tiny_pipeline, tiny_visualcloze_pipeline

EXAMPLES = Path(__file__).parent.parent / "examples"
COLOURS = {"a": (200, 30, 30), "a_prime": (30, 200, 30), "b": (30, 30, 200)}


@pytest.fixture(scope="module")
def triplet() -> dict[str, Image.Image]:
    """A and A′ of one size, B of another aspect ratio, each a plain colour with a white square."""
    images = {}
    for name, size in (("a", (48, 40)), ("a_prime", (48, 40)), ("b", (50, 30))):
        image = Image.new("RGB", size, COLOURS[name])
        image.paste((255, 255, 255), (4, 4, 12, 12))
        images[name] = image
    return images


@pytest.fixture(scope="module")
def kontext_pipe():
    return tiny_kontext_pipeline()


@pytest.fixture(scope="module")
def visualcloze_pipe():
    return tiny_visualcloze_pipeline(resolution=32)


class Spy:
    """Stands in for a pipeline: records the arguments of each call and answers `answer(kwargs)`
    (an image), or passes the call on to `pipe`; other attributes are `pipe`'s."""

    def __init__(self, pipe, answer=None):
        self.pipe, self.answer, self.calls, self.returned = pipe, answer, [], []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        output = self.pipe(**kwargs) if self.answer is None else _Output(self.answer(kwargs))
        self.returned.append(output.images[0])
        return output

    def __getattr__(self, name):
        return getattr(self.pipe, name)


class _Output:
    def __init__(self, images):
        self.images = images


def mean_colour(image: Image.Image, box) -> np.ndarray:
    return np.asarray(image.crop(box), dtype=np.float32).reshape(-1, 3).mean(axis=0)


# --- FLUX.1 Kontext -------------------------------------------------------------------------------------
def test_kontext_grid_holds_a_a_prime_and_b_in_their_cells_and_leaves_the_fourth_empty(triplet):
    size = grid_size(triplet["b"].size, resolution=64)
    grid = analogy_grid(triplet["a"], triplet["a_prime"], triplet["b"], size)
    width, height = grid.size
    assert width % 16 == 0 and height % 16 == 0 and width > height  # B's landscape aspect ratio kept
    assert grid.boxes["b_prime"] == (width // 2, height // 2, width, height)
    for name, colour in COLOURS.items():
        left, top, right, bottom = grid.boxes[name]
        inner = (left + (right - left) // 2, top + (bottom - top) // 2, right - 1, bottom - 1)  # off the square
        assert np.abs(mean_colour(grid.image, inner) - colour).max() < 3, name
    assert (mean_colour(grid.image, grid.boxes["b_prime"]) == 255).all()


def test_kontext_grid_takes_its_preferred_resolution_nearest_bs_aspect_ratio():
    assert grid_size((512, 512), None) == (1024, 1024)
    assert grid_size((1920, 1080), None) == (1392, 752)  # 16:9 → the nearest preferred ratio, 1.85
    assert grid_size((300, 1000), None) == (672, 1568)  # taller than every preferred ratio: the tallest


def test_kontext_gives_the_pipeline_the_grid_and_cuts_b_prime_from_its_empty_cell(kontext_pipe, triplet):
    kontext = Kontext(kontext_pipe)
    answer_colour = (250, 200, 0)

    def draw(kwargs):  # the grid back, its empty cell filled with one colour
        drawn = kwargs["image"].copy()
        drawn.paste(answer_colour, kontext.grid(triplet["a"], triplet["a_prime"], triplet["b"]).boxes["b_prime"])
        return [drawn]

    kontext.pipe = spy = Spy(kontext_pipe, draw)
    b_prime = kontext.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=3, progress=False)
    call = spy.calls[0]
    grid = kontext.grid(triplet["a"], triplet["a_prime"], triplet["b"])
    assert call["image"].tobytes() == grid.image.tobytes()
    assert (call["width"], call["height"]) == grid.size == grid_size(triplet["b"].size, None)
    assert call["prompt"] == INSTRUCTION and call["_auto_resize"] is True  # published: the pipeline's resize
    assert (call["num_inference_steps"], call["guidance_scale"]) == (28, 2.5)
    assert call["generator"].initial_seed() == 3
    assert b_prime.size == triplet["b"].size
    assert np.abs(mean_colour(b_prime, (0, 0, *b_prime.size)) - answer_colour).max() < 1


def test_kontext_runs_end_to_end_at_b_size_and_a_seed_fixes_b_prime(kontext_pipe, triplet):
    kontext = Kontext(kontext_pipe, KontextConfig(steps=2, resolution=64))
    kontext.pipe = spy = Spy(kontext_pipe)
    first = kontext.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=0, progress=False)
    again = kontext.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=0, progress=False)
    other = kontext.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=1, progress=False)
    assert first.size == triplet["b"].size and first.mode == "RGB"
    assert first.tobytes() == again.tobytes() and first.tobytes() != other.tobytes()
    assert spy.returned[0].size == spy.calls[0]["image"].size  # the output lines up with the grid
    assert spy.calls[0]["_auto_resize"] is False  # a resolution of our own: the pipeline must not resize


def test_kontext_settings_are_checked_and_cost_one_call_per_step():
    assert KontextConfig().cost().unet_calls == 28 and KontextConfig().cost().latent_passes == 28
    for bad in ({"steps": 0}, {"guidance_scale": -1.0}, {"instruction": "  "}, {"resolution": 0}):
        with pytest.raises(DiffinvError):
            KontextConfig(**bad)


# --- VisualCloze ---------------------------------------------------------------------------------------
def test_visualcloze_gives_the_pipeline_the_in_context_grid_and_its_published_settings(visualcloze_pipe, triplet):
    visualcloze = VisualCloze(visualcloze_pipe)
    visualcloze.pipe = spy = Spy(visualcloze_pipe, lambda kwargs: [[Image.new("RGB", (96, 48), (250, 200, 0))]])
    b_prime = visualcloze.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=5, progress=False)
    call = spy.calls[0]
    (a, a_prime), (b, target) = call["image"]
    assert target is None
    for given, name in ((a, "a"), (a_prime, "a_prime"), (b, "b")):
        assert given.tobytes() == triplet[name].tobytes(), name
    assert call["task_prompt"] == TASK_PROMPT and call["content_prompt"] is None  # the edit shown, not told
    assert (call["num_inference_steps"], call["guidance_scale"], call["upsampling_strength"]) == (30, 30.0, 0.4)
    drawn = drawn_size(triplet["b"].size, 32, 4)
    assert (call["upsampling_width"], call["upsampling_height"]) == (3 * drawn[0], 3 * drawn[1])
    assert call["generator"].initial_seed() == 5
    assert b_prime.size == triplet["b"].size


def test_visualcloze_runs_end_to_end_at_b_size_and_a_seed_fixes_b_prime(visualcloze_pipe, triplet):
    visualcloze = VisualCloze(visualcloze_pipe, VisualClozeConfig(steps=2))
    first = visualcloze.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=0, progress=False)
    again = visualcloze.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=0, progress=False)
    other = visualcloze.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=1, progress=False)
    assert first.size == triplet["b"].size and first.mode == "RGB"
    assert first.tobytes() == again.tobytes() and first.tobytes() != other.tobytes()


def test_visualcloze_draws_b_prime_at_the_size_it_computes_and_upsamples_it_by_three(visualcloze_pipe, triplet):
    drawn = drawn_size(triplet["b"].size, 32, 4)  # the tiny VAE's factor 2 × FLUX's 2 × 2 patches
    upsampled = tuple(3 * side for side in drawn)
    for strength, expected in ((0.0, drawn), (0.5, upsampled)):
        visualcloze = VisualCloze(visualcloze_pipe, VisualClozeConfig(steps=2, upsampling_strength=strength))
        assert visualcloze.upsampled_size(triplet["b"].size) == upsampled
        visualcloze.pipe = spy = Spy(visualcloze_pipe)
        visualcloze.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=0, progress=False)
        assert spy.returned[0][0].size == expected, strength


def test_visualcloze_resolution_rebuilds_the_pipeline_and_settings_are_checked(visualcloze_pipe):
    assert VisualCloze(visualcloze_pipe).pipe is visualcloze_pipe
    rebuilt = VisualCloze(visualcloze_pipe, VisualClozeConfig(resolution=48)).pipe
    assert rebuilt.config.resolution == 48 and rebuilt.transformer is visualcloze_pipe.transformer
    assert visualcloze_pipe.config.resolution == 32  # the caller's pipeline is left as it was
    assert VisualClozeConfig().cost().unet_calls == 30 + 12  # 30 steps, then 40 % of them upsampling
    assert VisualClozeConfig(upsampling_strength=0).cost().unet_calls == 30
    for bad in ({"upsampling_strength": 1.5}, {"upsampling_scale": 0}, {"task_prompt": ""}, {"steps": 2.5}):
        with pytest.raises(DiffinvError):
            VisualClozeConfig(**bad)


# --- loading ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method_class", "checkpoint", "build"),
    [
        (Kontext, "black-forest-labs/FLUX.1-Kontext-dev", tiny_kontext_pipeline),
        (VisualCloze, "VisualCloze/VisualClozePipeline-384", tiny_visualcloze_pipeline),
    ],
)
def test_the_published_checkpoint_loads_in_its_model_cards_dtype(monkeypatch, method_class, checkpoint, build):
    asked = []
    monkeypatch.setattr(own_model, "pipeline_class_name", lambda model, offline: method_class.pipeline_class.__name__)

    def from_pretrained(model, **kwargs):
        asked.append((model, kwargs))
        return build()

    monkeypatch.setattr(method_class.pipeline_class, "from_pretrained", from_pretrained)
    method = method_class.from_pretrained(device="cpu", offline=True)
    assert isinstance(method, method_class)
    ((model, kwargs),) = asked
    assert model == checkpoint and kwargs["torch_dtype"] == torch.bfloat16 and kwargs["local_files_only"]
    method_class.from_pretrained(device="cpu", dtype="float32", offline=True)
    assert asked[1][1]["torch_dtype"] == torch.float32  # a dtype given wins


def test_another_kind_of_model_is_refused_in_one_line(tmp_path, kontext_pipe):
    sd_dir = tmp_path / "sd"
    tiny_pipeline().save_pretrained(sd_dir)
    refusal = r"needs a FLUX.1 Kontext model \(a FluxKontextPipeline\); .* is a StableDiffusionPipeline$"
    with pytest.raises(DiffinvError, match=refusal):
        Kontext.from_pretrained(str(sd_dir), device="cpu", offline=True)
    with pytest.raises(DiffinvError, match="needs a VisualCloze model"):
        VisualCloze(kontext_pipe)
    with pytest.raises(DiffinvError, match="no such model directory"):  # one line, before any weight loads
        Kontext.from_pretrained(str(tmp_path / "missing"), device="cpu", offline=True)


# --- in the bench ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, str]:
    """The tiny Kontext and VisualCloze pipelines saved as users save theirs."""
    root = tmp_path_factory.mktemp("flux")
    tiny_kontext_pipeline().save_pretrained(root / "kontext")
    tiny_visualcloze_pipeline(resolution=32).save_pretrained(root / "visualcloze")
    return {"kontext": str(root / "kontext"), "visualcloze": str(root / "visualcloze")}


def bench_argv(out, tiny_model_dir, *extra) -> list[str]:
    model_dir, clip_dir = tiny_model_dir
    argv = ["bench", "run", "--out", out, "--dataset", "folder", "--data", EXAMPLES, "--n", "1"]
    argv += ["--embedder", "clip", "--model", model_dir, "--clip-model", clip_dir, "--device", "cpu", "--quiet"]
    return [str(a) for a in (*argv, *extra)]


def test_kontext_and_visualcloze_run_in_the_bench_on_the_model_baseline_model_names(
    capsys, tmp_path, tiny_model_dir, saved_models
):
    out = tmp_path / "run"
    argv = bench_argv(
        out,
        tiny_model_dir,
        *("--method", "kontext:steps=2,resolution=64", "--method", "visualcloze:steps=2"),
        *("--baseline-model", f"kontext={saved_models['kontext']}"),
        *("--baseline-model", f"visualcloze={saved_models['visualcloze']}"),
    )
    assert main(argv) == 0, capsys.readouterr().err
    rows = read_results(out)
    assert sorted({row["method"] for row in rows}) == ["kontext:steps=2,resolution=64", "visualcloze:steps=2"]
    assert len(rows) == 2
    for row in rows:
        assert not row.get("uses_text")  # shown the edit, never told it
        assert Image.open(out / row["b_prime"]).size == Image.open(EXAMPLES / row["id"] / "b.png").size


def test_a_model_of_another_kind_given_to_kontext_stops_the_bench_in_one_line_before_any_model_loads(
    capsys, tmp_path, tiny_model_dir, saved_models
):
    from diffinv.bench.command import check_methods
    from diffinv.bench.methods import parse_method
    from diffinv.model_card import model_card

    card, sd_dir = model_card(tiny_model_dir[0]), tiny_model_dir[0]
    methods = [parse_method("difference-inversion"), parse_method("kontext"), parse_method("visualcloze")]
    check_methods(methods, card, [], {"kontext": saved_models["kontext"]}, offline=True)
    check_methods(methods, card, [], {}, offline=True)  # the published models: checked when they load
    with pytest.raises(DiffinvError, match="VisualCloze needs a VisualCloze model .* is a FluxKontextPipeline"):
        check_methods(methods, card, [], {"visualcloze": saved_models["kontext"]}, offline=True)
    argv = bench_argv(tmp_path / "run", tiny_model_dir, "--method", "difference-inversion", "--method", "kontext")
    assert main([*argv, "--baseline-model", f"kontext={sd_dir}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "needs a FLUX.1 Kontext model" in err and "StableDiffusionPipeline" in err
    assert not (tmp_path / "run" / "results.jsonl").exists()
