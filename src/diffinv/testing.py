"""Tiny random Stable Diffusion components of the real classes, built in code.

For tests and CPU benchmarks: nothing is downloaded. The CLIP's text tower is a copy of the
text encoder, as for real Stable Diffusion models and their matching CLIP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    VisualClozePipeline,
)
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from .backbones.sd import StableDiffusionBackbone
from .backbones.sdxl import StableDiffusionXLBackbone
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


def tiny_unet(sample_size: int, **config) -> UNet2DConditionModel:
    """A random 2-level UNet (32 and 64 channels, one layer per block, 4 latent channels in and
    out) on `sample_size`² latents; `config` gives the blocks, the cross-attention width and the rest."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        **config,
    )


def tiny_pipeline(
    prediction_type: str = "epsilon", seed: int = 0, width: int = 32, sample_size: int = 16
) -> StableDiffusionPipeline:
    """A random SD pipeline: 32-wide text encoder, 2-level UNet on `sample_size`² latents, VAE ×2."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(WORDS)
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer, width))
    unet = tiny_unet(
        sample_size,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width,
        attention_head_dim=8,
    )
    vae = tiny_vae(sample_size)
    scheduler = DDIMScheduler(
        prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    return _assembled(StableDiffusionPipeline, vae, text_encoder, tokenizer, unet, scheduler)


def _assembled(pipeline_class, vae, text_encoder, tokenizer, unet, scheduler):
    """A `pipeline_class` (Stable Diffusion 1.x-style) of these modules, without a safety checker."""
    return pipeline_class(
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


def _tiny_sibling(sd_pipe: StableDiffusionPipeline, pipeline_class, in_channels: int, seed: int):
    """A `pipeline_class` of `sd_pipe`'s tiny VAE, text encoder and tokenizer, a DDIM scheduler on
    its schedule, and a random UNet of its UNet's configuration taking `in_channels` channels."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config({**sd_pipe.unet.config, "in_channels": in_channels})
    scheduler = DDIMScheduler.from_config(sd_pipe.scheduler.config)
    return _assembled(pipeline_class, sd_pipe.vae, sd_pipe.text_encoder, sd_pipe.tokenizer, unet, scheduler)


def tiny_instruct_pix2pix(sd_pipe: StableDiffusionPipeline) -> StableDiffusionInstructPix2PixPipeline:
    """`sd_pipe`'s tiny VAE, text encoder and tokenizer with a random UNet that, like
    InstructPix2Pix's, takes the noisy latent and the image latent (8 channels)."""
    return _tiny_sibling(sd_pipe, StableDiffusionInstructPix2PixPipeline, in_channels=8, seed=1)


def tiny_inpainting(sd_pipe: StableDiffusionPipeline) -> StableDiffusionInpaintPipeline:
    """`sd_pipe`'s tiny VAE, text encoder and tokenizer with a random UNet that, like SD
    inpainting's, takes the noisy latent, the mask and the masked image's latent (9 channels)."""
    return _tiny_sibling(sd_pipe, StableDiffusionInpaintPipeline, in_channels=9, seed=2)


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
    unet = tiny_unet(
        sample_size,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=sum(widths),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + widths[1],
        transformer_layers_per_block=(1, 2),
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


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """A `T5TokenizerFast` over `WORDS` built in code, a Unigram model as T5's: "<pad>" 0, "</s>" 1
    (appended to every text), "<unk>" 2, the word boundary "▁", then one piece per word ("▁red");
    other words become "▁" and "<unk>"s. It saves and loads as T5's tokenizer does."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + word, -1.0) for word in dict.fromkeys(WORDS)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def tiny_flux_components(in_channels: int, seed: int = 0) -> dict:
    """The modules of a random FLUX.1 pipeline of the real classes: a CLIP text encoder (32 wide,
    its pooled output FLUX's pooled projection), a T5 encoder (32 wide) with `tiny_t5_tokenizer`, a
    VAE ×2 with 4 latent channels, a one-double-block, one-single-block `FluxTransformer2DModel`
    with distilled guidance taking `in_channels` packed channels (16 = 2 × 2 patches of 4 latent
    channels; FLUX.1 Fill's, VisualCloze's: 48, latent + masked image + mask) and returning 16, and
    the flow-matching Euler scheduler."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(WORDS)
    tokenizer_2 = tiny_t5_tokenizer()
    t5_config = T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, pad_token_id=0
    )
    t5_config.dropout_rate = 0.0  # built modules start in training mode; no dropout, as loaded ones
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1,
        scaling_factor=1.5,
    )
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=CLIPTextModel(tiny_text_config(tokenizer, 32)).eval(),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(t5_config).eval(),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def tiny_kontext_pipeline(seed: int = 0) -> FluxKontextPipeline:
    """A random FLUX.1 Kontext pipeline (`tiny_flux_components`, 16 channels in: the noisy latent;
    the input image's latent joins as more tokens, not channels)."""
    return FluxKontextPipeline(**tiny_flux_components(in_channels=16, seed=seed))


def tiny_visualcloze_pipeline(resolution: int = 32, seed: int = 0) -> VisualClozePipeline:
    """A random VisualCloze pipeline (`tiny_flux_components` with FLUX.1 Fill's 48 channels in) that
    draws each grid image at an area of about `resolution`²."""
    return VisualClozePipeline(**tiny_flux_components(in_channels=48, seed=seed), resolution=resolution)


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


@contextmanager
def unet_batches(unet) -> Iterator[list[int]]:
    """Yields a list that receives the batch size of every UNet forward call."""
    batches: list[int] = []
    handle = unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        yield batches
    finally:
        handle.remove()
