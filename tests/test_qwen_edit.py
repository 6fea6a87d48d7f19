"""Qwen-Image-Edit-2509 as a baseline (`baselines.qwen_edit`), offline on a tiny random
`QwenImageEditPlusPipeline` of the real classes (`diffinv.testing_qwen`): what the pipeline is given
(A, A′, B in that order, the instruction, the published settings), B′'s size and crop, seeds, the
checks before loading, the default checkpoint, and a bench run on shapes triplets."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPlusPipeline
from PIL import Image

from conftest import shape_image
from diffinv.baselines import qwen_edit
from diffinv.baselines.qwen_edit import DEFAULT_MODEL, INSTRUCTION, QwenEdit, QwenEditConfig
from diffinv.errors import DiffinvError
from diffinv.testing_qwen import tiny_qwen_edit_pipeline


@pytest.fixture(scope="module")
def pipe() -> QwenImageEditPlusPipeline:
    return tiny_qwen_edit_pipeline()


@pytest.fixture(scope="module")
def triplet() -> dict[str, Image.Image]:
    """A and A′ differ in colour; B is a 60×30 landscape, so B′'s size is B's, not A's."""
    return {
        "a": shape_image((32, 32), "red", seed=1),
        "a_prime": shape_image((32, 32), "blue", seed=2),
        "b": shape_image((60, 30), "green", "square", seed=3),
    }


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The keyword arguments of each `QwenImageEditPlusPipeline` call; the pipeline still runs."""
    recorded, original = [], QwenImageEditPlusPipeline.__call__

    def spy(self, **kwargs):
        recorded.append(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(QwenImageEditPlusPipeline, "__call__", spy)
    return recorded


# --- the config ------------------------------------------------------------------------------------------
def test_the_published_settings_and_their_cost():
    config = QwenEditConfig()
    assert (config.steps, config.true_cfg_scale, config.negative_prompt) == (40, 4.0, " ")
    assert config.instruction == INSTRUCTION == "Apply the change from Picture 1 to Picture 2 to Picture 3."
    assert config.resolution is None
    cost = config.cost()
    assert (cost.sample_calls, cost.sample_batch, cost.fit_calls) == (80, 1, 0)  # two transformer calls per step
    assert QwenEditConfig(true_cfg_scale=1.0, steps=8).cost().sample_calls == 8


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"steps": 0}, "steps"),
        ({"true_cfg_scale": -1.0}, "true_cfg_scale"),
        ({"negative_prompt": None}, "negative_prompt"),
        ({"instruction": "  "}, "instruction"),
        ({"resolution": 0}, "resolution"),
        ({"resolution": 100_000}, "resolution"),
    ],
)
def test_bad_settings_are_refused_in_one_line(changes, fragment):
    with pytest.raises(DiffinvError, match=fragment) as error:
        QwenEditConfig(**changes)
    assert "\n" not in str(error.value)


# --- the analogy --------------------------------------------------------------------------------------------
def test_the_pipeline_is_shown_a_a_prime_b_in_order_with_the_instruction(pipe, triplet, calls):
    config = QwenEditConfig(steps=2, resolution=32)
    b_prime = QwenEdit(pipe, config).analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=0, progress=False)
    (call,) = calls
    shown = call["image"]
    assert len(shown) == 3
    for image, name in zip(shown, ("a", "a_prime", "b")):
        assert np.array_equal(pixels(image), pixels(triplet[name])), name
    assert call["prompt"] == INSTRUCTION and call["negative_prompt"] == " "
    assert (call["true_cfg_scale"], call["num_inference_steps"]) == (4.0, 2)
    # drawn at B's 2:1 aspect ratio, about 32² in area, in multiples of 8 (the tiny VAE's 4 × 2 × 2 patches)
    assert (call["width"], call["height"]) == (48, 24)
    assert isinstance(call["generator"], torch.Generator) and call["generator"].device.type == "cpu"
    assert b_prime.mode == "RGB" and b_prime.size == triplet["b"].size


def test_the_same_seed_draws_the_same_b_prime_and_another_seed_another(pipe, triplet, image_files):
    qwen = QwenEdit(pipe, QwenEditConfig(steps=2, resolution=32))
    first = qwen.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=3, progress=False)
    again = qwen.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=3, progress=False)
    other = qwen.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=4, progress=False)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))
    # paths work as images do: B′ has the size of the B read from its file
    from_files = qwen.analogy(image_files["a"], image_files["a_prime"], image_files["b"], seed=3, progress=False)
    assert from_files.size == Image.open(image_files["b"]).size


def test_without_a_resolution_the_pipeline_chooses_the_size_and_b_prime_is_cropped_to_b(pipe, triplet, monkeypatch):
    """The published size is left to the pipeline (None); what it draws is centre-cropped to B's
    aspect ratio, then resized to B's size. Here it 'draws' 100×40 with 10-pixel red bands at its
    sides, which the crop to 2:1 (80×40) removes."""
    drawn = Image.new("RGB", (100, 40), "blue")
    drawn.paste((255, 0, 0), (0, 0, 10, 40))
    drawn.paste((255, 0, 0), (90, 0, 100, 40))
    seen = {}

    def fake_call(self, **kwargs):
        seen.update(kwargs)
        return type("Output", (), {"images": [drawn]})()

    monkeypatch.setattr(QwenImageEditPlusPipeline, "__call__", fake_call)
    b_prime = QwenEdit(pipe).analogy(triplet["a"], triplet["a_prime"], triplet["b"], progress=False)
    assert seen["height"] is None and seen["width"] is None and seen["num_inference_steps"] == 40
    assert b_prime.size == (60, 30)
    red = pixels(b_prime)[..., 0]
    assert red.max() < 40  # no trace of the red side bands


def test_without_guidance_no_negative_prompt_is_passed(pipe, triplet, calls):
    QwenEdit(pipe, QwenEditConfig(steps=1, true_cfg_scale=1.0, resolution=32)).analogy(
        triplet["a"], triplet["a_prime"], triplet["b"], progress=False
    )
    assert calls[0]["negative_prompt"] is None and calls[0]["true_cfg_scale"] == 1.0


def test_bad_inputs_are_refused_before_the_pipeline_runs(pipe, triplet, calls):
    qwen = QwenEdit(pipe, QwenEditConfig(steps=1, resolution=32))
    with pytest.raises(DiffinvError, match="seed"):
        qwen.analogy(triplet["a"], triplet["a_prime"], triplet["b"], seed=-1)
    with pytest.raises(DiffinvError, match="too small"):
        qwen.analogy(triplet["a"], Image.new("RGB", (8, 8)), triplet["b"])
    assert calls == []
    with pytest.raises(DiffinvError, match="QwenImageEditPlusPipeline"):
        QwenEdit(object())


# --- loading -------------------------------------------------------------------------------------------------
@pytest.fixture
def loads(monkeypatch, pipe) -> list[tuple]:
    """What `QwenImageEditPlusPipeline.from_pretrained` is called with (the tiny pipeline comes back);
    the model check passes and torchvision counts as installed."""
    recorded = []

    def fake_from_pretrained(model, **kwargs):
        recorded.append((model, kwargs))
        return pipe

    monkeypatch.setattr(QwenImageEditPlusPipeline, "from_pretrained", fake_from_pretrained)
    monkeypatch.setattr(qwen_edit, "check_qwen_edit_model", lambda model, offline: recorded.append(("check", model)))
    monkeypatch.setattr(qwen_edit, "check_torchvision", lambda: None)
    return recorded


def test_the_default_checkpoint_loads_in_the_projects_dtype(loads, tmp_path):
    qwen = QwenEdit.from_pretrained(device="cpu", offline=True, config=QwenEditConfig(steps=3))
    assert loads[0] == ("check", DEFAULT_MODEL) == ("check", "Qwen/Qwen-Image-Edit-2509")
    model, kwargs = loads[1]
    assert model == DEFAULT_MODEL and kwargs["torch_dtype"] == torch.float32 and kwargs["local_files_only"]
    assert qwen.config.steps == 3
    other = str(tmp_path / "other-qwen-edit")  # a model of the user's (loading is stubbed: nothing is read)
    QwenEdit.from_pretrained(other, device="cpu", dtype="bfloat16", offline=False)
    model, kwargs = loads[-1]
    assert model == other and kwargs["torch_dtype"] == torch.bfloat16
    assert not kwargs["local_files_only"]


def test_a_model_of_another_kind_is_refused_before_its_weights_load(tmp_path, monkeypatch):
    monkeypatch.setattr(qwen_edit, "check_torchvision", lambda: None)
    model = tmp_path / "sd"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(DiffinvError, match="needs a Qwen-Image-Edit-Plus model .* is a StableDiffusionPipeline"):
        QwenEdit.from_pretrained(str(model), device="cpu", offline=True)
    with pytest.raises(DiffinvError, match="no such model directory|could not load"):
        QwenEdit.from_pretrained(str(tmp_path / "missing" / "dir"), device="cpu", offline=True)


def test_without_torchvision_loading_stops_with_one_line(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "torchvision" else real_find_spec(name, *args)
    )
    with pytest.raises(DiffinvError, match="needs torchvision"):
        QwenEdit.from_pretrained(device="cpu", offline=True)


# --- the bench ---------------------------------------------------------------------------------------------
def test_qwen_edit_is_registered_and_its_settings_come_from_the_spec():
    from diffinv.bench.build import baseline_config, baseline_model, parse_baseline_models
    from diffinv.bench.methods import parse_method
    from diffinv.method import METHODS

    entry = METHODS["qwen-edit"]
    assert entry.load() is QwenEdit and entry.kind == "baseline" and entry.model == "own"
    assert QwenEdit.needs_text is None and not QwenEdit.uses_text
    spec = parse_method("qwen-edit:steps=2,resolution=32")
    assert baseline_config(spec.base, {}, spec.changes) == QwenEditConfig(steps=2, resolution=32)
    assert baseline_model("qwen-edit", None, {}) is None  # its own published checkpoint
    assert baseline_model("qwen-edit", None, parse_baseline_models(["qwen-edit=models/qwen"])) == "models/qwen"


def test_qwen_edit_runs_in_the_bench_on_shapes_triplets(tmp_path, capsys, loads):
    """`diffinv bench run --method qwen-edit:…` on two shapes triplets: loaded through the registry
    on the --baseline-model checkpoint, each B′ of its B's size, its settings recorded in run.json."""
    from diffinv.bench.command import RunOptions, build_dataset
    from diffinv.bench.report import read_results
    from diffinv.cli import main

    out, method = tmp_path / "run", "qwen-edit:steps=2,resolution=32"
    argv = ["bench", "run", "--out", out, "--n", "1", "--method", method, "--quiet", "--device", "cpu"]
    model = str(tmp_path / "qwen-edit-model")  # loading is stubbed (`loads`): nothing is read
    argv += ["--baseline-model", f"qwen-edit={model}", "--embedder", "clip"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    # checked before the bench's model loads, checked again and loaded when first needed
    assert [call[0] for call in loads] == ["check", "check", model]
    rows = read_results(out)
    assert [row["method"] for row in rows] == [method]
    triplets = {t.id: t for t in build_dataset(RunOptions(out=out, n=1))[0]}
    for row in rows:
        assert not row.get("uses_text")
        assert Image.open(out / row["b_prime"]).size == triplets[row["id"]].b().size
    configs = json.loads((out / "run.json").read_text())["configs"]
    assert configs[method]["steps"] == 2 and configs[method]["instruction"] == INSTRUCTION


def test_a_qwen_edit_model_of_another_kind_stops_the_bench_before_any_model_loads(tmp_path, capsys, monkeypatch):
    from diffinv.cli import main

    monkeypatch.setattr(qwen_edit, "check_torchvision", lambda: None)
    monkeypatch.setattr(
        "diffinv.cli.bench.load_model", lambda *args, **kwargs: pytest.fail("the bench's model was loaded")
    )
    model = tmp_path / "sd"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    out = tmp_path / "run"
    argv = ["bench", "run", "--out", out, "--n", "1", "--method", "qwen-edit", "--quiet", "--offline"]
    argv += ["--baseline-model", f"qwen-edit={model}"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "needs a Qwen-Image-Edit-Plus model" in err, err
    assert not (out / "results.jsonl").exists()
