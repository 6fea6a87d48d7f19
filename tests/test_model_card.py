"""Model cards: a model directory's diffinv.json gives its defaults and captioner, so nothing in
the code needs to know a model by name; a plain directory or a hub id gets the paper's defaults."""

import json
import shutil

import pytest

from diffinv.captioners import Blip2Captioner, ClipRetrievalCaptioner
from diffinv.config import InversionConfig
from diffinv.errors import DiffinvError
from diffinv.model_card import BUNDLED, model_card, read_caption_lines, write_descriptor
from diffinv.pipeline import DifferenceInversion


def test_a_hub_id_gets_the_papers_defaults_and_blip2():
    card = model_card("stabilityai/stable-diffusion-2-1")
    assert card.directory is None and card.name == card.source == "stabilityai/stable-diffusion-2-1"
    assert card.default_config() == InversionConfig()
    assert card.captioner == {"kind": "blip2"} and card.caption_candidates() is None
    assert card.native_resolution() is None


def test_which_models_need_a_download_and_which_caption_with_blip2():
    """The rules the command line checks before loading (`cli/preflight.py`) and the loader follows."""
    hub = model_card("nobody/no-such-model")  # not in any hub cache
    assert hub.needs_download() and hub.captions_with_blip2
    assert not model_card("bad id!").needs_download()  # malformed: the loader reports it in its own words
    for bundled in BUNDLED:
        card = model_card(bundled)
        assert not card.needs_download() and not card.captions_with_blip2  # local, captions by CLIP retrieval
        assert card.caption_candidates()


@pytest.mark.parametrize("path", ["/no/such/model", "./missing", "~/models/sd", "a/b/c"])
def test_a_path_that_does_not_exist_is_not_taken_for_a_hub_id(path):
    with pytest.raises(DiffinvError, match="no such model directory"):
        model_card(path)


def test_the_bundled_world_is_a_directory_with_a_descriptor():
    card = model_card("shapes")
    assert card.directory == BUNDLED["shapes"] and card.has_descriptor and card.name == "shapes"
    config = card.default_config()
    assert (config.steps, config.prompt_source, config.n_tokens) == (100, "caption", InversionConfig().n_tokens)
    from diffinv.shapes.descriptor import TrainingPlan, world_descriptor

    assert config == InversionConfig().replace(**world_descriptor(TrainingPlan())["config"])  # as training writes it
    assert (config.clip_loss_space, config.tc_reduction) == ("in-context", "sum")
    assert len(card.caption_candidates()) == 240
    assert card.native_resolution() == 32
    assert card.bench["classifier"] == "classifier" and card.path("classifier").is_dir()


def test_a_moved_world_carries_its_defaults_and_captioner(tmp_path, tiny_model_dir):
    """A tiny SD directory with a descriptor loads with the descriptor's defaults, name and
    CLIP-retrieval captioner, through the ordinary loading path."""
    model_dir, clip_dir = tiny_model_dir
    moved = tmp_path / "my-world"
    shutil.copytree(model_dir, moved)
    shutil.copytree(clip_dir, moved / "clip")
    (moved / "captions.txt").write_text("a photo of a red circle\na photo of a blue circle\n")
    write_descriptor(
        moved, name="my-world", config={"steps": 7}, captioner={"kind": "clip-retrieval", "captions": "captions.txt"}
    )

    di = DifferenceInversion.from_pretrained(str(moved), device="cpu")
    assert di.default_config == InversionConfig(steps=7)
    assert di.backbone.model_id == "my-world"
    assert isinstance(di.captioner, ClipRetrievalCaptioner)
    assert di.captioner.candidates == ["a photo of a red circle", "a photo of a blue circle"]

    plain = DifferenceInversion.from_pretrained(model_dir, device="cpu", clip_model=clip_dir)
    assert plain.default_config == InversionConfig() and plain.backbone.model_id == model_dir
    assert isinstance(plain.captioner, Blip2Captioner)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "something-else"}), "not a diffinv model descriptor"),
        (json.dumps({"format": "diffinv.model/1", "config": {"alhpa": 1}}), "unknown option"),
        (json.dumps({"format": "diffinv.model/1", "config": {"steps": 0}}), "steps"),
        (json.dumps({"format": "diffinv.model/1", "captioner": {"kind": "gpt"}}), "captioner kind"),
        (
            json.dumps({"format": "diffinv.model/1", "captioner": {"kind": "clip-retrieval", "captions": "x.txt"}}),
            "caption file",
        ),
    ],
)
def test_a_damaged_descriptor_is_one_clear_error(tmp_path, content, fragment):
    (tmp_path / "diffinv.json").write_text(content)
    with pytest.raises(DiffinvError, match=fragment):
        model_card(str(tmp_path))


def test_caption_files_plain_and_folder_dataset_style(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("a red circle\n\n  a blue square  \n")
    assert read_caption_lines(plain) == ["a red circle", "a blue square"]
    keyed = tmp_path / "captions.txt"
    keyed.write_text(
        "family: colour\na: a red circle\na_prime: a blue circle\nb: a red square\nb_prime: a blue square\n"
    )
    assert read_caption_lines(keyed) == ["a red circle", "a blue circle", "a red square", "a blue square"]
    # a caption that merely contains a colon is kept whole
    colon = tmp_path / "colon.txt"
    colon.write_text("style: watercolour, a red circle\nA photo: a cat\n")
    assert read_caption_lines(colon) == ["A photo: a cat"]


@pytest.mark.parametrize("content", ["", "\n  \n", "family: shape\n"])
def test_a_caption_file_without_captions_is_refused(tmp_path, content):
    path = tmp_path / "captions.txt"
    path.write_text(content)
    with pytest.raises(DiffinvError, match="holds no captions"):
        read_caption_lines(path)
