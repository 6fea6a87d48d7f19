"""The paper's baselines as `diffinv bench` methods, offline on tiny saved models: text-using
baselines get the dataset's text and are marked so, their settings are checked before any model
loads, each runs on the model its card or `--baseline-model` names, and one missing text stops
the run before any work."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from diffinv.bench.build import baseline_config, baseline_model, parse_baseline_models, triplet_text
from diffinv.bench.datasets import BenchTriplet, shapes_dataset
from diffinv.bench.methods import expand_methods, parse_method
from diffinv.bench.report import read_results
from diffinv.cli import main
from diffinv.errors import DiffinvError
from diffinv.model_card import model_card
from diffinv.testing import tiny_instruct_pix2pix, tiny_pipeline

EXAMPLES = Path(__file__).parent.parent / "examples"


def one_line_error(capsys, argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("diffinv: error: "), err
    return err


def examples_copy(root: Path, names, instructions: bool) -> Path:
    """Some of the examples, with or without the `instruction:` line of their captions.txt."""
    for name in names:
        shutil.copytree(EXAMPLES / name, root / name)
        captions = root / name / "captions.txt"
        lines = captions.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if instructions or not line.startswith("instruction:")]
        assert any(line.startswith("instruction:") for line in kept) == instructions
        captions.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def dataset_with_instructions(tmp_path_factory) -> Path:
    """Two of the examples, whose captions.txt give the instruction turning B into B′."""
    return examples_copy(tmp_path_factory.mktemp("triplets"), ("colour", "dot"), instructions=True)


@pytest.fixture(scope="module")
def dataset_without_instructions(tmp_path_factory) -> Path:
    return examples_copy(tmp_path_factory.mktemp("bare"), ("colour", "dot"), instructions=False)


@pytest.fixture(scope="module")
def editor_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("editor") / "ip2p"
    tiny_instruct_pix2pix(tiny_pipeline()).save_pretrained(directory)
    return directory


def bench_args(out, model_args, data, *methods):
    argv = ["bench", "run", "--out", out, "--dataset", "folder", "--data", data, "--embedder", "clip"]
    for method in methods:
        argv += ["--method", method]
    return argv + model_args


# --- parsing and checking ----------------------------------------------------------------------------
def test_baseline_specs_parse_and_their_settings_are_checked_against_their_config():
    method = parse_method("sdedit:strength=0.6,steps=4")
    assert method.is_baseline and not method.fits_tokens
    assert method.base == "sdedit" and method.changes == {"strength": 0.6, "steps": 4}
    config = baseline_config("sdedit", {"steps": 20, "guidance_scale": 4.0}, method.changes)
    assert (config.strength, config.steps, config.guidance_scale) == (0.6, 4, 4.0)  # the spec wins over the card
    with pytest.raises(DiffinvError, match="sdedit has no setting strenght"):
        baseline_config("sdedit", {}, {"strenght": 0.5})
    assert [m.base for m in expand_methods(["baselines"])][-6:] == [
        "sdedit",
        "instructpix2pix",
        "visii",
        "analogist",
        "dia",
        "oracle-instruction",
    ]
    # today's editors, each on a model of its own, are a set apart
    assert [m.base for m in expand_methods(["recent-editors"])] == [
        "difference-inversion",
        "copy-b",
        "kontext",
        "visualcloze",
        "qwen-edit",
    ]


@pytest.mark.parametrize(
    "name", ["sdedit", "instructpix2pix", "visii", "analogist", "dia", "kontext", "visualcloze", "oracle-instruction"]
)
def test_every_baseline_method_has_its_class_and_published_config(name):
    from diffinv.method import METHODS

    cls = METHODS[name].load()
    config = baseline_config(name, {}, {})
    assert type(config) is cls.config_class and type(config).__name__ == f"{cls.__name__}Config"
    assert cls.uses_text == (cls.needs_text is not None)


def test_text_using_baselines_get_the_datasets_text():
    triplet = shapes_dataset(1, seed=0)[0]
    assert triplet_text("sdedit", "b_prime", triplet) == triplet.caption_b_prime
    assert triplet_text("instructpix2pix", "instruction", triplet) == triplet.truth.instruction
    bare = BenchTriplet(id="x", a=None, a_prime=None, b=None)
    with pytest.raises(DiffinvError, match="instruction"):
        triplet_text("instructpix2pix", "instruction", bare)


def test_baseline_models_come_from_the_card_or_the_command_line(tmp_path):
    (tmp_path / "editor").mkdir()
    (tmp_path / "diffinv.json").write_text(json.dumps({"format": "diffinv.model/1", "bench": {"editor": "editor"}}))
    card = model_card(tmp_path)
    assert baseline_model("instructpix2pix", card, {}) == str(tmp_path / "editor")
    assert baseline_model("analogist", card, {}) is None  # no inpainting model named: the published one
    assert baseline_model("sdedit", card, {}) is None  # the bench's own pipeline
    assert baseline_model("oracle-instruction", card, {}) == str(tmp_path / "editor")  # InstructPix2Pix's model
    assert baseline_model("visii", card, parse_baseline_models(["visii=other/ip2p"])) == "other/ip2p"
    with pytest.raises(DiffinvError, match="NAME=MODEL"):
        parse_baseline_models(["pix2pix=x"])


def test_a_world_without_the_model_a_baseline_needs_stops_the_run_before_it_loads(tmp_path):
    from diffinv.bench.command import check_methods

    card = {"format": "diffinv.model/1", "world": {"version": 2}, "bench": {"inpainting": "inpainting"}}
    (tmp_path / "diffinv.json").write_text(json.dumps(card))  # its editor still training, its inpainting dir gone
    ip2p, analogist, sdedit = (parse_method(name) for name in ("oracle-instruction", "analogist", "sdedit"))
    with pytest.raises(DiffinvError, match="needs this world's editor, which is not trained yet"):
        check_methods([ip2p], model_card(tmp_path), [], {})
    with pytest.raises(DiffinvError, match="names 'inpainting', which is missing"):
        check_methods([analogist], model_card(tmp_path), [], {})
    (tmp_path / "inpainting").mkdir()
    check_methods([analogist, sdedit], model_card(tmp_path), [], {})  # sdedit runs on the world's own UNet
    check_methods([ip2p], model_card(tmp_path), [], {"instructpix2pix": "some/editor"})  # given on the command line


def test_a_bad_baseline_setting_stops_the_run_before_any_model_loads(capsys, tmp_path, model_args):
    err = one_line_error(capsys, bench_args(tmp_path / "run", model_args, EXAMPLES, "sdedit:strenght=0.5"))
    assert "strenght" in err
    assert not (tmp_path / "run" / "results.jsonl").exists()


# --- running ------------------------------------------------------------------------------------------
def test_sdedit_and_instructpix2pix_run_in_the_bench_and_are_marked_text_using(
    capsys, tmp_path, model_args, dataset_with_instructions, editor_dir
):
    out = tmp_path / "run"
    argv = bench_args(
        out,
        model_args,
        dataset_with_instructions,
        "sdedit:steps=2",
        "instructpix2pix:steps=2",
        "copy-b",
    )
    argv += ["--baseline-model", f"instructpix2pix={editor_dir}"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    rows = read_results(out)
    by_method = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    assert sorted(by_method) == ["copy-b", "instructpix2pix:steps=2", "sdedit:steps=2"]
    for method in ("sdedit:steps=2", "instructpix2pix:steps=2"):
        assert len(by_method[method]) == 2
        assert all(row["uses_text"] for row in by_method[method])
        for row in by_method[method]:
            assert (
                Image.open(out / row["b_prime"]).size
                == Image.open(dataset_with_instructions / row["id"] / "b.png").size
            )
    assert not any("uses_text" in row for row in by_method["copy-b"])


def test_a_missing_text_stops_the_run_before_any_work(
    capsys, tmp_path, model_args, editor_dir, dataset_without_instructions
):
    argv = bench_args(tmp_path / "run", model_args, dataset_without_instructions, "instructpix2pix:steps=2")
    argv += ["--baseline-model", f"instructpix2pix={editor_dir}"]
    err = one_line_error(capsys, argv)
    assert "instruction" in err
    assert not (tmp_path / "run" / "results.jsonl").exists()
