"""The Stable Diffusion interface: loss targets per prediction type, the forward process,
latents, prompt encoding, sizes, and freezing."""

import pytest
import torch

from diffinv.testing import tiny_backbone


@pytest.fixture(scope="module")
def v_backbone():
    return tiny_backbone("v_prediction")


def draws(backbone, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(3, 4, 8, 8, generator=generator)
    noise = torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 500, backbone.num_train_timesteps - 1])
    return latents, noise, timesteps


def by_hand(backbone, timesteps):
    alpha_bar = backbone.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def test_epsilon_target_is_the_noise(backbone):
    assert backbone.prediction_type == "epsilon"
    latents, noise, timesteps = draws(backbone)
    assert torch.equal(backbone.loss_target(latents, noise, timesteps), noise)


def test_v_prediction_target_by_hand(v_backbone):
    assert v_backbone.prediction_type == "v_prediction"
    latents, noise, timesteps = draws(v_backbone)
    signal, sigma = by_hand(v_backbone, timesteps)
    expected = signal * noise - sigma * latents
    target = v_backbone.loss_target(latents, noise, timesteps)
    assert torch.allclose(target, expected, atol=1e-6)
    assert not torch.allclose(target, noise, atol=1e-2), "v is not ε"


def test_sample_prediction_target_is_the_clean_latent():
    backbone = tiny_backbone("sample")
    latents, noise, timesteps = draws(backbone)
    assert torch.equal(backbone.loss_target(latents, noise, timesteps), latents)


def test_add_noise_is_the_forward_process(backbone):
    latents, noise, timesteps = draws(backbone)
    signal, sigma = by_hand(backbone, timesteps)
    assert torch.allclose(backbone.add_noise(latents, noise, timesteps), signal * latents + sigma * noise, atol=1e-6)


def test_noising_follows_the_model_schedule_not_the_sampler(backbone):
    # The tiny pipeline ships DDIM; training-time noising uses the DDPM schedule from its config.
    scheduler = backbone.noise_scheduler
    assert type(scheduler).__name__ == "DDPMScheduler"
    assert scheduler.config.beta_schedule == backbone.pipe.scheduler.config.beta_schedule
    assert scheduler.config.prediction_type == backbone.pipe.scheduler.config.prediction_type


def test_modules_are_frozen(backbone):
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_sizes(backbone):
    # VAE ×2 and a 2-level UNet would allow multiples of 4, but diffusers' text-to-image pipeline
    # requires multiples of 8.
    assert backbone.size_multiple == 8
    assert backbone.native_resolution == 32
    assert backbone.token_width == 32
    assert backbone.sequence_length == 77
    assert backbone.num_train_timesteps == 1000


def test_encode_images_gives_scaled_deterministic_latents(backbone, images):
    latents = backbone.encode_images([images["a"], images["a_prime"]])
    assert latents.shape == (2, 4, 16, 16)
    assert torch.equal(latents, backbone.encode_images([images["a"], images["a_prime"]])), (
        "posterior mean, not a sample"
    )
    unscaled = backbone.vae.encode(backbone.to_pixels([images["a"]])).latent_dist.mean
    assert torch.allclose(latents[:1], unscaled * backbone.vae.config.scaling_factor, atol=1e-6)


def test_encode_prompt_with_zero_slots_differs_from_plain_prompt_only_after_the_prompt(backbone):
    ids, mask = backbone.slot_ids(["a red circle"], 2)
    states = backbone.encode_prompt(ids, mask, torch.zeros(2, backbone.token_width))
    plain = backbone.encode_plain(["a red circle"])
    assert states.shape == plain.shape == (1, backbone.sequence_length, backbone.token_width)
    first_slot = mask[0].nonzero()[0].item()
    assert torch.allclose(states[0, :first_slot], plain[0, :first_slot], atol=1e-6)
    assert not torch.allclose(states[0, first_slot:], plain[0, first_slot:])


@pytest.fixture(scope="module")
def masked_backbone():
    """A tiny backbone whose text encoder asks for an attention mask (`use_attention_mask`, as some
    SD-family text encoders do); its tokenizer pads with <eos>, as SD's CLIP tokenizers do."""
    masked = tiny_backbone()
    masked.text_encoder.config.use_attention_mask = True
    assert masked.tokenizer.pad_token_id == masked.tokenizer.eos_token_id
    return masked


def test_attention_mask_keeps_the_eos_where_pad_is_eos(masked_backbone):
    """With real words at the slots, encode_prompt must give exactly what diffusers' own
    StableDiffusionPipeline.encode_prompt gives for the written-out prompt (tokenizer's mask)."""
    backbone = masked_backbone
    prompt, extra = "a photo of a red circle", "on the sea"
    words = backbone.tokenizer(extra, add_special_tokens=False).input_ids
    ids, slot_mask = backbone.slot_ids([prompt, ""], len(words))
    rows = backbone.vocabulary[words].detach()
    with torch.no_grad():
        states = backbone.encode_prompt(ids, slot_mask, rows)
        expected = torch.cat(
            [backbone.pipe.encode_prompt(text, backbone.device, 1, False)[0] for text in (f"{prompt} {extra}", extra)]
        )
        plain = backbone.encode_plain([f"{prompt} {extra}", extra])
    assert torch.allclose(states, expected, atol=1e-6)
    assert torch.allclose(plain, expected, atol=1e-6)
    # CLIP's attention is causal, so a mask that hides only the padding changes nothing up to
    # <eos>: the states there are those of the unmasked encoder (hiding <eos> would change its own).
    backbone.text_encoder.config.use_attention_mask = False
    try:
        with torch.no_grad():
            unmasked = backbone.encode_prompt(ids, slot_mask, rows)
    finally:
        backbone.text_encoder.config.use_attention_mask = True
    for row in range(2):
        eos = slot_mask[row].nonzero().max().item() + 1
        assert torch.allclose(states[row, : eos + 1], unmasked[row, : eos + 1], atol=1e-6)
