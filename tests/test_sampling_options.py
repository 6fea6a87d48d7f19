"""Apply-time options meant to keep more of B in B′: the edit strength s ({prompt_B, s·D̃}), the
negative DIFF (guidance's unconditional branch {prompt_B, −s·D̃}), guidance on D̃ alone (the
unconditional branch {prompt_B, 0}), B′ from B's DDIM inversion,
and the best of k candidates by CLIP direction; their validation, flags and bench variants."""

import dataclasses
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from PIL import Image

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, fast_config, run_cli, shape_image
from diffinv.bench.methods import METHOD_SETS, expand_methods, parse_method
from diffinv.config import SAMPLING_MODES, InversionConfig
from diffinv.errors import DiffinvError
from diffinv.pipeline import DifferenceInversion
from diffinv.tokens import DiffTokens


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def tokens(fitted_tokens):
    """Fitted tokens with D̃ replaced by clearly non-zero rows (two fitting steps barely move D̃
    from 0), so that +D̃, −D̃ and 0 give clearly different text states."""
    generator = torch.Generator().manual_seed(0)
    return dataclasses.replace(
        fitted_tokens, embeddings=torch.randn(fitted_tokens.embeddings.shape, generator=generator)
    )


@contextmanager
def token_embeddings_seen(backbone):
    """Every text-encoder call's token embeddings (B, L, d), after the DIFF tokens went into the slots."""
    calls = []
    token_embedding = backbone.text_encoder.get_input_embeddings()
    embeddings = next(
        m for m in backbone.text_encoder.modules() if getattr(m, "token_embedding", None) is token_embedding
    )

    def hook(module, inputs, output):
        calls.append((output - module.position_embedding.weight[: output.shape[1]]).detach().clone())

    handle = embeddings.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def unet_calls(backbone):
    """(timestep, encoder_hidden_states) of every UNet call, from diffusers' pipelines or our own loop."""
    calls = []

    def hook(module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        states = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        calls.append((int(torch.as_tensor(timestep).reshape(-1)[0]), states.detach().clone()))

    handle = backbone.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def encoded(backbone, tokens, scale: float) -> torch.Tensor:
    """{PROMPT_B, scale·D̃} through the text encoder."""
    ids, mask = backbone.slot_ids([PROMPT_B], tokens.n_tokens)
    with torch.no_grad():
        return backbone.encode_prompt(ids, mask, scale * tokens.embeddings)


# --- validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(edit_strength=-0.5), "edit_strength"),
        (dict(edit_strength=math.nan), "edit_strength"),
        (dict(edit_strength=math.inf), "edit_strength"),
        (dict(edit_strength="2"), "edit_strength"),
        (dict(edit_strength=True), "edit_strength"),
        (dict(negative_diff="yes"), "negative_diff"),
        (dict(negative_diff=1), "negative_diff"),
        (dict(diff_guidance="yes"), "diff_guidance"),
        (dict(negative_diff=True, diff_guidance=True), "choose one"),
        (dict(candidates=0), "candidates"),
        (dict(candidates=2.0), "candidates"),
        (dict(candidates=True), "candidates"),
        (dict(candidates=2, sampling_mode="inversion"), "inversion"),
        (dict(sampling_mode="inversion", sampling_steps=2, strength=0.4), "sampling_steps × strength"),
        (dict(sampling_mode="inversion", share_attention=1.5), "share_attention"),
        (dict(sampling_mode="inversion", share_attention=-0.1), "share_attention"),
        (dict(sampling_mode="inversion", share_attention=True), "share_attention"),
        (dict(share_attention=0.5), "needs sampling_mode 'inversion'"),
        (dict(sampling_mode="edit-friendly", share_attention=0.5), "needs sampling_mode 'inversion'"),
        (dict(sampling_mode="inversion", edit_mask=1.0), "edit_mask"),
        (dict(sampling_mode="inversion", edit_mask=-0.1), "edit_mask"),
        (dict(sampling_mode="inversion", edit_mask=True), "edit_mask"),
        (dict(edit_mask=0.5), "needs sampling_mode 'inversion'"),
        (dict(direct_inversion=1), "direct_inversion"),
        (dict(direct_inversion=True), "needs sampling_mode 'inversion'"),
        (dict(lambda_clip_b=-1.0), "lambda_clip_b"),
        (dict(lambda_clip_b=math.inf), "lambda_clip_b"),
        (dict(lambda_clip_b=True), "lambda_clip_b"),
    ],
)
def test_invalid_option_values_raise_naming_the_field(changes, field):
    with pytest.raises(DiffinvError) as raised:
        InversionConfig(**changes)
    assert str(raised.value).startswith("invalid configuration:") and field in str(raised.value)


def test_defaults_are_todays_behaviour_and_the_options_round_trip():
    config = InversionConfig()
    assert (config.edit_strength, config.negative_diff, config.candidates) == (1.0, False, 1)
    assert config.sampling_mode == "img2img" and "inversion" in SAMPLING_MODES
    changed = InversionConfig(edit_strength=0.0, negative_diff=True, candidates=3)
    assert InversionConfig.from_json(changed.to_json()) == changed
    assert InversionConfig(sampling_mode="inversion", edit_strength=2).edit_strength == 2


# --- guidance on D̃ alone --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["img2img", "inversion"])
def test_diff_guidance_makes_prompt_b_with_empty_slots_the_unconditional_branch(di, backbone, tokens, images, mode):
    config = fast_config(sampling_mode=mode, diff_guidance=True, edit_strength=0.5, guidance_scale=7.5)
    with unet_calls(backbone) as calls:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config, progress=False)
    zero, positive = encoded(backbone, tokens, 0.0), encoded(backbone, tokens, 0.5)
    guided = [states for _, states in calls if states.shape[0] == 2]
    assert guided
    for states in guided:  # diffusers' order: [unconditional, conditional]
        assert torch.allclose(states[0], zero[0], atol=1e-6)
        assert torch.allclose(states[1], positive[0], atol=1e-6)


def test_with_diff_guidance_and_no_edit_the_guidance_scale_changes_nothing(di, tokens, images):
    """At s = 0 both branches are {prompt_B, 0}: B′ is the reconstruction from B's inversion,
    whatever the guidance scale, where the empty unconditional branch lets guidance move it."""
    base = fast_config(sampling_mode="inversion", edit_strength=0.0, strength=0.75, sampling_steps=4)

    def drawn(**changes):
        return pixels(di.apply(tokens, images["b"], prompt=PROMPT_B, config=base.replace(**changes), progress=False))

    unguided = drawn(guidance_scale=1.0, diff_guidance=True)
    assert np.abs(drawn(guidance_scale=7.5, diff_guidance=True) - unguided).max() <= 1
    assert np.abs(drawn(guidance_scale=7.5) - unguided).max() > 1


# --- edit strength ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0])
def test_edit_strength_scales_what_reaches_the_slots(di, backbone, tokens, images, monkeypatch, scale):
    sampled = []
    real_sample = backbone.sample

    def sample(states, *args, **kwargs):
        sampled.append(states)
        return real_sample(states, *args, **kwargs)

    monkeypatch.setattr(backbone, "sample", sample)
    with token_embeddings_seen(backbone) as calls:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=fast_config(edit_strength=scale), progress=False)
    # the first text-encoder call is apply's {prompt_B, s·D̃}; diffusers then encodes its empty prompt
    assert len(calls) == 2 and calls[0].shape[0] == 1
    ids, mask = backbone.slot_ids([PROMPT_B], tokens.n_tokens)
    assert torch.allclose(calls[0][0][mask[0]], scale * tokens.embeddings, atol=1e-5)
    # the words of prompt_B are untouched
    words = backbone.vocabulary[ids[0][~mask[0]]]
    assert torch.allclose(calls[0][0][~mask[0]], words, atol=1e-5)
    # what is drawn from: {prompt_B, s·D̃}; at s = 0 that is prompt_B with its slots zeroed
    assert torch.allclose(sampled[0], encoded(backbone, tokens, scale), atol=1e-6)
    if scale == 0:
        with torch.no_grad():
            zeroed = backbone.encode_prompt(ids, mask, torch.zeros_like(tokens.embeddings))
        assert torch.allclose(sampled[0], zeroed, atol=1e-6)
    assert not torch.allclose(sampled[0], encoded(backbone, tokens, 1.0), atol=1e-3)


# --- negative DIFF ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [mode for mode in SAMPLING_MODES if mode != "editor"])  # editor: its own tests
def test_negative_diff_is_the_unconditional_branch_the_unet_sees(di, backbone, tokens, images, mode):
    config = fast_config(sampling_mode=mode, negative_diff=True, edit_strength=0.5, guidance_scale=7.5)
    with unet_calls(backbone) as calls:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config, progress=False)
    positive, negative = encoded(backbone, tokens, 0.5), encoded(backbone, tokens, -0.5)
    guided = [states for _, states in calls if states.shape[0] == 2]
    assert guided, "guidance 7.5: the UNet sees an unconditional and a conditional branch"
    if mode == "edit-friendly":  # its inversion is guided as its denoising, with {prompt_B, 0} as condition
        inverting, guided = guided[: len(guided) // 2], guided[len(guided) // 2 :]
        zero = encoded(backbone, tokens, 0.0)
        assert all(torch.allclose(states[0], negative[0], atol=1e-6) for states in inverting)
        assert all(torch.allclose(states[1], zero[0], atol=1e-6) for states in inverting)
    for states in guided:  # diffusers' order: [unconditional, conditional]
        assert torch.allclose(states[0], negative[0], atol=1e-6)
        assert torch.allclose(states[1], positive[0], atol=1e-6)

    # without the option the unconditional branch is the empty prompt, as before
    with unet_calls(backbone) as calls:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config.replace(negative_diff=False), progress=False)
    with torch.no_grad():
        empty = backbone.encode_plain([""])
    first = next(states for _, states in calls if states.shape[0] == 2)
    assert torch.allclose(first[0], empty[0], atol=1e-6)
    assert not torch.allclose(first[0], negative[0], atol=1e-3)


# --- DDIM inversion -----------------------------------------------------------------------------------------
@contextmanager
def decoded_latents(backbone, monkeypatch):
    """The final latents (scaled as the VAE encoder gives them) of every B′ drawn."""
    latents = []
    real_decode = backbone.vae.decode

    def decode(z, *args, **kwargs):
        latents.append(z.detach().clone() * backbone.vae.config.scaling_factor)
        return real_decode(z, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(backbone.vae, "decode", decode)
        yield latents


def test_inversion_round_trip_reconstructs_b_far_better_than_img2img(di, backbone, tokens, images, monkeypatch):
    """D̃ = 0 and guidance 1: inversion and denoising use the same condition, so B′'s latent
    comes back close to B's; img2img at the same strength redraws the noised part."""
    zero = dataclasses.replace(tokens, embeddings=torch.zeros_like(tokens.embeddings))
    config = fast_config(sampling_steps=30, strength=0.3, guidance_scale=1.0)
    b_latent = backbone.encode_images([di._working_image(images["b"], config)])

    def error(mode: str) -> float:
        with decoded_latents(backbone, monkeypatch) as latents:
            di.apply(zero, images["b"], prompt=PROMPT_B, config=config.replace(sampling_mode=mode), progress=False)
        return ((latents[-1] - b_latent).norm() / b_latent.norm()).item()

    inversion, img2img = error("inversion"), error("img2img")
    assert inversion < img2img / 5, (inversion, img2img)  # about 2.4 vs 28 on the tiny random model


def test_inversion_is_exact_for_a_denoiser_that_ignores_its_input(di, backbone, images, monkeypatch):
    """With a prediction that depends on the timestep only, DDIM inversion followed by DDIM
    denoising on the same timesteps is exact: this pins the alignment of the two schedules."""

    def by_timestep(sample, timestep, encoder_hidden_states=None, return_dict=True, **kwargs):
        generator = torch.Generator().manual_seed(int(torch.as_tensor(timestep).reshape(-1)[0]))
        out = torch.randn(sample.shape, generator=generator).to(sample)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    config = fast_config(sampling_mode="inversion", sampling_steps=10, strength=0.5, guidance_scale=1.0)
    b_latent = backbone.encode_images([di._working_image(images["b"], config)])
    monkeypatch.setattr(backbone.unet, "forward", by_timestep)
    with decoded_latents(backbone, monkeypatch) as latents:
        di.draw(PROMPT_B, images["b"], config, progress=False)
    assert ((latents[-1] - b_latent).norm() / b_latent.norm()).item() < 1e-4


def test_inversion_runs_img2img_timesteps_up_then_down_on_the_null_edit(di, backbone, tokens, images):
    """k = int(steps × strength) UNet calls up (batch 1, {prompt_B, 0}, guidance 1), then k down
    on the same timesteps (batch 2 when guided, {prompt_B, s·D̃})."""
    config = fast_config(sampling_steps=10, strength=0.4, guidance_scale=7.5)
    with unet_calls(backbone) as img2img:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config, progress=False)
    with unet_calls(backbone) as inversion:
        di.apply(
            tokens, images["b"], prompt=PROMPT_B, config=config.replace(sampling_mode="inversion"), progress=False
        )
    down = [t for t, _ in img2img]
    assert len(down) == 4 and down == sorted(down, reverse=True)
    assert [t for t, _ in inversion] == down[::-1] + down
    zero = encoded(backbone, tokens, 0.0)
    assert all(states.shape[0] == 1 and torch.allclose(states, zero, atol=1e-6) for _, states in inversion[:4])
    assert all(torch.allclose(states[1], encoded(backbone, tokens, 1.0)[0], atol=1e-6) for _, states in inversion[4:])


def test_inversion_draws_no_noise(di, tokens, images):
    config = fast_config(sampling_mode="inversion", sampling_steps=4, strength=0.5)
    first = di.apply(tokens, images["b"], seed=0, prompt=PROMPT_B, config=config, progress=False)
    other = di.apply(tokens, images["b"], seed=1, prompt=PROMPT_B, config=config, progress=False)
    assert np.array_equal(pixels(first), pixels(other))
    img2img = di.apply(
        tokens, images["b"], seed=0, prompt=PROMPT_B, config=config.replace(sampling_mode="img2img"), progress=False
    )
    assert not np.array_equal(pixels(first), pixels(img2img))


# --- edit-friendly DDPM inversion ---------------------------------------------------------------------------
@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
def test_edit_friendly_inversion_gives_b_back_exactly_on_the_null_edit(di, backbone, tokens, images, monkeypatch,
                                                                       guidance_scale):  # fmt: skip
    """D̃ = 0: denoising uses the inversion's condition, so the residuals take it back to B's
    latent exactly (float rounding only), guided or not — where DDIM inversion only comes close."""
    zero = dataclasses.replace(tokens, embeddings=torch.zeros_like(tokens.embeddings))
    config = fast_config(sampling_steps=10, strength=0.6, guidance_scale=guidance_scale)
    b_latent = backbone.encode_images([di._working_image(images["b"], config)])

    def error(mode: str) -> float:
        with decoded_latents(backbone, monkeypatch) as latents:
            di.apply(zero, images["b"], prompt=PROMPT_B, config=config.replace(sampling_mode=mode), progress=False)
        return ((latents[-1] - b_latent).norm() / b_latent.norm()).item()

    assert error("edit-friendly") < 1e-6
    assert error("inversion") > 1e-2  # the DDIM approximation on the tiny random model


def test_edit_friendly_inversion_changes_b_with_the_tokens_and_draws_seeded_noise(di, tokens, images):
    config = fast_config(sampling_mode="edit-friendly", sampling_steps=6, strength=0.5, guidance_scale=4.0)
    edited = di.apply(tokens, images["b"], seed=0, prompt=PROMPT_B, config=config, progress=False)
    again = di.apply(tokens, images["b"], seed=0, prompt=PROMPT_B, config=config, progress=False)
    other_seed = di.apply(tokens, images["b"], seed=1, prompt=PROMPT_B, config=config, progress=False)
    zero = dataclasses.replace(tokens, embeddings=torch.zeros_like(tokens.embeddings))
    unedited = di.apply(zero, images["b"], seed=0, prompt=PROMPT_B, config=config, progress=False)
    assert np.array_equal(pixels(edited), pixels(again))
    assert not np.array_equal(pixels(edited), pixels(other_seed))
    assert not np.array_equal(pixels(edited), pixels(unedited))
    assert InversionConfig(sampling_mode="edit-friendly", candidates=2).candidates == 2  # noise drawn: allowed


def test_edit_friendly_inversion_runs_the_img2img_timesteps_down_twice(di, backbone, tokens, images):
    """k calls down the img2img timesteps under {prompt_B, 0} (guided as the denoising), then k
    under {prompt_B, s·D̃}."""
    config = fast_config(sampling_steps=10, strength=0.4, guidance_scale=7.5)
    with unet_calls(backbone) as img2img:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config, progress=False)
    with unet_calls(backbone) as friendly:
        di.apply(
            tokens, images["b"], prompt=PROMPT_B, config=config.replace(sampling_mode="edit-friendly"), progress=False
        )
    down = [t for t, _ in img2img]
    assert [t for t, _ in friendly] == down + down
    zero, edit = encoded(backbone, tokens, 0.0), encoded(backbone, tokens, 1.0)
    assert all(states.shape[0] == 2 and torch.allclose(states[1], zero[0], atol=1e-6) for _, states in friendly[:4])
    assert all(torch.allclose(states[1], edit[0], atol=1e-6) for _, states in friendly[4:])


# --- self-attention sharing --------------------------------------------------------------------------------
def test_shared_self_attention_gives_the_second_half_the_first_halfs_maps():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from diffinv.backbones.shared_attention import SharedSelfAttention

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    x = torch.randn(4, 5, 8)  # [source rows | edited rows]
    shared = SharedSelfAttention()
    with torch.no_grad():
        plain = AttnProcessor()(attn, x)
        assert torch.allclose(shared(attn, x), plain, atol=1e-6)  # inactive: plain attention
        shared.active = True
        out = shared(attn, x)
        q, k, v = (attn.head_to_batch_dim(f(x)) for f in (attn.to_q, attn.to_k, attn.to_v))
        source_maps = attn.get_attention_scores(q, k).chunk(2)[0]
        expected = attn.to_out[0](attn.batch_to_head_dim(torch.bmm(torch.cat([source_maps] * 2), v)))
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out[:2], plain[:2], atol=1e-6) and not torch.allclose(out[2:], plain[2:], atol=1e-3)


def test_attention_sharing_denoises_b_beside_b_prime_then_b_prime_alone(di, backbone, tokens, images):
    """k = 5 denoising steps, share 0.4: the first 2 run [reconstruction | B′], each guided
    ([uncond, {prompt_B, 0}, uncond, {prompt_B, D̃}]), the last 3 B′ alone; the UNet's own
    attention processors are back afterwards."""
    config = fast_config(sampling_mode="inversion", sampling_steps=10, strength=0.5, guidance_scale=7.5)
    processors = dict(backbone.unet.attn_processors)
    with unet_calls(backbone) as calls:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config.replace(share_attention=0.4), progress=False)
    down = calls[5:]
    assert [states.shape[0] for _, states in down] == [4, 4, 2, 2, 2]
    zero, edit, empty = (
        encoded(backbone, tokens, 0.0)[0],
        encoded(backbone, tokens, 1.0)[0],
        backbone.encode_plain([""])[0],
    )
    for expected, row in zip((empty, zero, empty, edit), down[0][1]):
        assert torch.allclose(row, expected, atol=1e-6)
    assert {name: type(p) for name, p in backbone.unet.attn_processors.items()} == {
        name: type(p) for name, p in processors.items()
    }


def test_attention_sharing_changes_b_prime_and_nothing_on_the_null_edit(di, backbone, tokens, images, monkeypatch):
    """With D̃ = 0 B′'s branch is B's reconstruction itself, so sharing changes nothing; with D̃
    it changes B′."""
    config = fast_config(sampling_mode="inversion", sampling_steps=10, strength=0.6, guidance_scale=4.0)
    zero = dataclasses.replace(tokens, embeddings=torch.zeros_like(tokens.embeddings))

    def final_latents(drawn_tokens, share: float) -> torch.Tensor:
        with decoded_latents(backbone, monkeypatch) as latents:
            di.apply(drawn_tokens, images["b"], prompt=PROMPT_B, config=config.replace(share_attention=share),
                     progress=False)  # fmt: skip
        return latents[-1]

    assert torch.allclose(final_latents(zero, 1.0), final_latents(zero, 0.0), atol=1e-4)
    assert not torch.allclose(final_latents(tokens, 1.0), final_latents(tokens, 0.0), atol=1e-3)


# --- the edit mask ---------------------------------------------------------------------------------------------
def test_edit_mask_keeps_bs_clean_latent_outside_the_mask_and_redraws_inside(
    di, backbone, tokens, images, monkeypatch
):
    """Outside the mask the last step lands on B's clean latent exactly; the mask is where the
    DIFF tokens change the UNet's prediction most, so a higher threshold keeps more of B."""
    config = fast_config(sampling_mode="inversion", sampling_steps=10, strength=0.6, guidance_scale=4.0)
    b_latent = backbone.encode_images([di._working_image(images["b"], config)])

    def kept_fraction(threshold: float) -> float:
        with decoded_latents(backbone, monkeypatch) as latents:
            di.apply(tokens, images["b"], prompt=PROMPT_B, config=config.replace(edit_mask=threshold), progress=False)
        same = (latents[-1] - b_latent).abs().amax(dim=1) < 1e-5  # (1, h, w): positions equal to B's in every channel
        return same.float().mean().item()

    unmasked, loose, tight = kept_fraction(0.0), kept_fraction(0.5), kept_fraction(0.9)
    assert unmasked == 0.0  # off: B′ is redrawn everywhere
    assert 0.0 < loose <= tight < 1.0  # some of B kept, more at a higher threshold, never all


def test_edit_mask_on_the_null_edit_gives_b_back_and_doubles_only_the_inversion_batch(di, backbone, tokens, images,
                                                                                       monkeypatch):  # fmt: skip
    config = fast_config(sampling_mode="inversion", sampling_steps=10, strength=0.4, guidance_scale=4.0, edit_mask=0.5)
    zero = dataclasses.replace(tokens, embeddings=torch.zeros_like(tokens.embeddings))
    b_latent = backbone.encode_images([di._working_image(images["b"], config)])
    with decoded_latents(backbone, monkeypatch) as latents:
        di.apply(zero, images["b"], prompt=PROMPT_B, config=config, progress=False)
    assert torch.equal(latents[-1], b_latent)  # no difference, no mask: every step back on B's path
    with unet_calls(backbone) as calls:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config, progress=False)
    assert [states.shape[0] for _, states in calls] == [2] * 8  # 4 up beside {prompt_B, D̃}, 4 down guided


# --- direct inversion ------------------------------------------------------------------------------------------
def test_direct_inversion_gives_b_back_on_the_null_edit_at_any_guidance(di, backbone, tokens, images, monkeypatch):
    """Without it, guidance 4 drifts the reconstruction away from B's latent; with it, the drift
    is taken out at every step and B′ lands on B's latent. With D̃ it still changes B′, and the
    denoising runs the reconstruction beside it."""
    config = fast_config(sampling_mode="inversion", sampling_steps=10, strength=0.6, guidance_scale=4.0)
    zero = dataclasses.replace(tokens, embeddings=torch.zeros_like(tokens.embeddings))
    b_latent = backbone.encode_images([di._working_image(images["b"], config)])

    def final_latent(drawn_tokens, direct: bool) -> torch.Tensor:
        with decoded_latents(backbone, monkeypatch) as latents:
            di.apply(drawn_tokens, images["b"], prompt=PROMPT_B, config=config.replace(direct_inversion=direct),
                     progress=False)  # fmt: skip
        return latents[-1]

    drift = (final_latent(zero, False) - b_latent).abs().max().item()  # what it removes
    corrected = (final_latent(zero, True) - b_latent).abs().max().item()  # float rounding of batched rows
    assert drift > 1e-2 and corrected < 1e-4
    assert not torch.allclose(final_latent(tokens, True), b_latent, atol=1e-3)
    with unet_calls(backbone) as calls:
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=config.replace(direct_inversion=True), progress=False)
    assert [states.shape[0] for _, states in calls] == [1] * 6 + [4] * 6  # 6 up, 6 down: (source, B′) × guidance


@pytest.mark.parametrize("changes", [dict(direct_inversion=True), dict(edit_mask=0.3)])
def test_drawing_a_plain_prompt_refuses_what_would_give_b_back(di, images, changes):
    config = fast_config(sampling_mode="inversion", sampling_steps=10, strength=0.6, **changes)
    with pytest.raises(DiffinvError, match="give B back unchanged"):
        di.draw(PROMPT_B, images["b"], config, progress=False)


# --- candidates ---------------------------------------------------------------------------------------------
def test_candidates_keep_the_argmax_of_the_score(di, tokens, images, monkeypatch):
    seen = []

    def scores(reference, b, candidates, config):
        seen.append((reference, [pixels(c) for c in candidates]))
        return torch.tensor([0.1, 0.9, 0.3])

    monkeypatch.setattr(di, "candidate_scores", scores)
    reference = (images["a"], images["a_prime"])
    config = fast_config(candidates=3)
    best = di.apply(tokens, images["b"], seed=5, prompt=PROMPT_B, config=config, progress=False, reference=reference)
    singles = [
        pixels(di.apply(tokens, images["b"], seed=seed, prompt=PROMPT_B, config=fast_config(), progress=False))
        for seed in (5, 6, 7)
    ]
    assert len(seen) == 1 and seen[0][0] is reference
    assert all(np.array_equal(drawn, single) for drawn, single in zip(seen[0][1], singles)), "seeds seed … seed+k−1"
    assert np.array_equal(pixels(best), singles[1])


def test_one_candidate_is_todays_draw_and_scores_nothing(di, tokens, images, monkeypatch):
    today = di.apply(tokens, images["b"], seed=3, prompt=PROMPT_B, config=fast_config(), progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("one candidate needs no score")

    monkeypatch.setattr(di, "candidate_scores", refuse)
    again = di.apply(
        tokens,
        images["b"],
        seed=3,
        prompt=PROMPT_B,
        config=fast_config(candidates=1),
        progress=False,
        reference=(images["a"], images["a_prime"]),
    )
    assert np.array_equal(pixels(today), pixels(again))


def test_candidate_score_is_the_clip_direction_against_a_to_a_prime(di, images):
    """A = B and A′ = a changed B: a candidate equal to B scores 0 (no change), one equal to
    that change scores 1, any other less."""
    config = fast_config()
    b = images["b"]
    changed = shape_image(b.size, "blue", "square", seed=3)
    candidates = [di._working_image(image, config) for image in (b, changed, shape_image(b.size, "green", seed=4))]
    scores = di.candidate_scores((b, changed), candidates[0], candidates, config)
    assert scores.shape == (3,)
    assert scores[0].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[1].item() == pytest.approx(1.0, abs=1e-5)
    assert scores[2].item() < 1 - 1e-3


def test_candidates_without_a_and_a_prime_is_a_clear_error(di, tokens, images):
    with pytest.raises(DiffinvError, match=r"reference=\(A, A′\)"):
        di.apply(tokens, images["b"], prompt=PROMPT_B, config=fast_config(candidates=2), progress=False)
    with pytest.raises(DiffinvError, match=r"reference=\(A, A′\)"):
        di.draw(PROMPT_B, images["b"], fast_config(candidates=2), progress=False)


# --- flags and bench variants -------------------------------------------------------------------------------
def test_analogy_flags_reach_the_config_that_draws(capsys, tmp_path, image_files, model_args, monkeypatch):
    drawn_with = []
    real_sample = DifferenceInversion._sample

    def spy(self, text_states, b, config, *args, **kwargs):
        drawn_with.append(config)
        return real_sample(self, text_states, b, config, *args, **kwargs)

    monkeypatch.setattr(DifferenceInversion, "_sample", spy)
    output = tmp_path / "b_prime.png"
    argv = ["analogy", image_files["a"], image_files["a_prime"], image_files["b"], "-o", output]
    argv += ["--steps", "1", "--prompt-source", "caption", "--caption-a", CAPTION_A, "--caption-a-prime"]
    argv += [CAPTION_A_PRIME, "--prompt", PROMPT_B, "--sampling-steps", "4", "--strength", "0.5"]
    argv += ["--mode", "inversion", "--edit-strength", "0.5", "--negative-diff", *model_args]
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    assert len(drawn_with) == 1
    config = drawn_with[0]
    assert (config.sampling_mode, config.edit_strength, config.negative_diff) == ("inversion", 0.5, True)
    assert DiffTokens.load(output.with_suffix(".safetensors")).config == config


def test_apply_refuses_candidates_before_loading_a_model(capsys, tmp_path, fitted_tokens, image_files, model_args):
    fitted_tokens.save(tmp_path / "t.safetensors")
    argv = ["apply", tmp_path / "t.safetensors", image_files["b"], "-o", tmp_path / "out", "--candidates", "2"]
    code, _, err = run_cli(capsys, [*argv, *model_args])
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--candidates 2" in err and "analogy" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, [*argv[:-2], "--candidates", "0", *model_args])
    assert code == 2 and "candidates must be an integer ≥ 1" in err


def test_apply_draws_one_b_prime_when_the_token_file_asks_for_candidates(
    capsys, tmp_path, fitted_tokens, image_files, model_args, tiny_model_dir
):
    tokens = dataclasses.replace(
        fitted_tokens, model_id=tiny_model_dir[0], config=fitted_tokens.config.replace(candidates=3)
    )
    tokens.save(tmp_path / "t.safetensors")
    argv = ["apply", tmp_path / "t.safetensors", image_files["b"], "-o", tmp_path / "out", "--prompt", PROMPT_B]
    code, _, err = run_cli(capsys, [*argv, "--sampling-steps", "2", *model_args])
    assert code == 0, err
    assert "candidates = 3" in err and "candidates = 1" in err
    assert Image.open(tmp_path / "out" / "b.png").mode == "RGB"


def test_bench_variants_and_preset():
    assert parse_method("edit-strength=1.5").changes == {"edit_strength": 1.5}
    assert parse_method("edit-strength=0.5").changes == {"edit_strength": 0.5}
    assert parse_method("negative-diff").changes == {"negative_diff": True}
    assert parse_method("diff-guidance").changes == {"diff_guidance": True}
    assert parse_method("edit-mask").changes == {"sampling_mode": "inversion", "edit_mask": 0.3}
    assert parse_method("inversion").changes == {"sampling_mode": "inversion"}
    assert parse_method("candidates=4").changes == {"candidates": 4}
    methods = expand_methods(["keep-b"])
    assert [m.spec for m in methods] == METHOD_SETS["keep-b"]
    for method in methods:
        method.config(InversionConfig())  # every variant is a valid config
