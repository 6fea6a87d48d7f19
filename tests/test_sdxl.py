"""The SDXL backbone on tiny random SDXL pipelines of the real classes (`StableDiffusionXLPipeline`,
`CLIPTextModel` + `CLIPTextModelWithProjection`, a UNet with "text_time" added conditioning):
the text states match the pipeline's own, D̃ is split per encoder, the pooled embedding sees the
DIFF tokens, L_tc and the CLIP loss reach the right columns, ε and v prediction, the three
sampling modes, token files that know their family, exports, loading from a directory and the
command line."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, fast_config
from diffinv.backbones.sdxl import StableDiffusionXLBackbone, XLTextStates
from diffinv.cli import main
from diffinv.errors import DiffinvError
from diffinv.export import XL_KEYS, export
from diffinv.inversion import check_compatible, token_consistency_loss
from diffinv.pipeline import DifferenceInversion
from diffinv.testing import tiny_clip_for, tiny_xl_backbone, tiny_xl_pipeline
from diffinv.tokens import DiffTokens

D1, D2 = 32, 48  # the tiny encoders' widths


@pytest.fixture(scope="module")
def xl():
    return tiny_xl_backbone("epsilon")


@pytest.fixture(scope="module")
def xl_di(xl):
    return DifferenceInversion(xl, tiny_clip_for(xl.pipe), captioner=None)


@pytest.fixture(scope="module")
def xl_tokens(xl_di, images):
    return xl_di.fit(
        images["a"], images["a_prime"], fast_config(), captions=(CAPTION_A, CAPTION_A_PRIME), progress=False
    )


# --- text ------------------------------------------------------------------------------------------
def test_plain_prompts_and_the_unconditional_branch_are_the_pipelines_own(xl):
    with torch.no_grad():
        hidden, negative_hidden, pooled, negative_pooled = xl.pipe.encode_prompt(
            PROMPT_B, device="cpu", do_classifier_free_guidance=True
        )
        ours, uncond = xl.encode_plain([PROMPT_B]), xl.unconditional_states()
    assert ours.hidden.shape == (1, 77, D1 + D2) and ours.pooled.shape == (1, D2)
    assert torch.equal(ours.hidden, hidden) and torch.equal(ours.pooled, pooled)
    assert torch.equal(uncond.hidden, negative_hidden) and torch.equal(uncond.pooled, negative_pooled)
    assert not uncond.hidden.any()  # SDXL base: force_zeros_for_empty_prompt


def test_slots_sit_at_the_same_positions_for_both_tokenizers(xl):
    ids, slot_mask = xl.slot_ids([PROMPT_B, "a cat"], 3)
    assert ids.shape == (2, 2, 77) and slot_mask.shape == (2, 77)
    assert slot_mask.sum(dim=1).tolist() == [3, 3]
    assert torch.equal(ids[:, 0][slot_mask], ids[:, 1][slot_mask])
    # the encoders differ only in their padding: <eos> for encoder 1, "!" for encoder 2 (as SDXL's)
    differ = ids[:, 0] != ids[:, 1]
    assert differ.any()
    assert (ids[:, 1][differ] == xl.tokenizer_2.convert_tokens_to_ids("!")).all()


def test_each_encoder_sees_its_own_columns_and_the_pooled_embedding_sees_the_tokens(xl):
    ids, slot_mask = xl.slot_ids([PROMPT_B], 2)
    generator = torch.Generator().manual_seed(0)
    diff = torch.randn(2, D1 + D2, generator=generator)
    # (random changes: a constant added to a token would vanish in CLIP's layer norms)
    with torch.no_grad():
        base = xl.encode_prompt(ids, slot_mask, diff)
        changed_l = diff.clone()
        changed_l[:, :D1] += torch.randn(2, D1, generator=generator)
        moved_l = xl.encode_prompt(ids, slot_mask, changed_l)
        changed_g = diff.clone()
        changed_g[:, D1:] += torch.randn(2, D2, generator=generator)
        moved_g = xl.encode_prompt(ids, slot_mask, changed_g)
    # encoder 1's columns move only encoder 1's half of the hidden states, and not the pooled one
    assert not torch.equal(moved_l.hidden[..., :D1], base.hidden[..., :D1])
    assert torch.equal(moved_l.hidden[..., D1:], base.hidden[..., D1:])
    assert torch.equal(moved_l.pooled, base.pooled)
    # encoder 2's columns move encoder 2's half and the pooled embedding
    assert torch.equal(moved_g.hidden[..., :D1], base.hidden[..., :D1])
    assert not torch.equal(moved_g.hidden[..., D1:], base.hidden[..., D1:])
    assert not torch.allclose(moved_g.pooled, base.pooled)
    # before the slots (causal attention) nothing moves
    first_slot = int(slot_mask[0].nonzero()[0])
    assert torch.equal(moved_g.hidden[:, :first_slot], base.hidden[:, :first_slot])


def test_a_refiner_with_one_text_encoder_is_refused():
    pipe = tiny_xl_pipeline()
    pipe.text_encoder, pipe.tokenizer = None, None
    with pytest.raises(DiffinvError, match="two"):
        StableDiffusionXLBackbone(pipe, "refiner")


# --- the denoiser and the losses -------------------------------------------------------------------
def test_predict_gives_the_unet_the_pooled_embedding_and_the_size_numbers(xl, images):
    latents = xl.encode_images([images["a"]])
    assert latents.shape == (1, 4, 16, 16)
    states = xl.encode_plain([PROMPT_B])
    timesteps = torch.tensor([500])
    with torch.no_grad():
        ours = xl.predict(latents, timesteps, states)
        by_hand = xl.unet(
            latents,
            timesteps,
            encoder_hidden_states=states.hidden,
            added_cond_kwargs={"text_embeds": states.pooled, "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])},
        ).sample
        other_size = xl.unet(
            latents,
            timesteps,
            encoder_hidden_states=states.hidden,
            added_cond_kwargs={"text_embeds": states.pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])},
        ).sample
    assert torch.equal(ours, by_hand)
    assert not torch.allclose(ours, other_size)  # the size numbers are read


def test_token_consistency_gradient_reaches_both_encoders_columns(xl, images):
    latents = xl.encode_images([images["a"], images["a_prime"]])
    ids, slot_mask = xl.slot_ids([CAPTION_A_PRIME, CAPTION_A], 2)
    diff = torch.zeros(1, 2, D1 + D2, requires_grad=True)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([300, 700])
    noisy = xl.add_noise(latents, noise, timesteps)
    token_consistency_loss(xl, diff, ids, slot_mask, noisy, timesteps, noise).sum().backward()
    assert diff.grad[..., :D1].abs().sum() > 0 and diff.grad[..., D1:].abs().sum() > 0


def test_the_clip_loss_reaches_encoder_2s_columns_only(xl_di, images):
    """With L_clip alone, encoder 1's columns get no gradient: they stay at their zero start."""
    config = fast_config(steps=3, use_token_consistency=False)
    tokens = xl_di.fit(images["a"], images["a_prime"], config, captions=(CAPTION_A, CAPTION_A_PRIME), progress=False)
    assert tokens.embeddings.shape == (config.n_tokens, D1 + D2)
    assert not tokens.embeddings[:, :D1].any()
    assert tokens.embeddings[:, D1:].abs().sum() > 0


def test_the_text_tower_check_compares_encoder_2(xl, xl_di, clip):
    check_compatible(xl, xl_di.clip, fast_config())  # ViT-bigG's tower = encoder 2: accepted
    with pytest.raises(DiffinvError, match="token width 32 but the model's text encoder 48"):
        check_compatible(xl, clip, fast_config())  # an SD-sized CLIP


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_fit_and_apply_in_every_sampling_mode(prediction_type, images):
    backbone = tiny_xl_backbone(prediction_type)
    di = DifferenceInversion(backbone, tiny_clip_for(backbone.pipe), captioner=None)
    config = fast_config(steps=3)
    tokens = di.fit(images["a"], images["a_prime"], config, captions=(CAPTION_A, CAPTION_A_PRIME), progress=False)
    assert tokens.family == "sdxl" and tokens.encoder_widths == (D1, D2)
    assert torch.isfinite(torch.tensor(tokens.history["loss"])).all()
    modes = [dict(sampling_mode=mode) for mode in ("noise", "img2img", "inversion", "edit-friendly")]
    for changes in modes + [
        dict(sampling_mode="inversion", share_attention=0.5),
        dict(sampling_mode="inversion", edit_mask=0.3),
    ]:
        settings = config.replace(**changes)
        first = di.apply(tokens, images["b"], seed=1, prompt=PROMPT_B, config=settings, progress=False)
        again = di.apply(tokens, images["b"], seed=1, prompt=PROMPT_B, config=settings, progress=False)
        assert first.size == (48, 24) and first.mode == "RGB"  # B is 2:1, about 32² pixels
        assert first.tobytes() == again.tobytes()


def test_hard_tokens_are_rows_of_both_tables(xl_di, images):
    tokens = xl_di.fit(
        images["a"], images["a_prime"], fast_config(hard_tokens=True), captions=(CAPTION_A, CAPTION_A_PRIME)
    )
    table = torch.cat(
        [xl_di.backbone.text_encoder.get_input_embeddings().weight, xl_di.backbone.clip_vocabulary], dim=1
    )
    assert torch.equal(tokens.embeddings, table[tokens.hard_token_ids].detach().float())


# --- token files -----------------------------------------------------------------------------------
def test_token_files_keep_the_family_and_refuse_the_other_one(xl_di, di, xl_tokens, fitted_tokens, images, tmp_path):
    path = tmp_path / "xl.safetensors"
    xl_tokens.save(path)
    loaded = DiffTokens.load(path)
    assert loaded.family == "sdxl" and loaded.encoder_widths == (D1, D2)
    assert torch.equal(loaded.embeddings, xl_tokens.embeddings)
    with pytest.raises(DiffinvError, match="SDXL model .* cannot condition .*SD 1.x / 2.x"):
        di.apply(loaded, images["b"], prompt=PROMPT_B, progress=False)
    with pytest.raises(DiffinvError, match="SD 1.x / 2.x model .* cannot condition .*SDXL"):
        xl_di.apply(fitted_tokens, images["b"], prompt=PROMPT_B, progress=False)


def test_sdxl_tokens_need_their_encoder_widths():
    with pytest.raises(DiffinvError, match="widths"):
        DiffTokens(torch.zeros(2, 80), "m", 10, fast_config(), family="sdxl")
    with pytest.raises(DiffinvError, match="add up"):
        DiffTokens(torch.zeros(2, 80), "m", 10, fast_config(), family="sdxl", encoder_widths=(32, 32))


# --- exports ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["diffusers", "a1111"])
def test_exports_split_the_tokens_into_clip_l_and_clip_g(xl_tokens, tmp_path, layout):
    path = tmp_path / f"{layout}.safetensors"
    export(xl_tokens, layout, path)
    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(XL_KEYS)
    assert tensors["clip_l"].shape == (xl_tokens.n_tokens, D1) and tensors["clip_g"].shape == (xl_tokens.n_tokens, D2)
    assert tensors["clip_l"].dtype == tensors["clip_g"].dtype == torch.float32
    assert torch.equal(torch.cat([tensors["clip_l"], tensors["clip_g"]], dim=1), xl_tokens.embeddings)


@pytest.mark.parametrize("legacy_eos", [False, True], ids=["eos-pooling", "legacy-argmax-pooling"])
def test_diffusers_loads_the_export_into_both_encoders_with_diffinvs_text_states(xl_tokens, tmp_path, legacy_eos):
    """Loaded one encoder at a time, "prompt <diff>" in SDXL's own prompt encoding gives exactly
    diffinv's hidden states, and its pooled states where encoder 2 pools at the `<eos>` id. With
    the old `eos_token_id: 2` in the config, transformers pools at the largest id instead: in
    diffusers that is an added `<diff>` token, while diffinv's slots hold `<bos>` and still pool
    at `<eos>` (the README says so)."""
    path = tmp_path / "d.safetensors"
    export(xl_tokens, "diffusers", path)
    state = load_file(str(path))
    pipe, reference = tiny_xl_pipeline(), tiny_xl_backbone()  # the reference stays untouched
    if legacy_eos:
        for encoder in (pipe.text_encoder_2, reference.text_encoder_2):
            encoder.config.eos_token_id = encoder.text_model.eos_token_id = 2
    pipe.load_textual_inversion(state["clip_l"], "<diff>", pipe.tokenizer, pipe.text_encoder)
    pipe.load_textual_inversion(state["clip_g"], "<diff>", pipe.tokenizer_2, pipe.text_encoder_2)
    with torch.no_grad():
        hidden, _, pooled, _ = pipe.encode_prompt(
            f"{PROMPT_B} <diff>", device="cpu", do_classifier_free_guidance=False
        )
        ids, slot_mask = reference.slot_ids([PROMPT_B], xl_tokens.n_tokens)
        ours = reference.encode_prompt(ids, slot_mask, xl_tokens.embeddings)
    assert torch.equal(hidden, ours.hidden)
    assert torch.equal(pooled, ours.pooled) != legacy_eos


# --- loading and the command line ------------------------------------------------------------------
@pytest.fixture(scope="module")
def xl_model_dir(tmp_path_factory):
    """A tiny SDXL pipeline saved with its CLIP in clip/, as a user would lay out a local model."""
    directory = tmp_path_factory.mktemp("tiny-xl") / "sdxl"
    pipe = tiny_xl_pipeline()
    pipe.save_pretrained(directory)
    clip = tiny_clip_for(pipe)
    clip.model.save_pretrained(directory / "clip")
    clip.tokenizer.save_pretrained(directory / "clip")
    return directory


def test_from_pretrained_picks_the_sdxl_backbone_from_model_index(xl_model_dir):
    di = DifferenceInversion.from_pretrained(str(xl_model_dir), device="cpu", offline=True)
    assert isinstance(di.backbone, StableDiffusionXLBackbone)
    assert di.backbone.token_width == D1 + D2
    assert isinstance(di.backbone.encode_plain(["a cat"]), XLTextStates)


def test_cli_fit_apply_analogy_and_export_on_an_sdxl_directory(xl_model_dir, image_files, tmp_path, capsys):
    model = ["--model", str(xl_model_dir), "--device", "cpu", "--quiet"]
    fitting = ["--steps", "2", "--caption-a", CAPTION_A, "--caption-a-prime", CAPTION_A_PRIME]
    fitting += ["--prompt-source", "caption"]
    drawing = ["--sampling-steps", "2", "--prompt", PROMPT_B]
    a, a_prime, b = image_files["a"], image_files["a_prime"], image_files["b"]
    tokens = tmp_path / "d.safetensors"
    assert main(["fit", str(a), str(a_prime), "-o", str(tokens), *model, *fitting]) == 0, capsys.readouterr().err
    assert DiffTokens.load(tokens).family == "sdxl"
    out = tmp_path / "applied"  # apply writes into a folder, one B′ per B
    assert main(["apply", str(tokens), str(b), "-o", str(out), *model, *drawing]) == 0, capsys.readouterr().err
    assert Image.open(out / "b.png").size == (48, 24)
    analogy = tmp_path / "analogy.png"
    code = main(["analogy", str(a), str(a_prime), str(b), "-o", str(analogy), *model, *fitting, *drawing])
    assert code == 0, capsys.readouterr().err
    assert analogy.is_file()
    exported = tmp_path / "d-a1111.safetensors"
    assert main(["export", str(tokens), "--format", "a1111", "-o", str(exported)]) == 0
    assert sorted(load_file(str(exported))) == sorted(XL_KEYS)


def test_bench_runs_on_an_sdxl_directory(xl_model_dir, tmp_path, capsys):
    from diffinv.bench.report import read_results

    examples = Path(__file__).parent.parent / "examples"
    captions = tmp_path / "captions.txt"
    captions.write_text(f"{CAPTION_A}\n{CAPTION_A_PRIME}\n{PROMPT_B}\n")
    out = tmp_path / "run"
    argv = ["bench", "run", "--out", out, "--dataset", "folder", "--data", examples, "--n", "1"]
    argv += ["--model", xl_model_dir, "--captions-from", captions, "--embedder", "clip", "--device", "cpu", "--quiet"]
    argv += ["--set", "steps=2,sampling_steps=2,prompt_source=caption"]
    assert main([str(arg) for arg in argv]) == 0, capsys.readouterr().err
    rows = read_results(out)
    assert {row["method"] for row in rows} == {"difference-inversion", "copy-b"}
    assert all(math.isfinite(row["clip_directional"]) for row in rows)
