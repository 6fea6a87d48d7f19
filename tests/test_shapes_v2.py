"""Shapes world v2: the layout no caption names, the editor's instructions, the classifier's centre
and layout threshold, the layout score, and the six training stages on a tiny plan (the editor and
the inpainting model load with their diffusers classes, training resumes stage by stage)."""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors import safe_open

from diffinv.bench.datasets import shapes_dataset
from diffinv.errors import DiffinvError
from diffinv.model_card import model_card
from diffinv.shapes.classifier import AttributeClassifier
from diffinv.shapes.descriptor import TrainingPlan
from diffinv.shapes.evaluate import score
from diffinv.shapes.loops import layout_threshold
from diffinv.shapes.networks import build_unet, widened_from
from diffinv.shapes.train import train_world
from diffinv.shapes.world import (
    ATTRIBUTES,
    CELLS,
    COLOURS,
    FAMILIES,
    LAYOUT_RANGE,
    Scene,
    all_scenes,
    canonical_instruction,
    caption_variants,
    cell_mask,
    grid_picture,
    instruction_variants,
    layout_range_of,
    render,
    triplets,
)

POSITION_WORDS = {"left", "right", "top", "bottom", "centre", "center", "corner", "middle", "up", "down"}


# --- the world -----------------------------------------------------------------------------------
def test_v2_triplets_spread_the_layout_and_b_prime_keeps_bs():
    drawn = triplets(200, seed=3, layout_range=LAYOUT_RANGE)
    offsets = np.array([(t.b.dx, t.b.dy) for t in drawn])
    assert np.abs(offsets).max() <= LAYOUT_RANGE
    assert np.abs(offsets).max() > 0.9 * LAYOUT_RANGE  # the range is used, not only the middle
    for t in drawn:
        assert (t.b_prime.dx, t.b_prime.dy) == (t.b.dx, t.b.dy)
        assert (t.a_prime.dx, t.a_prime.dy) == (t.a.dx, t.a.dy)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "cross"])
def test_a_large_shape_at_the_edge_of_the_range_stays_inside_the_frame(shape):
    """The shape's ink is the same at offset 0 and at the corners of the range: nothing is cut off."""

    def ink(dx, dy):
        picture = np.asarray(render(Scene(shape, "red", "large", "white", False, dx, dy)), dtype=np.float64)
        return (255 * 3 - picture.sum(axis=-1)).sum()

    centred = ink(0, 0)
    for dx, dy in [(LAYOUT_RANGE, LAYOUT_RANGE), (-LAYOUT_RANGE, -LAYOUT_RANGE), (LAYOUT_RANGE, -LAYOUT_RANGE)]:
        assert ink(dx, dy) == pytest.approx(centred, rel=0.02)


def test_no_caption_or_instruction_names_a_position():
    scene = all_scenes()[17]
    texts = list(caption_variants(scene))
    for family in FAMILIES:
        for value in ATTRIBUTES[family]:
            if value != getattr(scene, family):
                texts += instruction_variants(family, scene, value)
    for text in texts:
        assert not POSITION_WORDS & set(text.replace(",", " ").split()), text


@pytest.mark.parametrize("family", FAMILIES)
def test_instructions_name_the_target_and_the_canonical_one_comes_first(family):
    scene = Scene("circle", "red", "small", "white", True)
    target = next(v for v in ATTRIBUTES[family] if v != getattr(scene, family))
    variants = instruction_variants(family, scene, target)
    assert variants[0] == canonical_instruction(family, scene, target)
    assert len(set(variants)) == len(variants) >= 3
    if family in ("shape", "colour", "background"):
        assert all(target in text for text in variants)
    triplet = triplets(5, seed=0, layout_range=LAYOUT_RANGE)[FAMILIES.index(family)]
    assert triplet.instruction == canonical_instruction(family, triplet.b, triplet.target)


def test_the_bench_draws_v2_triplets_for_a_v2_model_card(tmp_path):
    (tmp_path / "diffinv.json").write_text(
        json.dumps({"format": "diffinv.model/1", "world": {"version": 2, "layout_range": 5.0}})
    )
    assert layout_range_of(model_card(tmp_path)) == 5.0
    assert layout_range_of(model_card("shapes")) == LAYOUT_RANGE  # the bundled world is v2
    wide = shapes_dataset(50, seed=1, layout_range=5.0)
    assert max(abs(t.truth.b.dx) for t in wide) > 1.5


def test_v2_draws_b_prime_from_bs_inversion_and_v1_keeps_img2img():
    from diffinv.config import InversionConfig
    from diffinv.shapes.descriptor import DESCRIPTOR, world_descriptor

    v2 = InversionConfig().replace(**world_descriptor(TrainingPlan())["config"])
    assert (v2.sampling_mode, v2.strength, v2.guidance_scale) == ("inversion", 0.6, 2.5)
    assert v2.clip_loss_space == "in-context" and v2.learning_rate == DESCRIPTOR["config"]["learning_rate"]
    v1 = InversionConfig().replace(**world_descriptor(TrainingPlan(world=1))["config"])
    assert (v1.sampling_mode, v1.strength, v1.guidance_scale) == ("img2img", 0.8, 4.0)
    assert (v2.steps, v1.steps) == (100, 200)  # v2 fits in half v1's steps, measured equal there (results.md §7)


# --- the classifier's centre and the layout score ----------------------------------------------------
def test_layout_threshold_is_twice_the_99th_percentile_rounded_up():
    assert layout_threshold(np.array([0.1] * 99 + [0.3])) >= 0.5
    errors = np.linspace(0, 1.0, 101)  # 99th percentile 0.99 → 1.98 → 2.0
    assert layout_threshold(errors) == 2.0


def test_a_centre_classifier_saves_and_loads_its_threshold(tmp_path):
    classifier = AttributeClassifier(centre=True, layout_threshold=1.25)
    classifier.save(tmp_path / "c")
    loaded = AttributeClassifier.load(tmp_path / "c")
    assert loaded.layout_threshold == 1.25 and loaded.centre is not None
    prediction = loaded.predict([render(all_scenes()[0])])[0]
    assert set(prediction) == set(ATTRIBUTES) | {"centre"} and len(prediction["centre"]) == 2
    AttributeClassifier(width=8).save(tmp_path / "v1")
    v1 = AttributeClassifier.load(tmp_path / "v1")
    assert v1.centre is None and "centre" not in v1.predict([render(all_scenes()[0])])[0]


def test_preserved_needs_the_layout_and_preserved_attributes_does_not():
    triplet = triplets(1, seed=0, layout_range=LAYOUT_RANGE)[0]
    truth = triplet.b_prime
    right = {**truth.attributes, "centre": (truth.dx + 0.3, truth.dy)}
    moved = {**truth.attributes, "centre": (truth.dx + 3.0, truth.dy - 3.0)}
    assert score(right, triplet, 1.0) == {
        "edit": 1.0,
        "preserved": 1.0,
        "correct": 1.0,
        "layout": 1.0,
        "preserved_attributes": 1.0,
    }
    assert score(moved, triplet, 1.0) == {
        "edit": 1.0,
        "preserved": 0.0,
        "correct": 0.0,
        "layout": 0.0,
        "preserved_attributes": 1.0,
    }
    assert set(score(right, triplet)) == {"edit", "preserved", "correct"}  # no threshold: v1's scores


# --- the grids of the inpainting model -----------------------------------------------------------------
def test_grid_cells_and_masks():
    colours = list(COLOURS)
    pictures = [Image.new("RGB", (32, 32), COLOURS[c]) for c in colours[:4]]
    grid = grid_picture(pictures)
    assert grid.size == (64, 64)
    for cell, (column, row) in enumerate(CELLS):
        assert grid.getpixel((column * 32 + 5, row * 32 + 5)) == COLOURS[colours[cell]]
        mask = np.asarray(cell_mask(cell, 32))
        assert mask[row * 32 : (row + 1) * 32, column * 32 : (column + 1) * 32].min() == 255
        assert mask.sum() == 255 * 32 * 32
    assert CELLS[3] == (1, 1)  # B′ is the bottom-right cell, as in Analogist


def test_widened_unet_starts_as_the_text_to_image_one():
    torch.manual_seed(0)
    unet = build_unet()
    wide = widened_from(unet, 9, 16)
    latents = torch.randn(1, 4, 16, 16)
    states = torch.randn(1, 5, 64)
    with torch.no_grad():
        plain = unet(latents, 10, encoder_hidden_states=states).sample
        extra = wide(torch.cat([latents, torch.randn(1, 5, 16, 16)], dim=1), 10, encoder_hidden_states=states).sample
    assert torch.allclose(plain, extra, atol=1e-5)  # the new channels start ignored


# --- training --------------------------------------------------------------------------------------
# Every stage for two steps on a few pictures in small batches: what the training tests check
# (stages, resumes, directories, formats) does not depend on the sizes.
TINY_PLAN = dict(
    n_images=16,
    classifier_steps=2,
    clip_steps=2,
    clip_vision_steps=2,
    vae_steps=2,
    vae_decoder_steps=2,
    vae_grid_steps=2,
    unet_steps=2,
    editor_steps=2,
    n_edit_pairs=4,
    inpainting_steps=2,
    n_grids=2,
    diff_encoder_steps=2,
    inpainting_batch=1,
    batch=2,
    clip_batch=4,
    classifier_batch=8,
    vae_batch=4,
    layout_check_renders=16,
)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """(directory, timings): a v2 world trained on TINY_PLAN by one `train_world` call from an empty
    directory, once for the tests that only read a finished world (a rerun there trains nothing)."""
    out = tmp_path_factory.mktemp("tiny-world") / "world"
    return out, train_world(out, TrainingPlan(**TINY_PLAN))


def test_stages_train_alone_once_their_prerequisites_are_done(tmp_path):
    plan, out = TrainingPlan(**TINY_PLAN), tmp_path / "world"
    with pytest.raises(DiffinvError, match="stage editor needs unet"):
        train_world(out, plan, stages=["editor"])
    with pytest.raises(DiffinvError, match="unknown stage"):
        train_world(out, plan, stages=["refiner"])
    assert list(train_world(out, plan, stages=["classifier", "clip"])) == ["classifier", "clip"]
    assert not (out / "diffinv.json").exists()  # not a complete world yet
    train_world(out, plan, stages=["vae", "vae_decoder", "unet"])
    train_world(out, plan, stages=["inpainting"])  # as a second process would, before the editor
    assert not (out / "diffinv.json").exists()  # text-to-image world not complete: no vae_grids yet
    train_world(out, plan, stages=["clip_vision", "vae_grids"])
    # a world now, for benches and checks, naming only the denoiser it has
    assert model_card(out).bench["inpainting"] == "inpainting" and "editor" not in model_card(out).bench
    assert set(train_world(out, plan, stages=["editor"])) == {
        "classifier",
        "clip",
        "vae",
        "vae_decoder",
        "unet",
        "inpainting",
        "clip_vision",
        "vae_grids",
        "editor",
    }
    assert layout_range_of(model_card(out)) == LAYOUT_RANGE
    assert model_card(out).bench["editor"] == "editor"  # complete now: both named
    assert model_card(str(out / "editor")).default_config().init == "zeros"  # no encoder yet: the fit
    train_world(out, plan, stages=["diff_encoder"])
    assert (out / "editor" / "diff_encoder" / "diff_encoder.safetensors").is_file()
    assert not (out / "diff_encoder-partial").exists()  # its checkpoint directory, gone once it is saved
    editor = model_card(str(out / "editor"))  # an encoder of the seen edit types: used where it redraws A as A′
    assert (editor.default_config().init, editor.learned_split) == ("auto", "seen")
    assert editor.config_for(changes={"init": "encoder"}).steps == 0


def test_a_tiny_v2_training_run_makes_every_model_and_resumes(tiny_world):
    plan = TrainingPlan(**TINY_PLAN)
    out, timings = tiny_world
    assert list(timings) == [
        "classifier",
        "clip",
        "vae",
        "vae_decoder",
        "unet",
        "editor",
        "inpainting",
        "clip_vision",
        "vae_grids",
        "diff_encoder",
    ]
    # the refined decoder is in every pipeline directory of the world
    main_vae = (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    for directory in ("editor", "inpainting"):
        assert (out / directory / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == main_vae
    card = model_card(out)
    assert layout_range_of(card) == LAYOUT_RANGE
    assert card.bench["editor"] == "editor" and card.bench["inpainting"] == "inpainting"
    assert AttributeClassifier.load(out / "classifier").layout_threshold >= 0.5
    assert StableDiffusionPipeline.from_pretrained(out).unet.config.in_channels == 4
    editor = StableDiffusionInstructPix2PixPipeline.from_pretrained(out / "editor")
    inpainter = StableDiffusionInpaintPipeline.from_pretrained(out / "inpainting")
    assert editor.unet.config.in_channels == 8 and inpainter.unet.config.in_channels == 9
    scene = Scene("circle", "red", "small", "white", False, 2.0, -3.0)
    edited = editor(
        "make it blue", image=render(scene), num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert edited.size == (32, 32)
    pictures = [render(scene)] * 4
    repainted = inpainter(
        "a small red circle on a white background",
        image=grid_picture(pictures),
        mask_image=cell_mask(3, 32),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert repainted.size == (64, 64)

    # a rerun finds every stage done and trains nothing
    before = UNet2DConditionModel.from_pretrained(out / "editor" / "unet").conv_in.weight.clone()
    assert train_world(out, plan) == timings
    assert torch.equal(UNet2DConditionModel.from_pretrained(out / "editor" / "unet").conv_in.weight, before)


def test_a_finished_denoiser_stage_is_extended_from_its_saved_weights(tmp_path, capsys):
    from diffinv.cli import main
    from diffinv.shapes.train import extend_stage

    plan, out = TrainingPlan(**TINY_PLAN), tmp_path / "world"
    train_world(out, plan, stages=["clip", "vae", "vae_decoder", "unet"])  # the unet's prerequisites only
    saved = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()
    with pytest.raises(DiffinvError, match="denoiser stage"):
        extend_stage(out, "vae", 4)
    with pytest.raises(DiffinvError, match="has not been trained"):
        extend_stage(out, "editor", 4)
    with pytest.raises(DiffinvError, match="has had 2 steps"):
        extend_stage(out, "unet", 2)

    longer = extend_stage(out, "unet", 5)
    assert longer.unet_steps == 5 and longer.editor_steps == plan.editor_steps
    record = json.loads((out / "training.json").read_text())
    assert "unet" not in record["seconds"] and "steps 2-4 of a 5-step schedule" in record["notes"]["unet"]
    partial = out / "unet-partial.safetensors"
    with safe_open(str(partial), framework="pt") as handle:
        assert handle.metadata()["step"] == "1"  # the next step is 2
        assert torch.equal(handle.get_tensor("online.conv_in.weight"), saved["conv_in.weight"])
        assert torch.equal(handle.get_tensor("ema.conv_in.weight"), saved["conv_in.weight"])
    assert extend_stage(out, "unet", 5) == longer  # the leg not trained yet: called again, nothing changes

    assert main(["shapes", "train", "--out", str(out), "--stage", "unet", "--extend", "5"]) in (0, None)
    record = json.loads((out / "training.json").read_text())
    assert "unet" in record["seconds"] and record["plan"]["unet_steps"] == 5 and not partial.exists()
    after = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()
    assert not torch.equal(after["conv_in.weight"], saved["conv_in.weight"])
    capsys.readouterr()
    assert main(["shapes", "train", "--out", str(out), "--extend", "8"]) == 2
    assert "--extend needs exactly one --stage" in capsys.readouterr().err


def test_v1_plans_train_only_the_four_v1_stages(tmp_path):
    plan = TrainingPlan(
        world=1,
        n_images=32,
        classifier_steps=1,
        clip_steps=1,
        vae_steps=1,
        vae_decoder_steps=1,
        unet_steps=1,
        batch=4,
        clip_batch=8,
        classifier_batch=8,
        vae_batch=4,
    )
    timings = train_world(tmp_path / "v1", plan)
    assert list(timings) == ["classifier", "clip", "vae", "vae_decoder", "unet"]
    assert layout_range_of(model_card(tmp_path / "v1")) == 1.5
    assert AttributeClassifier.load(tmp_path / "v1" / "classifier").centre is None
    assert not (tmp_path / "v1" / "editor").exists()


@pytest.mark.parametrize("name", ["sdedit", "instructpix2pix", "visii", "analogist", "dia"])
def test_the_v2_baseline_budgets_are_valid_settings_of_each_baseline(name):
    from diffinv.bench.build import baseline_config
    from diffinv.shapes.descriptor import V2_BASELINE_BUDGETS, world_descriptor

    budget = world_descriptor(TrainingPlan())["bench"]["baselines"][name]
    assert budget == V2_BASELINE_BUDGETS[name]
    config = baseline_config(name, budget, {})
    assert all(getattr(config, field) == value for field, value in budget.items())


def test_the_editor_and_inpainting_unets_are_stored_in_half_precision_and_load_in_float32(tiny_world):
    from safetensors import safe_open

    out, _ = tiny_world
    for directory, dtype in (("unet", "F32"), ("editor/unet", "F16"), ("inpainting/unet", "F16")):
        with safe_open(str(out / directory / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
            key = next(iter(handle.keys()))
            assert handle.get_slice(key).get_dtype() == dtype
        assert UNet2DConditionModel.from_pretrained(out / directory).dtype == torch.float32


def test_the_examples_are_one_off_centre_triplet_per_family_with_its_truth(tmp_path):
    from diffinv.bench.datasets import folder_dataset
    from diffinv.shapes.examples import write_examples

    folders = write_examples(tmp_path)
    assert sorted(folder.name for folder in folders) == sorted(FAMILIES)
    loaded = {t.id: t for t in folder_dataset(tmp_path)}
    for family in FAMILIES:
        lines = dict(line.split(": ", 1) for line in (tmp_path / family / "captions.txt").read_text().splitlines())
        assert lines["family"] == family == loaded[family].family
        assert (
            loaded[family].instruction == lines["instruction"] and loaded[family].caption_b_prime == lines["b_prime"]
        )
        b = np.asarray(Image.open(tmp_path / family / "b.png"), dtype=np.float64)
        assert Image.open(tmp_path / family / "b_prime.png").size == (32, 32)
        # off-centre: the picture is not symmetric about its centre
        assert np.abs(b - b[::-1, ::-1]).mean() > 5
