"""Analogist (Gu, Yang, Liao, Huo & Gao, SIGGRAPH Asia 2024 / ACM TOG 43(4)) as a baseline.

Analogist treats the analogy as inpainting. A, A′ and B are put into a 2 × 2 grid

    +----+----+
    | A  | A′ |
    +----+----+
    | B  | ?  |   ? starts as a copy of B's cell and is masked
    +----+----+

and a Stable Diffusion inpainting model (UNet with 9 input channels: noisy latent, mask, masked
image latent) redraws the masked cell, with two changes to the UNet's attention:

- Self-attention cloning (SAC): in the chosen self-attention layers the pre-softmax scores of
  the B′ cell's queries on the A′ cell's keys are replaced by `sac_scale` × the scores of the
  B cell's queries on the A cell's keys (position by position within the cells), and likewise
  A′ → B′ by s × A → B, then the softmax is taken again. B′ so relates to A′ as B relates to A.
- Cross-attention masking (CAM): in the chosen cross-attention layers the attention weights of
  every query outside the B′ cell on the text are set to zero after the softmax, so that the
  prompt only shapes B′ (those positions keep just the output projection's bias).

    analogist = Analogist.from_pretrained()   # stabilityai/stable-diffusion-2-inpainting
    b_prime = analogist.analogy(a, a_prime, b, text="a photo of a snowy castle", seed=0)

Published settings, from github.com/edward3862/Analogist (file: what):
- analogist.py / evaluation.py / evaluation.sh: strength 0.98 (the grid, B copied into the masked
  cell, noised to 98 % of the schedule), guidance 15 (7.5 only for its inpainting task), SAC
  scale 1.3, SAC and CAM on transformer blocks 3 … 10 (`--sac_start_layer 3 --sac_end_layer 11`,
  the same for CAM; blocks counted in the order the UNet runs them: down, mid, up), the
  pipeline's default 50 steps (so int(50 × 0.98) = 49 denoising steps) and η = 0, a 512 × 512
  grid, the negative prompt "Messy,Disordered,Chaotic,Cluttered,Haphazard,Unkempt,Scattered,
  Disheveled,Tangled,Random", and ", best quality, extremely detailed" appended to the prompt.
- models/attn_utils.py `AnalogistAttentionEdit`: the edit applies to denoising steps 0 … 49
  (`start_step=0, end_step=50`, i.e. every step of the default run); SAC rewrites the scores
  as described above, for both classifier-free-guidance branches and all heads; CAM zeroes
  the weights of the A, A′ and B cells' queries. assets/index_sa.pkl holds the four cells'
  token positions, row-major quadrants of each attention map (64², 32², 16², 8²).
- models/scheduling_ddim.py: diffusers' DDIM (extra helpers unused), from the model's config.
- visual_prompting.py `make_grid`: white canvas; each image squashed to a square of
  cell − 1.5 × 2 px (253 px in a 256-px cell) and pasted with 2-px gutters: A at (2, 2),
  A′ at (cell + 1, 2), B at (2, cell + 1), a black square in the fourth cell; then
  analogist.py replaces the fourth cell by a copy of B's whole cell. The mask
  (assets/mask_image_inpainting.png) is exactly the bottom-right quadrant.

Deviations from the official code:
- Text prompt: the official code asks GPT-4V for a short prompt describing B′ from a marked copy
  of the grid (textual_prompting.py). Here the prompt is given by the caller (`text=`, e.g. a
  caption of the wanted B′ or a VLM's answer); no VLM is called. So Analogist here needs words
  from the user (`uses_text`), unlike in the paper's Table 1, where GPT-4V supplied them.
- Model: the official code uses runwayml/stable-diffusion-inpainting (SD 1.5 inpainting, in
  float16); the default here is stabilityai/stable-diffusion-2-inpainting, the inpainting
  model of the SD 2 family that the paper's backbone belongs to (`OFFICIAL_MODEL` names a copy
  of the official one). Both have 16 transformer blocks in the same layout, so the layer range
  means the same blocks; both are 512-px models.
- Attention: implemented as a diffusers attention processor (`AnalogistAttnProcessor`) installed
  with `unet.set_attn_processor` for the call and restored afterwards (the official code
  replaces the modules' `forward`). Layers outside the SAC/CAM ranges and steps outside the step
  range keep the model's own processor (the same maths); controlled layers compute scores and
  softmax in float32 whatever the model's dtype (the official in the model's float16).
- Token positions: computed from each attention map's size (row-major quadrants), which equals
  index_sa.pkl at 512 px and also serves other grid sizes.
- Samples: one B′ per call (the official draws 8 per prompt, `num_images_per_prompt=8`); the
  noise comes from a CPU generator seeded with `seed` (the official: a seeded CUDA generator).
- Output: B′ is the B′ cell's image area (where B sits in its own cell, without the gutters)
  resized to B's working size (aspect ratio restored); the official code crops the whole
  quadrant and resizes it to res × res.
- Grid size: `resolution` is the grid's side (None: the model's native size, 512 as official);
  it must be a multiple of 2 × the UNet's stride so that every attention map splits into
  four equal quadrants.

Longer than the project's usual 400 lines: one baseline per file, and its grid, its attention
control and the account above of the official code belong together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

from ..errors import DiffinvError
from ..images import ImageInput, as_rgb
from .base import (
    Img2ImgSettings,
    PipelineBaseline,
    check_resolution_option,
    check_text,
    cpu_generator,
    number,
    require,
    size_multiple,
    square_side,
    with_ddim,
    working_image,
)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-inpainting"
OFFICIAL_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"  # a copy of runwayml/stable-diffusion-inpainting
NEGATIVE_PROMPT = "Messy,Disordered,Chaotic,Cluttered,Haphazard,Unkempt,Scattered,Disheveled,Tangled,Random"
ADDED_PROMPT = "best quality, extremely detailed"
CELLS = ("a", "a_prime", "b", "b_prime")
INPAINT_CHANNELS = 9  # noisy latent 4 + mask 1 + masked-image latent 4


def _layer_range(value) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and 0 <= value[0] < value[1]
    )


@dataclass(frozen=True)
class AnalogistConfig(Img2ImgSettings):
    """Analogist's published hyperparameters (see the module docstring for their sources).

    steps: DDIM steps of a full schedule; the last min(int(steps × strength), steps) are run. 50.
    strength: how far the grid (B copied into the masked cell) is noised, in (0, 1]. 0.98.
    guidance_scale: classifier-free guidance (≤ 1: none). 15.
    eta: DDIM's η. 0.
    sac, cam: self-attention cloning / cross-attention masking on (both True; off for ablations).
    sac_scale: factor on the cloned scores. 1.3.
    sac_layers, cam_layers: [start, end) transformer blocks, counted in the order the UNet runs
        them (down, mid, up). (3, 11) both.
    control_steps: [start, end) denoising steps (UNet calls) the control acts on. (0, 50).
    added_prompt: appended to the prompt after ", " ("" for nothing).
    negative_prompt: the unconditional branch's text.
    gutter: pixels between the cells and around the grid. 2.
    resolution: the grid's side in pixels (None: the model's native size, 512).
    """

    steps: int = 50
    strength: float = 0.98
    guidance_scale: float = 15.0
    eta: float = 0.0
    sac: bool = True
    cam: bool = True
    sac_scale: float = 1.3
    sac_layers: tuple[int, int] = (3, 11)
    cam_layers: tuple[int, int] = (3, 11)
    control_steps: tuple[int, int] = (0, 50)
    added_prompt: str = ADDED_PROMPT
    negative_prompt: str = NEGATIVE_PROMPT
    gutter: int = 2
    resolution: int | None = None

    def __post_init__(self):
        self.check_img2img()
        require(isinstance(self.sac, bool) and isinstance(self.cam, bool), "sac and cam must be True or False")
        require(number(self.sac_scale) and self.sac_scale > 0, f"sac_scale must be > 0, got {self.sac_scale!r}")
        for name in ("sac_layers", "cam_layers", "control_steps"):
            require(
                _layer_range(getattr(self, name)),
                f"{name} must be a (start, end) pair of integers with 0 ≤ start < end, got {getattr(self, name)!r}",
            )
        require(
            isinstance(self.added_prompt, str) and isinstance(self.negative_prompt, str),
            "added_prompt and negative_prompt must be texts",
        )
        require(
            isinstance(self.gutter, int) and not isinstance(self.gutter, bool) and 0 <= self.gutter <= 16,
            f"gutter must be an integer in [0, 16], got {self.gutter!r}",
        )
        check_resolution_option(self.resolution)


# --- the grid -----------------------------------------------------------------------------------


class GridLayout(NamedTuple):
    """Where things are in the side × side grid, in pixels; boxes are (left, top, right, bottom).

    cell: side / 2, one quadrant. content: the side of the square each image is squashed to.
    boxes: the image area of each cell, by name ("a", "a_prime", "b", "b_prime"); B′'s is
        where B sits in its own cell, moved one cell right (B's whole cell is copied there).
    """

    side: int
    cell: int
    content: int
    boxes: dict[str, tuple[int, int, int, int]]

    @property
    def mask_box(self) -> tuple[int, int, int, int]:
        """The masked area: the whole bottom-right quadrant."""
        return (self.cell, self.cell, self.side, self.side)


def grid_layout(side: int, gutter: int = 2) -> GridLayout:
    """The official layout for a side × side grid (side even): `gutter`-px white lines around
    and between images of cell − 1.5 × gutter px."""
    cell = side // 2
    content = int(cell - 1.5 * gutter)
    if side % 2 or content < 1:
        raise DiffinvError(f"a {side}-px grid with {gutter}-px gutters leaves no room for the images")
    top_left = {
        "a": (gutter, gutter),
        "a_prime": (cell + gutter - 1, gutter),
        "b": (gutter, cell + gutter - 1),
        "b_prime": (cell + gutter, cell + gutter - 1),
    }
    boxes = {name: (x, y, x + content, y + content) for name, (x, y) in top_left.items()}
    return GridLayout(side, cell, content, boxes)


def make_grid(
    a: Image.Image, a_prime: Image.Image, b: Image.Image, side: int, gutter: int = 2
) -> tuple[Image.Image, Image.Image, GridLayout]:
    """(grid, mask, layout): the side × side RGB grid [A A′; B B] (the fourth cell a copy of B's
    cell) and the L-mode mask, 255 on the bottom-right quadrant and 0 elsewhere. Each image is
    squashed to a square (its aspect ratio is not kept), bicubic, as the official code does."""
    layout = grid_layout(side, gutter)
    grid = Image.new("RGB", (side, side), (255, 255, 255))
    for name, image in (("a", a), ("a_prime", a_prime), ("b", b)):
        left, top, _, _ = layout.boxes[name]
        grid.paste(image.resize((layout.content, layout.content), Image.Resampling.BICUBIC), (left, top))
    cell = layout.cell
    grid.paste(grid.crop((0, cell, cell, side)), (cell, cell))
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, layout.mask_box)
    return grid, mask, layout


# --- the attention control ------------------------------------------------------------------------


def cell_positions(height: int, width: int, device=None) -> dict[str, torch.Tensor]:
    """Token positions (row-major) of the four quadrants of a height × width attention map, each
    (height/2 · width/2,) long and in the same within-cell order, so that the i-th positions
    of two cells are the same place in each."""
    if height % 2 or width % 2:
        raise ValueError(f"a {height} × {width} attention map does not split into four equal cells")
    rows, cols = torch.arange(height // 2, device=device), torch.arange(width // 2, device=device)
    local = (rows[:, None] * width + cols[None, :]).reshape(-1)
    offsets = {"a": 0, "a_prime": width // 2, "b": height // 2 * width, "b_prime": height // 2 * width + width // 2}
    return {name: local + offset for name, offset in offsets.items()}


def clone_self_attention(scores: torch.Tensor, cells: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """SAC on pre-softmax self-attention scores (N, n, n) (N: batch × heads; queries × keys):
    a copy whose block (B′ queries, A′ keys) is scale × (B queries, A keys) and whose block
    (A′ queries, B′ keys) is scale × (A queries, B keys); everything else as it was."""
    a, a_prime, b, b_prime = (cells[name] for name in CELLS)
    cloned = scores.clone()
    cloned[:, b_prime[:, None], a_prime[None, :]] = scale * scores[:, b[:, None], a[None, :]]
    cloned[:, a_prime[:, None], b_prime[None, :]] = scale * scores[:, a[:, None], b[None, :]]
    return cloned


def mask_cross_attention(weights: torch.Tensor, cells: dict[str, torch.Tensor]) -> torch.Tensor:
    """CAM on post-softmax cross-attention weights (N, n, tokens): the rows of every query outside
    the B′ cell set to zero."""
    keep = torch.zeros(weights.shape[1], dtype=torch.bool, device=weights.device)
    keep[cells["b_prime"]] = True
    return weights * keep[None, :, None].to(weights.dtype)


class _ControlState:
    """Shared by one call's processors: the index of the running UNet call (denoising step)."""

    def __init__(self):
        self.step = -1


class AnalogistAttnProcessor:
    """A diffusers attention processor for one attention layer of a transformer block.

    Self-attention layers (`sac`) clone scores, cross-attention layers (`cam`) mask the text
    weights, at the steps in `steps`; otherwise the call goes to `original`, the layer's own
    processor, unchanged. Works on (batch, tokens, channels) or (batch, channels, h, w) input
    like diffusers' `AttnProcessor`; the attention map must be square (the grid is).

    steps, state: the control acts while `state.step` (the running UNet call, counted by
        `analogist_attention`) is in `steps`; None: at every call.
    record: if a list, each controlled call appends its post-softmax weights (N, n, keys),
        float32 on the CPU (for inspection and tests).
    """

    def __init__(
        self,
        original,
        *,
        sac: bool,
        cam: bool,
        sac_scale: float,
        steps: range | None = None,
        state: _ControlState | None = None,
        record: list | None = None,
    ):
        self.original = original
        self.sac, self.cam, self.sac_scale = sac, cam, sac_scale
        self.steps = steps
        self.state = state
        self.record = record

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        in_steps = self.state is None or self.steps is None or self.state.step in self.steps
        active = (self.cam if is_cross else self.sac) and in_steps
        if not active:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"Analogist's attention control needs a square attention map, got {tokens} positions")
        cells = cell_positions(side, side, hidden_states.device)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))

        scores = torch.bmm(query.float(), key.float().transpose(1, 2)) * attn.scale  # (batch·heads, n, keys)
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        if not is_cross:
            scores = clone_self_attention(scores, cells, self.sac_scale)
        weights = scores.softmax(dim=-1)
        if is_cross:
            weights = mask_cross_attention(weights, cells)
        if self.record is not None:
            self.record.append(weights.detach().cpu())

        hidden_states = attn.batch_to_head_dim(torch.bmm(weights.to(value.dtype), value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def transformer_blocks(unet) -> list[str]:
    """The UNet's transformer blocks (the parents of its attn1/attn2 layers), in the order a
    forward pass runs them: down blocks, mid block, up blocks."""
    rank = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    blocks: list[str] = []
    for name in sorted(unet.attn_processors, key=lambda name: rank.get(name.split(".")[0], 3)):
        block = name.rsplit(".", 2)[0]  # "…transformer_blocks.0.attn1.processor" → "…transformer_blocks.0"
        if block not in blocks:
            blocks.append(block)
    return blocks


@contextmanager
def analogist_attention(unet, config: AnalogistConfig, record: list | None = None) -> Iterator[dict]:
    """While active, `unet` runs Analogist's attention processors (SAC and CAM as `config` says);
    afterwards its own processors are back, the same objects. Yields the installed processors
    by name. record: passed to every processor (see `AnalogistAttnProcessor`)."""
    originals = unet.attn_processors
    blocks = transformer_blocks(unet)
    sac_blocks = range(*config.sac_layers) if config.sac else range(0)
    cam_blocks = range(*config.cam_layers) if config.cam else range(0)
    state = _ControlState()
    installed = {}
    for name, original in originals.items():
        block_index = blocks.index(name.rsplit(".", 2)[0])
        is_self = name.endswith("attn1.processor")
        installed[name] = AnalogistAttnProcessor(
            original,
            sac=is_self and block_index in sac_blocks,
            cam=not is_self and block_index in cam_blocks,
            sac_scale=config.sac_scale,
            steps=range(*config.control_steps),
            state=state,
            record=record,
        )

    def count_step(module, args):
        state.step += 1

    unet.set_attn_processor(installed)
    handle = unet.register_forward_pre_hook(count_step)
    try:
        yield installed
    finally:
        handle.remove()
        unet.set_attn_processor(originals)


# --- the method -------------------------------------------------------------------------------------


class Analogist(PipelineBaseline):
    """Analogist: B′ inpainted into a 2 × 2 grid [A A′; B ?] with SAC and CAM.

    Args:
        pipe: a Stable Diffusion inpainting pipeline (UNet with 9 input channels), or any
            pipeline of such a model whose modules are shared. It is not changed: sampling uses
            a pipeline of the same modules with a DDIM scheduler on the model's noise schedule,
            and the UNet's attention processors are swapped only during a call.
        config: hyperparameters (default `AnalogistConfig()`).
    """

    name = "Analogist"
    needs_text = "b_prime"
    uses_text = True
    pipeline_class = StableDiffusionInpaintPipeline  # SD 2 or SD 1.5 inpainting
    default_model = DEFAULT_MODEL
    config_class = AnalogistConfig

    def __init__(self, pipe: StableDiffusionInpaintPipeline, config: AnalogistConfig | None = None):
        channels = pipe.unet.config.in_channels
        require(
            channels == INPAINT_CHANNELS,
            f"Analogist needs a Stable Diffusion inpainting model (a UNet with {INPAINT_CHANNELS} input "
            f"channels); this one has {channels}",
        )
        self.pipe = with_ddim(pipe, StableDiffusionInpaintPipeline)
        self.config = config or AnalogistConfig()
        blocks = len(transformer_blocks(pipe.unet))
        for name in ("sac_layers", "cam_layers"):
            start = getattr(self.config, name)[0]
            require(
                start < blocks,
                f"{name} starts at block {start}, but this model's UNet has only {blocks} transformer blocks",
            )

    def grid_side(self) -> int:
        """The grid's side in pixels: `resolution`, or the model's native size."""
        side = square_side(self.pipe, self.config.resolution)
        multiple = 2 * size_multiple(self.pipe)
        require(
            side % multiple == 0,
            f"the grid's side (resolution {side}) must be a multiple of {multiple} so that every attention map "
            "splits into four equal cells",
        )
        return side

    @torch.no_grad()
    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
        text: str | None = None,
        record: list | None = None,
    ) -> Image.Image:
        """B′ for A : A′ :: B : B′, at B's working size for the grid's side.

        text: the prompt, describing the wanted B′ (the official code asks GPT-4V for it).
        record: a list that receives the controlled layers' attention weights (see
            `AnalogistAttnProcessor`).
        """
        c = self.config
        prompt = check_text(text, "Analogist's prompt (a text describing the wanted B′)")
        generator = cpu_generator(seed)
        a, a_prime, b_rgb = as_rgb(a), as_rgb(a_prime), as_rgb(b)
        side = self.grid_side()
        out_size = working_image(b_rgb, self.pipe, side).size
        grid, mask, layout = make_grid(a, a_prime, b_rgb, side, c.gutter)
        full_prompt = f"{prompt}, {c.added_prompt}" if c.added_prompt.strip() else prompt
        self.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="Analogist")
        with analogist_attention(self.pipe.unet, c, record):
            drawn = self.pipe(
                prompt=full_prompt,
                negative_prompt=c.negative_prompt,
                image=grid,
                mask_image=mask,
                height=side,
                width=side,
                strength=c.strength,
                num_inference_steps=c.steps,
                guidance_scale=c.guidance_scale,
                eta=c.eta,
                generator=generator,
            ).images[0]
        return drawn.crop(layout.boxes["b_prime"]).resize(out_size, Image.Resampling.BICUBIC)
