"""The shapes world's networks, each a real diffusers or transformers class built from scratch at the
world's small sizes, their noise schedules, and the conversions of pictures and captions to what
they read. How each is trained: `shapes.loops`; in which order: `shapes.train`.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer

from ..word_tokenizer import word_tokenizer
from .world import RESOLUTION, vocabulary_words

TEXT_LENGTH = 32  # tokens: longest caption (16) + up to 14 DIFF tokens + <bos>/<eos>
WIDTH = 64  # text/token width = CLIP joint width, as in SD (token 768 = ViT-L joint 768)


def world_tokenizer() -> CLIPTokenizer:
    """A `CLIPTokenizer` with one token for every word of the world's captions and instructions."""
    return word_tokenizer(vocabulary_words(), max_length=TEXT_LENGTH)


def build_clip(tokenizer: CLIPTokenizer) -> CLIPModel:
    """Text and image towers of 3 layers at width 64; 4×4 patches of the 32-pixel pictures."""
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=WIDTH,
            intermediate_size=2 * WIDTH,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=TEXT_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=WIDTH,
            intermediate_size=2 * WIDTH,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=RESOLUTION,
            patch_size=4,
        ),
        projection_dim=WIDTH,
    )
    return CLIPModel(config)


def build_vae() -> AutoencoderKL:
    """32×32×3 → 8×8×4, as SD's VAE downsamples by 8 (here by 4, for pictures this small)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 48, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )


def build_unet(in_channels: int = 4, sample_size: int = RESOLUTION // 4) -> UNet2DConditionModel:
    """The world's denoiser: 4 input channels for text-to-image, 8 for the editor, 9 for inpainting."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(48, 96, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def widened_from(unet: UNet2DConditionModel, in_channels: int, sample_size: int) -> UNet2DConditionModel:
    """A copy of the text-to-image `unet` taking `in_channels` inputs: the first 4 input channels
    keep its weights, the added ones start at zero — so it starts as the text-to-image model,
    ignoring its new inputs (how InstructPix2Pix and SD's inpainting models were started)."""
    wide = build_unet(in_channels, sample_size)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat(
        [weight, weight.new_zeros(weight.shape[0], in_channels - 4, *weight.shape[2:])], 1
    )
    wide.load_state_dict(state)
    return wide


def training_scheduler() -> DDPMScheduler:
    """SD's noise schedule (scaled linear, 1000 steps), predicting v."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
    )


def sampling_scheduler() -> DDIMScheduler:
    """The scheduler saved with every pipeline of the world: DDIM on the training schedule."""
    return DDIMScheduler.from_config(
        training_scheduler().config, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"
    )


def to_pixels(array: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def encode_captions(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """(len(texts), TEXT_LENGTH, WIDTH) text states, the denoisers' conditioning."""
    states = []
    for i in range(0, len(texts), 256):
        ids = tokenizer(
            texts[i : i + 256], padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        states.append(text_encoder(ids).last_hidden_state)
    return torch.cat(states)


@torch.no_grad()
def encode_pictures(vae: AutoencoderKL, images: np.ndarray, scaled: bool = True) -> torch.Tensor:
    """VAE posterior means of (N, H, W, 3) uint8 pictures, × the scaling factor when `scaled`
    (the denoised latents) or not (InstructPix2Pix's image conditioning is the unscaled mode)."""
    pixels = to_pixels(images) * 2 - 1
    latents = torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    return latents * vae.config.scaling_factor if scaled else latents
