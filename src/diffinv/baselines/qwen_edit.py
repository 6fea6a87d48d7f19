"""Qwen-Image-Edit-2509 (Qwen team, Alibaba, September 2025) as a baseline: one of today's
multi-image instruction editors, shown A, A′ and B and asked in fixed words to carry the change.

B′ = `QwenImageEditPlusPipeline(image=[A, A′, B], prompt=INSTRUCTION, …)`, then centre-cropped to
B's aspect ratio and resized (bicubic) to B's size (`images.fit_to`). The pipeline labels its
images in the text it gives Qwen2.5-VL ("Picture 1: <image>Picture 2: <image>Picture 3: <image>",
then the instruction), so the instruction names them that way:

    "Apply the change from Picture 1 to Picture 2 to Picture 3."

    qwen = QwenEdit.from_pretrained()   # Qwen/Qwen-Image-Edit-2509
    b_prime = qwen.analogy(a, a_prime, b, seed=0)

Published settings (the model card of Qwen/Qwen-Image-Edit-2509, its diffusers example):
`QwenImageEditPlusPipeline` in bfloat16, true classifier-free guidance `true_cfg_scale` 4.0
against the negative prompt " " (a single space), 40 steps, `guidance_scale` 1.0 (ignored by the
pipeline: the transformer is not guidance-distilled), one image per prompt, the generator
`torch.manual_seed(0)`. The pipeline itself sizes each input to an area of 384² for Qwen2.5-VL and
1024² for the VAE (aspect kept), and draws B′ at an area of 1024² with the aspect ratio of its last
input image — here B.

Loading needs torchvision (transformers builds Qwen2-VL's processor with it) and a model whose
model_index.json names `QwenImageEditPlusPipeline`; both are checked, in one line, before any
weight loads. The weights: a 20B MMDiT and Qwen2.5-VL-7B, about 57 GB in bfloat16.

Deviations from the published use:
- The task: the model card edits one to three images with a prompt written for them; here every
  triplet gets the same instruction (`instruction`, changeable), and A, A′ and B in that order.
- dtype: the project's default (bfloat16 on CUDA, as published; float32 on the CPU).
- Seed: a CPU generator seeded with `seed` (the model card's `torch.manual_seed(0)` is one too).
- `guidance_scale` is not passed (the pipeline ignores it for this model and warns when given).
- Output: B′ is cropped and resized to B's size, as above; `resolution` (None: the pipeline's
  1024²) can draw it at a smaller area, which the published use does not do.
- Cost: `Cost` counts the transformer's calls (two per step with true CFG, one latent each) where
  the other baselines count UNet calls; each one runs a 20B MMDiT over the tokens of B′ and of the
  three inputs' latents, far more work than an SD 1.5 UNet call.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline, QwenImageEditPlusPipeline
from PIL import Image

from ..checks import check_resolution, hub_offline
from ..errors import DiffinvError
from ..images import ImageInput, as_rgb, fit_to, working_size
from ..loading import load_or_explain
from .base import (
    Cost,
    check_non_negative,
    check_positive_ints,
    check_resolution_option,
    check_text,
    cpu_generator,
    require,
)
from .own_model import OwnModelBaseline

DEFAULT_MODEL = "Qwen/Qwen-Image-Edit-2509"
INSTRUCTION = "Apply the change from Picture 1 to Picture 2 to Picture 3."
PIPELINE_CLASS_NAME = "QwenImageEditPlusPipeline"  # what a model's model_index.json must name
PUBLISHED_SIDE = 1024  # the pipeline draws B′ at an area of 1024² unless told a size


@dataclass(frozen=True)
class QwenEditConfig:
    """Qwen-Image-Edit-2509's published settings, and the words it is told.

    steps: denoising steps. 40.
    true_cfg_scale: true classifier-free guidance against `negative_prompt` (≤ 1: none, one
        transformer call per step). 4.0.
    negative_prompt: " " (a single space).
    instruction: the words given with [A, A′, B] (see the module docstring).
    resolution: the side of the square whose area B′ is drawn at, aspect ratio B's (None: the
        pipeline's 1024²).
    """

    steps: int = 40
    true_cfg_scale: float = 4.0
    negative_prompt: str = " "
    instruction: str = INSTRUCTION
    resolution: int | None = None

    def __post_init__(self):
        check_positive_ints(self, "steps")
        check_non_negative(self, "true_cfg_scale")
        require(
            isinstance(self.negative_prompt, str),
            f"negative_prompt must be a text (' ' as published), got {self.negative_prompt!r}",
        )
        check_text(self.instruction, "instruction")
        check_resolution_option(self.resolution)
        check_resolution(self.resolution, PUBLISHED_SIDE)

    @property
    def guided(self) -> bool:
        """Whether each step runs the transformer twice, with the instruction and with the negative prompt."""
        return self.true_cfg_scale > 1

    def cost(self) -> Cost:
        return Cost(
            sample_calls=self.steps * (2 if self.guided else 1),
            sample_batch=1,
            other=(
                "each call a 20B MMDiT over B′'s and the three inputs' latent tokens rather than a UNet; "
                f"Qwen2.5-VL-7B reads the three images and the text {'twice' if self.guided else 'once'}"
            ),
        )


def check_qwen_edit_model(model: str, offline: bool) -> None:
    """Refuse, in one line and before any weights load, a model whose `model_index.json` names another
    pipeline than `QwenImageEditPlusPipeline` (e.g. the single-image Qwen-Image-Edit, or Stable Diffusion)."""
    config = load_or_explain(model, offline, lambda: DiffusionPipeline.load_config(model, local_files_only=offline))
    found = config.get("_class_name")
    if found != PIPELINE_CLASS_NAME:
        raise DiffinvError(
            f"qwen-edit needs a Qwen-Image-Edit-Plus model (model_index.json naming {PIPELINE_CLASS_NAME}, "
            f"e.g. {DEFAULT_MODEL}); {model} is a {found or 'model of no named pipeline'}"
        )


def check_torchvision() -> None:
    """transformers loads Qwen2-VL's processor, part of the pipeline, only with torchvision installed."""
    if importlib.util.find_spec("torchvision") is None:
        raise DiffinvError(
            "qwen-edit needs torchvision (transformers loads Qwen2-VL's processor with it); "
            "install the torchvision build that matches your torch"
        )


class QwenEdit(OwnModelBaseline):
    """Qwen-Image-Edit-2509 shown [A, A′, B] and told to carry the change (module docstring).

    Args:
        pipe: a `QwenImageEditPlusPipeline`; it is used as it is (its progress bar is set per call).
        config: settings (default `QwenEditConfig()`, the published ones).
    """

    name = "Qwen-Image-Edit"
    uses_text = False  # the same words for every triplet: the change itself is only shown
    pipeline_class = QwenImageEditPlusPipeline
    default_model = DEFAULT_MODEL
    config_class = QwenEditConfig
    model_kind = "a Qwen-Image-Edit-Plus model"
    model_card_dtype = None  # the project's default: bfloat16 on CUDA (as published), float32 on the CPU

    def __init__(self, pipe: QwenImageEditPlusPipeline, config: QwenEditConfig | None = None):
        require(
            isinstance(pipe, QwenImageEditPlusPipeline),
            f"qwen-edit needs a {PIPELINE_CLASS_NAME}, got a {type(pipe).__name__}",
        )
        self.pipe = pipe
        self.config = config or QwenEditConfig()

    @classmethod
    def check_model(cls, model: str | None = None, offline: bool | None = None) -> None:
        """Check, without loading weights, that torchvision is installed and that `model` (None: the
        default) is a Qwen-Image-Edit-Plus one (its model_index.json): the bench calls it before any
        model loads, so that neither is found out after minutes of loading. offline: as `from_pretrained`."""
        check_torchvision()
        check_qwen_edit_model(
            cls.default_model if model is None else model, hub_offline() if offline is None else offline
        )

    def output_size(self, b: Image.Image) -> tuple[int, int] | None:
        """(width, height) B′ is drawn at: B's aspect ratio at an area of about `resolution`², sides
        multiples of the pipeline's (VAE factor × 2 × 2 patches); None: the pipeline's own choice."""
        if self.config.resolution is None:
            return None
        return working_size(b.width, b.height, self.config.resolution, 2 * self.pipe.vae_scale_factor)

    @torch.no_grad()
    def analogy(
        self, a: ImageInput, a_prime: ImageInput, b: ImageInput, *, seed: int = 0, progress: bool = True
    ) -> Image.Image:
        """B′ for A : A′ :: B : B′ (PIL images or paths): an RGB image of B's size."""
        generator = cpu_generator(seed)  # checks the seed before any image is read
        a, a_prime, b = (as_rgb(image) for image in (a, a_prime, b))
        size = self.output_size(b)
        width, height = size if size is not None else (None, None)
        config = self.config
        self.pipe.set_progress_bar_config(disable=not progress, leave=False, desc=self.name)
        drawn = self.pipe(
            image=[a, a_prime, b],  # B last: the pipeline takes B′'s aspect ratio from the last image
            prompt=config.instruction,
            negative_prompt=config.negative_prompt if config.guided else None,  # none: no warning about it
            true_cfg_scale=config.true_cfg_scale,
            num_inference_steps=config.steps,
            height=height,
            width=width,
            generator=generator,
        ).images[0]
        return fit_to(drawn, b.size)
