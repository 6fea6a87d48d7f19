"""Tiny random Stable Diffusion components of the real classes, built in code.

For tests and CPU benchmarks: nothing is downloaded. The CLIP's text tower is a copy of the
text encoder, as for real Stable Diffusion models and their matching CLIP.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from .backbone import StableDiffusionBackbone
from .backbone_xl import StableDiffusionXLBackbone
from .clip_space import ClipSpace
from .word_tokenizer import word_tokenizer

# The tiny models' whole-word vocabulary (any other text still tokenizes, byte by byte).
WORDS = (
    "a photo of an the image with on in and picture drawing small big large tiny red green blue yellow purple orange "
    "white black gray circle square triangle star heart cat dog house tree car sky sea snow rain sunny night day "
    "castle cabin old new smiling crying"
).split()


def tiny_text_config(tokenizer: CLIPTokenizer, width: int = 32, **changes) -> CLIPTextConfig:
    return CLIPTextConfig(
        **changes,
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_pipeline(
    prediction_type: str = "epsilon", seed: int = 0, width: int = 32, sample_size: int = 16
) -> StableDiffusionPipeline:
    """A random SD pipeline: 32-wide text encoder, 2-level UNet on `sample_size`² latents, VAE ×2."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(WORDS)
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer, width))
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = tiny_vae(sample_size)
    scheduler = DDIMScheduler(
        prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_vae(sample_size: int) -> AutoencoderKL:
    """A random 2-level VAE (latents ×2 smaller) for images of 2 × `sample_size` pixels."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=2 * sample_size,
    )


def tiny_xl_pipeline(
    prediction_type: str = "epsilon", seed: int = 0, widths: tuple[int, int] = (32, 48), sample_size: int = 16
) -> StableDiffusionXLPipeline:
    """A random SDXL pipeline of the real classes: text encoders d₁ = 32 (`CLIPTextModel`) and
    d₂ = 48 (`CLIPTextModelWithProjection`, pooled 48 wide) — unequal so that a mixed-up split
    fails — a 2-level UNet with SDXL's "text_time" added conditioning on `sample_size`² latents,
    VAE ×2, Euler scheduler as SDXL base ships. Both tokenizers share the vocabulary; the second
    pads with "!" as SDXL's does."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(WORDS)
    tokenizer_2 = word_tokenizer(WORDS)
    tokenizer_2.pad_token = "!"
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer, widths[0]))
    text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(tokenizer_2, widths[1], projection_dim=widths[1]))
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=sum(widths),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + widths[1],
        transformer_layers_per_block=(1, 2),
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        prediction_type=prediction_type,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(sample_size),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def tiny_clip_for(pipe: StableDiffusionPipeline | StableDiffusionXLPipeline, seed: int = 0) -> ClipSpace:
    """A random CLIPModel whose text tower is a copy of the pipeline's CLIP-matched text encoder:
    `pipe.text_encoder` (projection as wide as its tokens), or for SDXL `pipe.text_encoder_2` with
    its projection, as ViT-bigG's text tower is SDXL's encoder 2."""
    torch.manual_seed(seed)
    xl = isinstance(pipe, StableDiffusionXLPipeline)
    encoder = pipe.text_encoder_2 if xl else pipe.text_encoder
    text_config = encoder.config
    config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=text_config.hidden_size,
    )
    model = CLIPModel(config)
    model.text_model.load_state_dict(encoder.text_model.state_dict() if xl else encoder.state_dict())
    if xl:
        model.text_projection.load_state_dict(encoder.text_projection.state_dict())
    return ClipSpace(model, pipe.tokenizer)


def tiny_backbone(prediction_type: str = "epsilon", seed: int = 0) -> StableDiffusionBackbone:
    return StableDiffusionBackbone(tiny_pipeline(prediction_type, seed), model_id=f"tiny-{prediction_type}")


def tiny_xl_backbone(prediction_type: str = "epsilon", seed: int = 0) -> StableDiffusionXLBackbone:
    return StableDiffusionXLBackbone(tiny_xl_pipeline(prediction_type, seed), model_id=f"tiny-xl-{prediction_type}")
