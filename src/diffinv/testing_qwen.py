"""A tiny random Qwen-Image-Edit-Plus pipeline of the real classes, built in code (as `testing` does
for Stable Diffusion): nothing is downloaded.

    pipe = tiny_qwen_edit_pipeline()
    image = pipe(image=[a, a_prime, b], prompt="…", height=32, width=32, num_inference_steps=2).images[0]

The components: a 2-layer `QwenImageTransformer2DModel` (3 heads of 16), an `AutoencoderKLQwenImage`
with 4 latent channels (×4 spatial), a 2-layer 16-wide `Qwen2_5_VLForConditionalGeneration` with a
2-block vision tower, a byte-level `Qwen2Tokenizer` (256 bytes plus the chat and vision tokens, no
merges), `Qwen2VLProcessor` with the PIL image processor, and `FlowMatchEulerDiscreteScheduler`.

`QwenImageEditPlusPipeline` sizes every input image to fixed areas, 384² for Qwen2.5-VL and 1024²
for the VAE, which a tiny model on a CPU cannot afford (the transformer would attend over some
50,000 tokens). The pipeline built here is of a subclass whose only change is that its calls run
within `small_qwen_inputs()`, which cuts both areas to 32².
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from .word_tokenizer import _bytes_to_unicode

# The tokens Qwen2.5-VL's chat template and the pipeline's prompt use, after the 256 byte tokens.
PAD = "<|endoftext|>"
CHAT_AND_VISION = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
WIDTH = 16  # the text and vision towers' width, and the transformer's text-conditioning width


def tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level `Qwen2Tokenizer`: each of the 256 bytes one token (no merges, so any text
    tokenizes byte by byte), then <|endoftext|> (padding) and the chat and vision tokens."""
    vocab = {character: i for i, character in enumerate(_bytes_to_unicode().values())}
    for token in (PAD, *CHAT_AND_VISION):
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=list(CHAT_AND_VISION))


def tiny_qwen_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    """Qwen2-VL's processor: the PIL image processor (patches of 14, merged 2 × 2) and `tokenizer`, no
    video processor. Its video processor needs torchvision, which this project does not depend on, and
    without which transformers cannot run the processor's argument class check: the processor is built
    with that check skipped (the pipeline gives it images only)."""
    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, argument: None):
        return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer, video_processor=None)


def tiny_qwen_text_encoder(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """A 2-layer, 16-wide Qwen2.5-VL whose vocabulary and vision token ids are `tokenizer`'s."""
    ids = tokenizer.convert_tokens_to_ids
    text_config = dict(
        hidden_size=WIDTH,
        intermediate_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        # multimodal rotary sections (time, height, width) summing to half a head's width
        rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        rope_theta=1_000_000.0,
        bos_token_id=None,
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids(PAD),
    )
    vision_config = dict(depth=2, hidden_size=WIDTH, intermediate_size=WIDTH, num_heads=2, out_hidden_size=WIDTH)
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vision_token_id=ids("<|vision_pad|>"),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)


class SmallInputsQwenImageEditPlusPipeline(QwenImageEditPlusPipeline):
    """`QwenImageEditPlusPipeline` whose calls size their input images to an area of 32² (`small_qwen_inputs`)."""

    def __call__(self, *args, **kwargs):
        with small_qwen_inputs():
            return super().__call__(*args, **kwargs)


def tiny_qwen_edit_pipeline(seed: int = 0) -> QwenImageEditPlusPipeline:
    """A random Qwen-Image-Edit-Plus pipeline (see the module docstring), the same for the same `seed`,
    its inputs sized to 32² (`SmallInputsQwenImageEditPlusPipeline`). B′'s sides are multiples of 8
    (VAE ×4, then 2 × 2 patches); give `height` and `width`, or it draws at the pipeline's 1024²."""
    tokenizer = tiny_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # 4 latent channels × a 2 × 2 patch
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=WIDTH,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    latent_channels = 4
    vae = AutoencoderKLQwenImage(
        base_dim=6 * latent_channels,
        z_dim=latent_channels,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * latent_channels,
        latents_std=[1.0] * latent_channels,
    )
    text_encoder = tiny_qwen_text_encoder(tokenizer)
    return SmallInputsQwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        processor=tiny_qwen_processor(tokenizer),
        transformer=transformer.eval(),
    )


@contextmanager
def small_qwen_inputs(side: int = 32) -> Iterator[None]:
    """Within it, `QwenImageEditPlusPipeline` sizes its input images to an area of `side`² rather than
    its fixed 384² (what Qwen2.5-VL sees) and 1024² (what the VAE encodes). B′'s size stays the
    caller's (`height`, `width`)."""
    module = pipeline_qwenimage_edit_plus
    with (
        mock.patch.object(module, "CONDITION_IMAGE_SIZE", side * side),
        mock.patch.object(module, "VAE_IMAGE_SIZE", side * side),
    ):
        yield
