"""FLUX.1 Kontext [dev] (Black Forest Labs, 2025; arXiv 2506.15742) as a visual-analogy baseline.

Kontext edits one input image as an instruction in words says. It takes a single image, so the
triplet is shown to it as one picture, a 2 × 2 grid with its fourth cell empty:

    +----+----+
    | A  | A′ |
    +----+----+
    | B  |    |   the empty cell is plain white
    +----+----+

and the instruction asks it to fill the empty cell with B after the edit that turns A into A′
(`INSTRUCTION`, the same words for every triplet: the edit is shown, never told). Kontext's
output has the grid's size and layout; B′ is its bottom-right cell (exactly the box of the empty
cell), resized to B's size.

    kontext = Kontext.from_pretrained()          # black-forest-labs/FLUX.1-Kontext-dev, bfloat16
    b_prime = kontext.analogy(a, a_prime, b, seed=0)

Published settings (diffusers' `FluxKontextPipeline` and the checkpoint's model card):
- 28 flow-matching Euler steps (the pipeline's default), guidance 2.5 (the model card's and the
  pipeline's example; FLUX.1 [dev] models take guidance as an input of the transformer, a
  distilled guidance, so each step is one transformer call on one latent), no true
  classifier-free guidance (`true_cfg_scale` 1), T5 prompts up to 512 tokens.
- `_auto_resize`: the input is resized to the training resolution (`PREFERRED_KONTEXT_RESOLUTIONS`,
  about 1024² pixels, sides multiples of 16) whose aspect ratio is nearest its own; bfloat16.

Choices and deviations (Kontext has no published analogy protocol; these are ours):
- The arrangement: the 2 × 2 grid above (rather than A, A′, B side by side), so that B′ has the
  cell of B's size and the grid keeps B's aspect ratio. The grid is built at Kontext's preferred
  resolution nearest B's aspect ratio, which is what `_auto_resize` would make of it, so the
  pipeline's own resize changes nothing; each cell is half its width and height. A, A′ and B are
  centre-cropped to the cell's aspect ratio and resized into their cells (bicubic).
- The output size: the pipeline draws at `height`/`width` (default 1024 × 1024 whatever the input);
  here they are the grid's, so that the output's cells line up with the input's.
- `resolution` (not published, for small runs and tests): the grid's area becomes resolution²
  (B's aspect ratio, sides multiples of 16) and `_auto_resize` is off.
- The noise comes from a CPU generator seeded with `seed`; one B′ per triplet.
- B′ is returned at B's own pixel size (the crop resized, bicubic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from ..images import ImageInput, as_rgb, fit_to, working_size
from .base import Cost, check_guidance, check_positive_ints, check_resolution_option, check_text, cpu_generator
from .own_model import OwnModelBaseline, at_size_of

DEFAULT_MODEL = "black-forest-labs/FLUX.1-Kontext-dev"
INSTRUCTION = (
    "This picture is a grid of four images in two rows. The top-right image is the top-left image after an edit. "
    "Fill the empty bottom-right cell with the bottom-left image after exactly the same edit, and keep the other "
    "three images as they are."
)
EMPTY_CELL = (255, 255, 255)  # the colour of the cell B′ is drawn into
CELLS = ("a", "a_prime", "b", "b_prime")


@dataclass(frozen=True)
class KontextConfig:
    """Hyperparameters of FLUX.1 Kontext on the analogy grid (see the module docstring for sources).

    steps: flow-matching Euler steps. 28.
    guidance_scale: the distilled guidance the transformer is given. 2.5.
    instruction: the prompt, the same for every triplet (`INSTRUCTION`).
    resolution: None: the grid at Kontext's training resolution nearest B's aspect ratio (about
        1024², `_auto_resize`); an integer: the grid's area is resolution² instead.
    max_sequence_length: T5 tokens of the prompt. 512.
    """

    steps: int = 28
    guidance_scale: float = 2.5
    instruction: str = INSTRUCTION
    resolution: int | None = None
    max_sequence_length: int = 512

    def __post_init__(self):
        check_positive_ints(self, "steps", "max_sequence_length")
        check_guidance(self.guidance_scale)
        check_text(self.instruction, "Kontext's instruction")
        check_resolution_option(self.resolution)

    def cost(self) -> Cost:
        """One transformer call per step on one latent (guidance is an input, not a second branch);
        the grid's latents travel beside the noisy ones as context, doubling the image tokens."""
        return Cost(sample_calls=self.steps, sample_batch=1)


class KontextGrid(NamedTuple):
    """The 2 × 2 analogy grid of one triplet.

    image: the grid (RGB, `size`). size: (width, height), both multiples of 16.
    boxes: (left, top, right, bottom) of each cell by name ("a", "a_prime", "b", "b_prime").
    """

    image: Image.Image
    size: tuple[int, int]
    boxes: dict[str, tuple[int, int, int, int]]


def grid_size(b_size: tuple[int, int], resolution: int | None, multiple: int = 16) -> tuple[int, int]:
    """(width, height) of the grid for a B of `b_size`: the preferred Kontext resolution nearest
    B's aspect ratio (as the pipeline's `_auto_resize` chooses one), or with `resolution` an area
    of about resolution² with B's aspect ratio; sides multiples of `multiple`."""
    width, height = b_size
    if resolution is None:
        aspect = width / height
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        return width // multiple * multiple, height // multiple * multiple
    return working_size(width, height, resolution, multiple)


def analogy_grid(a: Image.Image, a_prime: Image.Image, b: Image.Image, size: tuple[int, int]) -> KontextGrid:
    """A | A′ over B | (empty) at `size` (width, height): each image centre-cropped to its cell's
    aspect ratio and resized into it; the bottom-right cell `EMPTY_CELL`-coloured."""
    width, height = size
    cell_w, cell_h = width // 2, height // 2
    boxes = {
        "a": (0, 0, cell_w, cell_h),
        "a_prime": (cell_w, 0, width, cell_h),
        "b": (0, cell_h, cell_w, height),
        "b_prime": (cell_w, cell_h, width, height),
    }
    grid = Image.new("RGB", size, EMPTY_CELL)
    for name, image in (("a", a), ("a_prime", a_prime), ("b", b)):
        left, top, right, bottom = boxes[name]
        grid.paste(fit_to(image, (right - left, bottom - top)), (left, top))
    return KontextGrid(grid, size, boxes)


class Kontext(OwnModelBaseline):
    """FLUX.1 Kontext: B′ is the empty cell of [A A′; B ·] as Kontext fills it when asked to
    repeat the top row's edit on B.

    Args:
        pipe: a `FluxKontextPipeline`; not changed.
        config: hyperparameters (default `KontextConfig()`).
    """

    name = "FLUX.1 Kontext"
    needs_text = None
    uses_text = False
    pipeline_class = FluxKontextPipeline
    default_model = DEFAULT_MODEL
    config_class = KontextConfig
    model_kind = "a FLUX.1 Kontext model"

    def __init__(self, pipe: FluxKontextPipeline, config: KontextConfig | None = None):
        self.check_pipeline(pipe)
        self.pipe = pipe
        self.config = config or KontextConfig()

    def grid(self, a: ImageInput, a_prime: ImageInput, b: ImageInput) -> KontextGrid:
        """The grid Kontext is given for this triplet (A, A′, B any `ImageInput`)."""
        b = as_rgb(b)
        size = grid_size(b.size, self.config.resolution, multiple=2 * self.pipe.vae_scale_factor)
        return analogy_grid(as_rgb(a), as_rgb(a_prime), b, size)

    @torch.no_grad()
    def analogy(
        self, a: ImageInput, a_prime: ImageInput, b: ImageInput, *, seed: int = 0, progress: bool = True
    ) -> Image.Image:
        """B′ for A : A′ :: B : B′, an RGB image of B's size."""
        c = self.config
        generator = cpu_generator(seed)
        b = as_rgb(b)
        grid = self.grid(a, a_prime, b)
        width, height = grid.size
        self.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="Kontext")
        drawn = self.pipe(
            image=grid.image,
            prompt=c.instruction,
            height=height,
            width=width,
            max_area=width * height,  # the output at the grid's size, so that its cells line up
            num_inference_steps=c.steps,
            guidance_scale=c.guidance_scale,
            max_sequence_length=c.max_sequence_length,
            generator=generator,
            _auto_resize=c.resolution is None,
        ).images[0]
        if drawn.size != grid.size:  # the pipeline snaps sizes; the crop must be the empty cell's box
            drawn = drawn.resize(grid.size, Image.Resampling.BICUBIC)
        return at_size_of(drawn.crop(grid.boxes["b_prime"]), b)
