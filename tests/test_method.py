"""The one call shape (`method.Method`) and the one registry (`method.METHODS`): each method named
once, every registered method answering `analogy` on tiny models, batching as a declared
capability, a method of one's own run by the bench, and run.json recording each method's config
(an old run.json without configs resumed, a changed config refused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config, shape_image
from diffinv.bench.datasets import BenchTriplet
from diffinv.bench.methods import METHOD_SETS, VARIANTS, expand_methods, parse_method
from diffinv.bench.report import read_results
from diffinv.bench.results import check_run_record
from diffinv.errors import DiffinvError
from diffinv.method import METHODS, TEXTS, CopyB, Method, Registered, is_batched, register

REPO = Path(__file__).resolve().parent.parent
NAMES = [
    "difference-inversion",
    "on-editor",
    "copy-b",
    "oracle-caption",
    "sdedit",
    "instructpix2pix",
    "visii",
    "analogist",
    "dia",
    "kontext",
    "visualcloze",
    "qwen-edit",
    "oracle-instruction",
]
WORDS = {"b_prime": "a photo of a blue square", "instruction": "make it blue"}  # per kind of text
# Budgets a CPU test can afford, per registered method with a config of its own.
FAST = {
    "sdedit": dict(steps=4),
    "instructpix2pix": dict(steps=2),
    "oracle-instruction": dict(steps=2),
    "visii": dict(steps=2, pez_steps=2, pez_prompt_len=4, sample_steps=2),
    "analogist": dict(steps=4, sac_layers=(0, 4), cam_layers=(0, 4)),
    "dia": dict(steps=2, token_steps=2, views=2, noise_steps=2, lbfgs_iterations=2, sufficient_loss=0.0),
    "kontext": dict(steps=2, resolution=64),
    "visualcloze": dict(steps=2),
    "qwen-edit": dict(steps=2, resolution=32),
}


# --- the registry ----------------------------------------------------------------------------------
def test_the_registry_names_each_method_once():
    import diffinv.baselines
    import diffinv.bench.build

    assert list(METHODS) == NAMES and all(METHODS[name].name == name for name in NAMES)
    assert not set(VARIANTS) & set(METHODS), "a variant of Difference Inversion is not a second registration"
    assert not hasattr(diffinv.baselines, "BASELINES") and not hasattr(diffinv.bench.build, "BASELINE_METHODS")
    for name in NAMES:
        assert parse_method(name).base == name
    own = [name for name in NAMES if METHODS[name].model == "own"]
    assert own == ["kontext", "visualcloze", "qwen-edit"]
    assert [m.base for m in expand_methods(["baselines"])][3:] == [n for n in NAMES[4:] if n not in own]
    with pytest.raises(DiffinvError, match="registered already"):
        register(Registered("copy-b", "again", lambda: CopyB, model="none", kind="reference"))
    with pytest.raises(DiffinvError, match="without ':'"):
        Registered("a:b", "bad name", lambda: CopyB)


def test_sdedit_and_instructpix2pix_share_one_text_edit_base():
    from diffinv.baselines import InstructPix2Pix, SDEdit, TextEditBaseline

    assert issubclass(SDEdit, TextEditBaseline) and issubclass(InstructPix2Pix, TextEditBaseline)
    assert SDEdit.analogy is InstructPix2Pix.analogy is TextEditBaseline.analogy
    assert (SDEdit.needs_text, InstructPix2Pix.needs_text) == ("b_prime", "instruction")


# --- every registered method on tiny models --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(backbone, clip):
    """The models each kind of registered method runs on, tiny: a text-to-image pipeline and its
    `DifferenceInversion`, an instruction editor (pipeline and `DifferenceInversion`), an inpainting pipeline,
    and the models of their own of the methods that have one (by name)."""
    from diffinv.backbones.editor import InstructPix2PixBackbone
    from diffinv.captioners import ClipRetrievalCaptioner
    from diffinv.pipeline import DifferenceInversion
    from diffinv.testing import (
        tiny_inpainting,
        tiny_instruct_pix2pix,
        tiny_kontext_pipeline,
        tiny_visualcloze_pipeline,
    )

    captioner = ClipRetrievalCaptioner(clip, [CAPTION_A, CAPTION_A_PRIME, "a photo of a red square"])
    editor = InstructPix2PixBackbone(tiny_instruct_pix2pix(backbone.pipe), "tiny-editor")
    return {
        "main": (DifferenceInversion(backbone, clip, captioner), backbone.pipe),
        "editor": (DifferenceInversion(editor, clip, captioner), editor.pipe),
        "inpainting": (None, tiny_inpainting(backbone.pipe)),
        "own": {"kontext": tiny_kontext_pipeline(), "visualcloze": tiny_visualcloze_pipeline()},
        "clip": clip,
    }


class TinyModels:
    """`method.Models` on the tiny models, for one registered method."""

    def __init__(self, models: dict, entry: Registered):
        self.models, self.entry = models, entry

    def difference_inversion(self):
        return self.models[self.entry.model][0]

    def load(self, method_class, config):
        from diffinv.baselines import QwenEdit, Visii

        if method_class is QwenEdit:  # its own model: a tiny Qwen-Image-Edit-Plus pipeline
            from diffinv.testing_qwen import tiny_qwen_edit_pipeline

            return QwenEdit(tiny_qwen_edit_pipeline(), config)
        entry = self.entry
        pipe = self.models["own"][entry.name] if entry.model == "own" else self.models[entry.model][1]
        if method_class is Visii:
            return Visii(pipe, self.models["clip"], config=config)
        return method_class(pipe, config)


def tiny_config(name: str):
    config_class = METHODS[name].load().config_class
    if config_class is None:
        return None
    if name == "on-editor":
        return fast_config(sampling_mode="editor")
    if name in FAST:
        return config_class(**FAST[name])
    return fast_config()


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_method_answers_the_one_call_shape(name, tiny_models, images):
    entry = METHODS[name]
    method_class = entry.load()
    config = tiny_config(name)
    method = method_class.build(TinyModels(tiny_models, entry), config)
    assert isinstance(method, Method)
    assert method.needs_text in (None, *TEXTS) and isinstance(method.uses_text, bool)
    text = {"text": WORDS[method.needs_text]} if method.needs_text else {}
    a, a_prime, b = images["a"], images["a_prime"], images["b"]
    b_prime = method.analogy(a, a_prime, b, seed=0, progress=False, **text)
    assert isinstance(b_prime, Image.Image) and b_prime.mode == "RGB"
    if config is not None:
        assert method.config == config and isinstance(method.config, method_class.config_class)
    if hasattr(method, "cost"):
        assert method.cost() == config.cost()  # known before any model loads
    if is_batched(method):  # Difference Inversion: two triplets in one fit, each B′ with its tokens
        assert method.last_tokens is not None
        drawn = method.analogies([(a, a_prime, b), (a_prime, a, b)], seeds=[0, 1], progress=False)
        first = next(drawn)
        tokens = method.last_tokens
        second = next(drawn)
        assert first.size == second.size == b_prime.size and method.last_tokens is not tokens
        assert tokens.history["loss"] and tokens.config == config


# --- a method of one's own in the bench ----------------------------------------------------------------
class Blur:
    """B′ = B blurred; told the instruction (which it records), one triplet at a time."""

    name = "blur"
    needs_text = "instruction"
    uses_text = True
    config_class = None
    calls: list = []

    @classmethod
    def build(cls, models, config):
        return cls()

    def analogy(self, a, a_prime, b, *, seed=0, progress=True, text=None):
        Blur.calls.append((seed, text))
        return b.filter(ImageFilter.GaussianBlur(2))


class Darken:
    """B′ = B darkened, several triplets at once (a declared capability)."""

    name = "darken"
    needs_text = None
    uses_text = False
    config_class = None
    chunks: list = []

    @classmethod
    def build(cls, models, config):
        return cls()

    def analogy(self, a, a_prime, b, *, seed=0, progress=True):
        return next(self.analogies([(a, a_prime, b)], seeds=[seed], progress=progress))

    def analogies(self, triplets, *, seeds, progress=True):
        Darken.chunks.append(list(seeds))
        return (b.point(lambda v: v // 2) for _, _, b in triplets)


@pytest.fixture
def own_methods():
    Blur.calls.clear(), Darken.chunks.clear()
    entries = [
        register(Registered("blur", "B′ = B blurred", lambda: Blur, model="none")),
        register(Registered("darken", "B′ = B darkened", lambda: Darken, model="none")),
    ]
    yield entries
    for entry in entries:
        del METHODS[entry.name]


def instructed_triplets(count: int) -> list[BenchTriplet]:
    images = [shape_image((32, 32), colour, seed=i) for i, colour in enumerate(("red", "blue", "green"))]
    return [
        BenchTriplet(
            id=f"i{i}",
            a=lambda: images[0],
            a_prime=lambda: images[1],
            b=lambda: images[2],
            instruction=f"make it blue {i}",
        )
        for i in range(count)
    ]


def test_a_method_of_ones_own_runs_in_the_bench(own_methods, tmp_path):
    from diffinv.bench.run import BenchRunner
    from test_bench import ColourMean

    triplets = instructed_triplets(3)
    runner = BenchRunner(None, tmp_path, fast_config(), [ColourMean()], batch_size=2, seed=10, progress=False)
    assert runner.run(expand_methods(["blur", "darken", "copy-b"]), triplets) == 9
    assert Blur.calls == [(10, "make it blue 0"), (11, "make it blue 1"), (12, "make it blue 2")]
    assert Darken.chunks == [[10, 11], [12]]  # batched where declared: --batch triplets at once
    rows = {(row["method"], row["id"]): row for row in read_results(tmp_path)}
    assert all(rows[("blur", t.id)]["uses_text"] for t in triplets)
    assert not any("uses_text" in rows[(m, t.id)] for m in ("darken", "copy-b") for t in triplets)
    assert rows[("copy-b", "i0")]["mean_directional"] == 0.0
    darkened = Image.open(tmp_path / rows[("darken", "i1")]["b_prime"])
    assert darkened.getpixel((0, 0)) == tuple(v // 2 for v in triplets[1].b().getpixel((0, 0)))
    with pytest.raises(DiffinvError, match="darken has no settings to change"):
        runner.run([parse_method("darken:steps=3")], triplets)
    with pytest.raises(DiffinvError, match="blur needs each triplet's instruction, and x has none"):
        runner.run(expand_methods(["blur"]), [BenchTriplet(id="x", a=None, a_prime=None, b=None)])


# --- run.json: each method's config --------------------------------------------------------------------
def no_loading(options):
    raise AssertionError("the model was loaded")


def prepared(out: Path, *argv) -> dict:
    """run.json after `diffinv bench run --out OUT ARGV` got as far as loading the model."""
    from diffinv.bench.command import run_command
    from test_bench import bench_options

    with pytest.raises(AssertionError, match="the model was loaded"):
        run_command(bench_options("run", "--out", out, "--quiet", *argv), no_loading)
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def test_run_json_records_each_methods_full_config(tmp_path):
    from diffinv.baselines import SDEditConfig
    from diffinv.model_card import model_card

    argv = ["--n", "2", "--set", "steps=3", "--method", "difference-inversion", "--method", "paper:steps=5"]
    record = prepared(tmp_path / "run", *argv, "--method", "copy-b", "--method", "sdedit:strength=0.6")
    card = model_card("shapes")
    configs = record["configs"]
    assert (
        list(configs)
        == record["methods"]
        == ["difference-inversion", "paper:steps=5", "copy-b", "sdedit:strength=0.6"]
    )
    assert (
        configs["difference-inversion"]
        == record["base_config"]
        == json.loads(card.config_for(changes={"steps": 3}).to_json())
    )
    assert configs["paper:steps=5"]["steps"] == 5 and configs["copy-b"] is None
    budget = card.bench["baselines"]["sdedit"]  # the card's budget, then the spec's change
    assert configs["sdedit:strength=0.6"] == {**vars(SDEditConfig(**budget)), "strength": 0.6}


def test_a_changed_config_is_refused_and_an_old_run_json_resumed(tmp_path, capsys):
    from diffinv.cli import main

    out = tmp_path / "run"
    argv = ["--n", "2", "--method", "copy-b", "--method", "sdedit:strength=0.6"]
    record = prepared(out, *argv)

    record["configs"]["sdedit:strength=0.6"]["steps"] = 7  # as if run when the card's budget was 7 steps
    (out / "run.json").write_text(json.dumps(record), encoding="utf-8")
    code = main(["bench", "run", "--out", str(out), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{out} ran sdedit:strength=0.6 with another config (steps 7 → 20)" in err

    del record["configs"]  # written before run.json recorded configs: nothing to compare, resumed
    (out / "run.json").write_text(json.dumps(record), encoding="utf-8")
    assert prepared(out, *argv)["configs"]["sdedit:strength=0.6"]["steps"] == 20


def test_a_recorded_run_of_the_docs_is_resumed_by_todays_command(tmp_path):
    """docs/runs/heldout-v2-s160-baselines was recorded before run.json held configs: the command
    that made it finds the same run there, and records today's configs."""
    out = tmp_path / "heldout-v2-s160-baselines"
    out.mkdir()
    shutil.copy(REPO / "docs" / "runs" / out.name / "run.json", out / "run.json")
    recorded = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert "configs" not in recorded
    methods = [arg for name in recorded["methods"] for arg in ("--method", name)]
    record = prepared(out, "--model", "shapes", "--n", "100", "--triplet-seed", "160", *methods)
    assert record["methods"] == recorded["methods"] and list(record["configs"]) == recorded["methods"]


def test_check_run_record_compares_the_configs_of_the_methods_it_shares(tmp_path):
    record = {"dataset": {"name": "shapes"}, "model": "m", "base_config": {}, "seed": 0}
    check_run_record(tmp_path, {**record, "methods": ["a"], "configs": {"a": {"x": 1}}})
    check_run_record(tmp_path, {**record, "methods": ["b"], "configs": {"b": None}})  # another method: added
    assert json.loads((tmp_path / "run.json").read_text())["configs"] == {"a": {"x": 1}, "b": None}
    check_run_record(tmp_path, {**record, "methods": ["a"]})  # no configs given: nothing compared
    with pytest.raises(DiffinvError, match=r"ran a with another config \(x 1 → 2\)"):
        check_run_record(tmp_path, {**record, "methods": ["a"], "configs": {"a": {"x": 2}}})
    with pytest.raises(DiffinvError, match=r"ran b with another config \(x '\(none\)' → 1\)"):
        check_run_record(tmp_path, {**record, "methods": ["b"], "configs": {"b": {"x": 1}}})
    assert METHOD_SETS  # the sets still name registered methods and variants only
    for name in {n for names in METHOD_SETS.values() for n in names}:
        parse_method(name)
