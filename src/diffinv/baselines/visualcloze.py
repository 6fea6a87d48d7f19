"""VisualCloze (Li et al., ICCV 2025; arXiv 2504.07960) as a visual-analogy baseline.

VisualCloze is a FLUX.1 Fill model fine-tuned for visual in-context learning: rows of example
images show a task, the last row is the query with its target left out, and the model infills the
missing image of the grid. An analogy is one example row and one query:

    image = [[A, A′],       the in-context example: the edit, shown
             [B, None]]     the query: B′ is to be drawn

with a task prompt in the model's template (`TASK_PROMPT`: [IMAGE1] an image, [IMAGE2] it edited)
and no content prompt (nothing said about B′). diffusers' `VisualClozePipeline` draws the grid at
the model's `resolution` (each image resized to an area of about resolution², 384² for the -384
model), crops the target, then upsamples it with SDEdit on the same model (FLUX.1 Fill with a
full mask, `upsampling_strength`). B′ is that upsampled target, resized to B's size.

    visualcloze = VisualCloze.from_pretrained()     # VisualCloze/VisualClozePipeline-384, bfloat16
    b_prime = visualcloze.analogy(a, a_prime, b, seed=0)

Published settings (the diffusers documentation of VisualCloze and the checkpoint's model card,
whose examples all use them; the authors' demo defaults to the same steps and upsampling noise):
- 30 flow-matching Euler steps, guidance 30 (FLUX's distilled guidance, an input of the
  transformer: one call per step), T5 prompts up to 512 tokens, bfloat16.
- upsampling_strength 0.4: the target redrawn from 40 % noise, so int-rounded 12 of 30 steps.
- The upsampled size: the documentation says the target is upsampled "by a factor of three" by
  default; its examples give the size explicitly. Here it is `upsampling_scale` (3) × the drawn
  target's size, rounded to multiples of 16 (the pipeline itself would fall back to 1024 × 1024
  whatever the aspect ratio).

Choices and deviations:
- The task prompt: VisualCloze's tasks are named in a fixed template ("In each row, a logical
  task is demonstrated to achieve [IMAGE2] … based on [IMAGE1] …"); ours names an edit without
  saying which, the same words for every triplet, so the edit is only shown.
- One in-context example (the paper's demos use one to three); the layout prompt ("a grid layout
  with 2 rows and 2 columns …") is the pipeline's own.
- `resolution`: None keeps the model's own (384 for -384); the -512 checkpoint needs 512, as the
  diffusers documentation passes `resolution=` when loading.
- The noise comes from a CPU generator seeded with `seed`; one B′ per triplet.
- B′ is returned at B's own pixel size (the upsampled target resized, bicubic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import VisualClozePipeline
from PIL import Image

from ..images import ImageInput, as_rgb
from .base import (
    Cost,
    check_guidance,
    check_positive,
    check_positive_ints,
    check_resolution_option,
    check_text,
    cpu_generator,
    number,
    require,
)
from .own_model import OwnModelBaseline, at_size_of

DEFAULT_MODEL = "VisualCloze/VisualClozePipeline-384"
TASK_PROMPT = (
    "In each row, a logical task is demonstrated to achieve [IMAGE2] the same image after one consistent edit "
    "based on [IMAGE1] an image."
)


@dataclass(frozen=True)
class VisualClozeConfig:
    """Hyperparameters of VisualCloze on one analogy (see the module docstring for sources).

    steps: flow-matching Euler steps of the grid's infilling (and of the upsampling's schedule). 30.
    guidance_scale: the distilled guidance the transformer is given. 30.
    upsampling_strength: the noise the drawn B′ is upsampled from, in [0, 1]; 0: no upsampling
        (B′ at the grid's resolution). 0.4.
    upsampling_scale: the upsampled B′'s sides over the drawn one's. 3.
    task_prompt: the task's words, the same for every triplet (`TASK_PROMPT`).
    resolution: each grid image's side of area in pixels (None: the model's own, 384 or 512).
    max_sequence_length: T5 tokens of the prompt. 512.
    """

    steps: int = 30
    guidance_scale: float = 30.0
    upsampling_strength: float = 0.4
    upsampling_scale: float = 3.0
    task_prompt: str = TASK_PROMPT
    resolution: int | None = None
    max_sequence_length: int = 512

    def __post_init__(self):
        check_positive_ints(self, "steps", "max_sequence_length")
        check_guidance(self.guidance_scale)
        require(
            number(self.upsampling_strength) and 0 <= self.upsampling_strength <= 1,
            f"upsampling_strength must lie in [0, 1], got {self.upsampling_strength!r}",
        )
        check_positive(self, "upsampling_scale")
        check_text(self.task_prompt, "VisualCloze's task prompt")
        check_resolution_option(self.resolution)

    @property
    def upsampling_steps(self) -> int:
        """The steps the upsampling runs: the last steps × strength of the schedule, as diffusers'
        FLUX img2img pipelines count them (0 without upsampling)."""
        if self.upsampling_strength == 0:
            return 0
        return self.steps - int(max(self.steps - self.steps * self.upsampling_strength, 0))

    def cost(self) -> Cost:
        """One transformer call per step on one latent (guidance is an input, not a second branch):
        the grid's steps, then the upsampling's."""
        return Cost(
            sample_calls=self.steps + self.upsampling_steps,
            sample_batch=1,
        )


def drawn_size(b_size: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) at which VisualCloze draws B′ for a B of `b_size`: B's aspect ratio, an area
    of about resolution², sides rounded down to multiples of `multiple` (as the pipeline's image
    processor sizes the query row)."""
    aspect = b_size[0] / b_size[1]
    height = int((resolution * resolution / aspect) ** 0.5)
    width = int(height * aspect)
    return max(width // multiple, 1) * multiple, max(height // multiple, 1) * multiple


class VisualCloze(OwnModelBaseline):
    """VisualCloze: B′ infilled into [A A′; B ·] by visual in-context learning, then upsampled.

    Args:
        pipe: a `VisualClozePipeline`; not changed (with `resolution` set, a pipeline of the same
            modules at that resolution is used).
        config: hyperparameters (default `VisualClozeConfig()`).
    """

    name = "VisualCloze"
    needs_text = None
    uses_text = False
    pipeline_class = VisualClozePipeline
    default_model = DEFAULT_MODEL
    config_class = VisualClozeConfig
    model_kind = "a VisualCloze model"

    def __init__(self, pipe: VisualClozePipeline, config: VisualClozeConfig | None = None):
        self.check_pipeline(pipe)
        self.config = config or VisualClozeConfig()
        resolution = self.config.resolution
        if resolution is not None and resolution != pipe.config.resolution:
            pipe = VisualClozePipeline(**pipe.components, resolution=resolution)
        self.pipe = pipe

    @property
    def multiple(self) -> int:
        """Image sides are multiples of this: the VAE's factor × FLUX's 2 × 2 latent patches."""
        return 2 * self.pipe.generation_pipe.vae_scale_factor

    def upsampled_size(self, b_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) B′ is upsampled to: `upsampling_scale` × its drawn size, sides multiples of
        `multiple` (16 for FLUX.1)."""
        width, height = drawn_size(b_size, self.pipe.config.resolution, self.multiple)
        scale, multiple = self.config.upsampling_scale, self.multiple
        return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))

    @torch.no_grad()
    def analogy(
        self, a: ImageInput, a_prime: ImageInput, b: ImageInput, *, seed: int = 0, progress: bool = True
    ) -> Image.Image:
        """B′ for A : A′ :: B : B′, an RGB image of B's size."""
        c = self.config
        generator = cpu_generator(seed)
        a, a_prime, b = as_rgb(a), as_rgb(a_prime), as_rgb(b)
        upsampling = {}
        if c.upsampling_strength > 0:
            width, height = self.upsampled_size(b.size)
            upsampling = dict(upsampling_width=width, upsampling_height=height)
        for stage in (self.pipe, self.pipe.generation_pipe, self.pipe.upsampling_pipe):  # each has its own bar
            stage.set_progress_bar_config(disable=not progress, leave=False, desc="VisualCloze")
        drawn = self.pipe(
            task_prompt=c.task_prompt,
            content_prompt=None,
            image=[[a, a_prime], [b, None]],
            num_inference_steps=c.steps,
            guidance_scale=c.guidance_scale,
            upsampling_strength=c.upsampling_strength,
            max_sequence_length=c.max_sequence_length,
            generator=generator,
            **upsampling,
        ).images[0][0]
        return at_size_of(drawn, b)
