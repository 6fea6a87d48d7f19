"""Difference Inversion on an instruction editor (`backbones.editor`): fitted and drawn on tiny
InstructPix2Pix models of the real classes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config
from diffinv.backbones.editor import InstructPix2PixBackbone
from diffinv.errors import DiffinvError
from diffinv.inversion import noised_pair, token_consistency_loss
from diffinv.pipeline import DifferenceInversion
from diffinv.testing import tiny_instruct_pix2pix

CAPTIONS = (CAPTION_A, CAPTION_A_PRIME)


@pytest.fixture(scope="module")
def editor_di(editor, clip) -> DifferenceInversion:
    return DifferenceInversion(editor, clip, captioner=None, default_config=fast_config(sampling_mode="editor"))


@pytest.fixture(scope="module")
def editor_tokens(editor_di, images):
    return editor_di.fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False)


def test_each_row_of_the_token_consistency_loss_is_edited_from_the_other_image(editor):
    latents = torch.randn(4, 4, 8, 8)  # z_A, z_A′ of two pairs
    conditioning = editor.pair_conditioning(latents)
    scale = editor.vae.config.scaling_factor
    for row, source in enumerate([1, 0, 3, 2]):  # z_A from A′, z_A′ from A
        torch.testing.assert_close(conditioning[row], latents[source] / scale)


def test_the_editors_loss_is_the_unets_error_given_the_image_it_edits_from(editor, images):
    latents = editor.encode_images([images["a"], images["a_prime"]])
    noisy, timesteps, targets = noised_pair(editor, latents, torch.Generator().manual_seed(0))
    ids, slot_mask = editor.slot_ids(["", ""], 2)
    diff = torch.randn(1, 2, editor.token_width)
    conditioning = editor.pair_conditioning(latents)
    with torch.no_grad():
        loss = token_consistency_loss(editor, diff, ids, slot_mask, noisy, timesteps, targets, "sum", conditioning)
        states = editor.encode_prompt(ids, slot_mask, torch.cat([-diff, diff]))

        def by_hand(shown):
            prediction = editor.unet(torch.cat([noisy, shown], dim=1), timesteps, encoder_hidden_states=states).sample
            return (prediction - targets).pow(2).sum()

    torch.testing.assert_close(loss, by_hand(conditioning).reshape(1))
    unswapped = latents / editor.vae.config.scaling_factor
    assert not torch.allclose(loss, by_hand(unswapped).reshape(1))  # the image each row sees matters


def test_the_editors_instruction_is_the_diff_tokens_alone(editor_di, editor, images, monkeypatch):
    texts = []
    slot_ids = editor.slot_ids
    monkeypatch.setattr(editor, "slot_ids", lambda prompts, n: texts.append(list(prompts)) or slot_ids(prompts, n))
    tokens = editor_di.fit(images["a"], images["a_prime"], captions=CAPTIONS, prompts=CAPTIONS, progress=False)
    assert texts == [["", ""]]  # no prompt beside the tokens in L_tc, though prompts were given
    assert tokens.embeddings.shape == (5, editor.token_width) and tokens.embeddings.abs().sum() > 0
    assert tokens.config.sampling_mode == "editor"


def test_an_editor_needs_no_prompts_unless_the_clip_loss_reads_them(editor_di, di, images):
    config = fast_config(sampling_mode="editor", alpha=0.0)  # the text-tower loss, the image delta: no captions
    tokens = editor_di.fit(images["a"], images["a_prime"], config, progress=False)
    assert (tokens.prompt_a, tokens.prompt_a_prime) == ("", "")
    with pytest.raises(DiffinvError, match="no captioner"):  # a text-to-image model's L_tc needs them
        di.fit(images["a"], images["a_prime"], fast_config(alpha=0.0), progress=False)
    in_context = config.replace(clip_loss_space="in-context")
    with pytest.raises(DiffinvError, match="no captioner"):  # the in-context loss reads prompt_A and prompt_A′
        editor_di.fit(images["a"], images["a_prime"], in_context, progress=False)


def test_the_editor_draws_b_prime_from_b_at_bs_working_size(editor_di, editor_tokens, images):
    b = images["b"]
    drawn = editor_di.apply(editor_tokens, b, seed=3, progress=False)
    again = editor_di.apply(editor_tokens, b, seed=3, progress=False)
    assert drawn.size == editor_di._working_image(b, editor_tokens.config).size
    assert list(drawn.getdata()) == list(again.getdata())  # one seed, one image
    unedited = editor_di.apply(editor_tokens, b, seed=3, config=editor_tokens.config.replace(edit_strength=0.0))
    assert list(drawn.getdata()) != list(unedited.getdata())  # the tokens are the edit
    other_b = Image.new("RGB", b.size, "white")
    assert list(editor_di.apply(editor_tokens, other_b, seed=3).getdata()) != list(drawn.getdata())  # B is seen


def test_the_image_guidance_reaches_the_editor(editor_di, editor_tokens, images):
    config = editor_tokens.config
    low = editor_di.apply(editor_tokens, images["b"], config=config.replace(image_guidance_scale=1.0), progress=False)
    high = editor_di.apply(editor_tokens, images["b"], config=config.replace(image_guidance_scale=3.0), progress=False)
    assert list(low.getdata()) != list(high.getdata())


@pytest.mark.parametrize(
    "changes",
    [dict(share_attention=0.5), dict(edit_mask=0.5), dict(direct_inversion=True)],
    ids=["share_attention", "edit_mask", "direct_inversion"],
)
def test_the_editor_refuses_what_needs_an_inversion_of_b(editor, editor_tokens, images, changes):
    """InstructPix2Pix draws from noise with B as its condition: nothing compares B′ with an
    inversion of B, so those options are one line, not silently dropped; other modes likewise."""
    settings = editor_tokens.config.draw_settings()
    states = editor.encode_plain([""])
    b = images["b"].resize((64, 32))
    with pytest.raises(DiffinvError, match="tiny-editor is an instruction editor.*do not apply"):
        editor.sample(states, b.size, b, dataclasses.replace(settings, **changes), torch.Generator(), False)
    with pytest.raises(DiffinvError, match="'img2img' does not apply to 'tiny-editor', an instruction editor"):
        editor.sample(states, b.size, b, dataclasses.replace(settings, mode="img2img"), torch.Generator(), False)


def test_the_editor_does_not_read_strength(editor_di, editor_tokens, images):
    """`strength` is not part of an editor's drawing: it denoises from pure noise whatever its value."""
    config = editor_tokens.config
    low = editor_di.apply(editor_tokens, images["b"], seed=2, config=config.replace(strength=0.3), progress=False)
    high = editor_di.apply(editor_tokens, images["b"], seed=2, config=config.replace(strength=1.0), progress=False)
    assert list(low.getdata()) == list(high.getdata())


def test_guidance_away_from_the_before_side_reaches_the_editor(editor, editor_di, editor_tokens, images):
    seen = []
    hook = editor.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        editor_di.apply(
            editor_tokens, images["b"], config=editor_tokens.config.replace(negative_diff=True, sampling_steps=1)
        )
    finally:
        hook.remove()
    ids, slot_mask = editor.slot_ids([""], editor_tokens.n_tokens)
    with torch.no_grad():
        after = editor.encode_prompt(ids, slot_mask, editor_tokens.embeddings)
        before = editor.encode_prompt(ids, slot_mask, -editor_tokens.embeddings)
    states = seen[0]  # InstructPix2Pix's three branches: (text, B), (∅, B), (∅, ∅), ∅ = {"", −D̃} here
    torch.testing.assert_close(states[0], after[0])
    torch.testing.assert_close(states[1], before[0])
    torch.testing.assert_close(states[2], before[0])


def test_modes_that_a_model_cannot_draw_in_are_refused_before_any_work(editor_di, di, editor_tokens, images):
    def no_fit(*args, **kwargs):
        raise AssertionError("the fit started")

    config = editor_tokens.config.replace(sampling_mode="inversion")
    editor_di.fit = no_fit  # an instance attribute: the module's fixture ends with this test's module
    try:
        with pytest.raises(DiffinvError, match="'inversion' does not apply to 'tiny-editor', an instruction editor"):
            editor_di.analogy(images["a"], images["a_prime"], images["b"], config, captions=CAPTIONS)
    finally:
        del editor_di.fit
    with pytest.raises(DiffinvError, match="'editor' does not apply to 'tiny-epsilon', a text-to-image model"):
        di.apply(editor_tokens, images["b"], prompt="a red square", config=config.replace(sampling_mode="editor"))


def test_on_an_editor_bs_description_serves_only_the_b_context_loss(editor_di, editor, images, monkeypatch):
    calls = {}
    editor_di.captioner = lambda pictures: ["a photo of a red square"] * len(pictures)
    fit, apply = editor_di._fit_prepared, editor_di._apply  # analogy's fit and apply on its working images
    monkeypatch.setattr(
        editor_di,
        "_fit_prepared",
        # analogy fits one group: the example pairs of its one edit
        lambda groups, *a, **k: calls.setdefault("fit", groups[0][0].prompt_b) and fit(groups, *a, **k),
    )
    monkeypatch.setattr(
        editor_di, "_apply", lambda *a, **k: calls.setdefault("apply", k["prompt"]) == "" and apply(*a, **k)
    )
    config = fast_config(sampling_mode="editor", prompt_source="caption", lambda_clip_b=1.0)
    try:
        editor_di.analogy(images["a"], images["a_prime"], images["b"], config, captions=CAPTIONS, progress=False)
    finally:
        editor_di.captioner = None
    assert calls == {"fit": "a photo of a red square", "apply": ""}  # described for the fit, not drawn with


def test_an_invalid_image_guidance_is_refused():
    with pytest.raises(DiffinvError, match="image_guidance_scale"):
        fast_config(image_guidance_scale=-1.0)


def test_from_pretrained_loads_an_editor_directory_as_an_editor(tmp_path, backbone, tiny_model_dir, images):
    _, clip_dir = tiny_model_dir
    tiny_instruct_pix2pix(backbone.pipe).save_pretrained(tmp_path / "ip2p")
    loaded = DifferenceInversion.from_pretrained(str(tmp_path / "ip2p"), device="cpu", clip_model=clip_dir)
    assert isinstance(loaded.backbone, InstructPix2PixBackbone)
    assert loaded.default_config.sampling_mode == "editor"  # its only mode, though no descriptor says so


def test_the_bundled_editor_is_described_as_training_describes_it():
    from diffinv.model_card import model_card
    from diffinv.shapes.descriptor import TrainingPlan, editor_descriptor

    card = model_card("shapes-editor")
    written = json.loads((card.directory / "diffinv.json").read_text(encoding="utf-8"))
    # the plan the bundled world was trained by, as its training.json records it
    recorded = json.loads((card.directory.parent / "training.json").read_text(encoding="utf-8"))["plan"]
    assert {k: v for k, v in written.items() if k != "format"} == editor_descriptor(TrainingPlan.from_record(recorded))
    assert card.pipeline_class() == "StableDiffusionInstructPix2PixPipeline"
    assert card.path(card.clip).is_dir() and card.caption_candidates()
    world = model_card("shapes").default_config()
    config = card.default_config()
    for field in ("learning_rate", "clip_loss_space", "tc_reduction", "prompt_source", "n_tokens", "lambda_tc"):
        assert getattr(config, field) == getattr(world, field)  # the world's method at its learning rate
    # the encoder's D̃ (trained on the seen edit types) where it redraws A as A′, else the fit (§10)
    assert (config.init, config.steps, config.weight_decay) == ("auto", 200, 1.0)
    assert card.config_for(changes={"init": "encoder"}).steps == 0 and card.learned_split == "seen"
    assert (card.directory / "diff_encoder" / "diff_encoder.safetensors").is_file()
    assert (config.sampling_mode, config.guidance_scale, config.image_guidance_scale) == ("editor", 4.0, 3.0)


def test_the_editor_uses_the_encoder_only_once_it_is_trained():
    """An encoder trained on every edit type is the default (results.md §7); one trained on the seen
    edit types only is used where it redraws A as A′, the fit elsewhere (init "auto", §10)."""
    from diffinv.shapes.descriptor import EDITOR_FIT, TrainingPlan, editor_descriptor

    before = editor_descriptor(TrainingPlan(), trained={"editor": 1.0})
    assert "init" not in before["config"] and before["config"]["steps"] == EDITOR_FIT["steps"]
    assert "init_budgets" not in before and "learned_split" not in before
    done = {"editor": 1.0, "diff_encoder": 1.0}
    every = editor_descriptor(TrainingPlan(diff_encoder_split="all"), trained=done)
    assert (every["config"]["init"], every["config"]["steps"], every["learned_split"]) == ("encoder", 0, "all")
    seen = editor_descriptor(TrainingPlan(), trained=done)
    assert seen["config"]["init"] == "auto" and seen["config"]["steps"] == EDITOR_FIT["steps"]
    assert (seen["init_budgets"], seen["learned_split"]) == ({"encoder": {"steps": 0}}, "seen")


def test_a_descriptor_naming_a_missing_clip_is_refused(tmp_path):
    from diffinv.model_card import model_card, write_descriptor

    write_descriptor(tmp_path, clip="../nowhere")
    with pytest.raises(DiffinvError, match="CLIP directory"):
        model_card(str(tmp_path))


# --- the bench's on-editor method ----------------------------------------------------------------------------
def test_on_editor_methods_start_from_the_editors_defaults():
    from diffinv.bench.methods import parse_method

    method = parse_method("on-editor:edit_strength=1.5")
    assert method.on_editor and method.fits_tokens
    editor_defaults = fast_config(sampling_mode="editor", image_guidance_scale=2.0)
    config = method.config(fast_config(), editor_defaults)
    assert (config.sampling_mode, config.image_guidance_scale, config.edit_strength) == ("editor", 2.0, 1.5)
    with pytest.raises(DiffinvError, match="instruction editor"):
        method.config(fast_config())
    assert not parse_method("difference-inversion").on_editor


def test_the_bench_runs_difference_inversion_on_the_editor_beside_the_main_model(
    capsys, tmp_path, backbone, tiny_model_dir
):
    from pathlib import Path

    from diffinv.bench.results import read_results
    from diffinv.cli import main

    model_dir, clip_dir = tiny_model_dir
    tiny_instruct_pix2pix(backbone.pipe).save_pretrained(tmp_path / "ip2p")
    examples = Path(__file__).parent.parent / "examples"
    out = tmp_path / "run"
    argv = ["bench", "run", "--out", out, "--dataset", "folder", "--data", examples, "--embedder", "clip", "--n", "1"]
    (tmp_path / "captions.txt").write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    argv += ["--model", model_dir, "--clip-model", clip_dir, "--captions-from", tmp_path / "captions.txt"]
    argv += ["--baseline-model", f"instructpix2pix={tmp_path / 'ip2p'}", "--device", "cpu", "--quiet"]
    argv += ["--set", "steps=2,sampling_steps=2,prompt_source=caption"]
    argv += ["--method", "difference-inversion", "--method", "on-editor:steps=2,sampling_steps=2,alpha=0"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    rows = {row["method"]: row for row in read_results(out)}
    assert sorted(rows) == ["difference-inversion", "on-editor:steps=2,sampling_steps=2,alpha=0"]
    on_editor = rows["on-editor:steps=2,sampling_steps=2,alpha=0"]
    assert (
        Image.open(out / on_editor["b_prime"]).size == Image.open(out / rows["difference-inversion"]["b_prime"]).size
    )
    assert len(on_editor["loss_plot"]) > 0 and on_editor["final_loss_tc"] > 0  # fitted, on the editor's UNet


def test_on_editor_on_a_world_without_its_editor_stops_before_any_model_loads(capsys, tmp_path):
    import shutil

    from diffinv.cli import main
    from diffinv.model_card import model_card

    world = tmp_path / "world"
    shutil.copytree(
        model_card("shapes").directory, world, ignore=shutil.ignore_patterns("editor", "inpainting", "unet")
    )
    descriptor = json.loads((world / "diffinv.json").read_text(encoding="utf-8"))
    del descriptor["bench"]["editor"]
    (world / "diffinv.json").write_text(json.dumps(descriptor), encoding="utf-8")
    argv = ["bench", "run", "--out", tmp_path / "run", "--model", world, "--n", "1", "--method", "on-editor"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "on-editor needs this world's editor, which is not trained yet" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "model, mode, message",
    [
        ("shapes-editor", "inversion", "'inversion' does not apply to 'shapes-editor', an instruction editor"),
        ("shapes", "editor", "'editor' does not apply to 'shapes', a text-to-image model"),
    ],
)
def test_the_command_line_refuses_a_mode_the_model_cannot_draw_in_before_loading_it(
    capsys, tmp_path, monkeypatch, model, mode, message
):
    import diffinv.pipeline
    from diffinv.cli import main

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(diffinv.pipeline.DifferenceInversion, "from_pretrained", no_load)
    example = "examples/shape/"
    argv = [
        "analogy", example + "a.png", example + "a_prime.png", example + "b.png",
        "-o", str(tmp_path / "b_prime.png"), "--model", model, "--mode", mode,
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b_prime.png").exists()


def test_a_preset_keeps_an_editors_only_mode():
    from diffinv.config import preset

    paper_on_editor = preset("paper", fast_config(sampling_mode="editor"))
    assert paper_on_editor.sampling_mode == "editor" and paper_on_editor.clip_loss_space == "text-tower"
    assert preset("paper", fast_config(sampling_mode="inversion")).sampling_mode == "img2img"
