"""What the shapes world's stages train on: renders of random scenes, edit pairs, grids with one cell
to repaint, and the batch makers of the three denoisers.

Every draw is seeded from the plan (`TrainingPlan.stream` for the data: a string-keyed stream, or
`random.Random(plan.seed + k)` in worlds trained before; torch's global generator for batch
indices), so a stage trained again from the same plan sees the same data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from transformers import CLIPTokenizer

from .descriptor import TrainingPlan
from .networks import encode_pictures, world_tokenizer
from .world import (
    ATTRIBUTES,
    CELLS,
    FAMILIES,
    LAYOUT_RANGE,
    RESOLUTION,
    Scene,
    caption_variants,
    cell_mask,
    grid_picture,
    instruction_variants,
    random_scene,
    render,
)


def scene_key(scene: Scene) -> tuple:
    """The scene's attribute values: scenes that differ only in layout share a key (and captions)."""
    return tuple(scene.attributes.values())


def random_scenes(n: int, seed: int | str, layout_range: float = LAYOUT_RANGE) -> list[Scene]:
    """The `n` random scenes `render_dataset` draws."""
    rng = random.Random(seed)
    return [random_scene(rng, layout_range) for _ in range(n)]


def render_dataset(n: int, seed: int | str, layout_range: float = LAYOUT_RANGE) -> tuple[list[Scene], np.ndarray]:
    """`n` random scenes and their pictures, (n, 32, 32, 3) uint8."""
    scenes = random_scenes(n, seed, layout_range)
    return scenes, np.stack([np.asarray(render(s)) for s in scenes])


def training_scenes(plan: TrainingPlan) -> dict[str, set[Scene]]:
    """Every scene (offset included) each of the plan's data streams shows a stage, by stream: the
    renders (VAE, CLIPs, classifier, UNet), the editor's edit pairs, the inpainting grids and the
    VAE's grids (`TrainingPlan.stream`; the DIFF-token encoder's pairs, `split_edit_pairs`, come
    from a keyed stream in every plan). In a plan with integer streams these are
    `random.Random(plan.seed + k)`, k = 0–3: the streams `world.triplets` draws the unsplit
    triplets of seeds plan.seed … plan.seed + 3 from."""
    return {
        "renders": set(random_scenes(plan.n_images, plan.stream("renders", 0), plan.layout_range)),
        "edit pairs": {
            scene
            for before, after, _ in edit_pairs(plan.n_edit_pairs, plan.stream("edit pairs", 1), plan.layout_range)
            for scene in (before, after)
        },
        "inpainting grids": {
            scene
            for scenes, _ in inpainting_grids(plan.n_grids, plan.stream("inpainting grids", 2), plan.layout_range)
            for scene in scenes
        },
        "VAE grids": {
            scene
            for scenes, _ in inpainting_grids(plan.n_grids, plan.stream("VAE grids", 3), plan.layout_range)
            for scene in scenes
        },
    }


@dataclass(frozen=True)
class TrainingData:
    """What several stages train on, made once per run: the plan's renders and the world's tokenizer."""

    scenes: list[Scene]
    images: np.ndarray  # (n_images, 32, 32, 3) uint8
    tokenizer: CLIPTokenizer

    @classmethod
    def for_plan(cls, plan: TrainingPlan) -> TrainingData:
        scenes, images = render_dataset(plan.n_images, plan.stream("renders", 0), plan.layout_range)
        return cls(scenes, images, world_tokenizer())


class Batch(NamedTuple):
    clean: torch.Tensor  # (B, 4, h, w) scaled latents to denoise
    inputs: torch.Tensor | None  # (B, k, h, w) extra input channels, concatenated after the noisy latents
    states: torch.Tensor  # (B, L, WIDTH) text states


# --- text-to-image (stage unet) --------------------------------------------------------------------
def caption_batches(scenes: list[Scene], latents: torch.Tensor, states_of, plan: TrainingPlan):
    """Text-to-image batches: a scene's latent and one of its caption variants, 10 % of captions
    dropped (the empty caption) for classifier-free guidance. states_of(texts): their text states."""
    keys = [scene_key(s) for s in scenes]
    texts, choices = [""], {}
    for key, scene in zip(keys, scenes):
        if key not in choices:
            variants = caption_variants(scene)
            choices[key] = list(range(len(texts), len(texts) + len(variants)))
            texts.extend(variants)
    states = states_of(texts)
    options = [choices[k] for k in keys]
    rng = random.Random(plan.stream("text-to-image captions", 0))

    def next_batch(step: int) -> Batch:
        index = torch.randint(len(latents), (plan.batch,))
        caption = torch.tensor([0 if rng.random() < 0.1 else rng.choice(options[i]) for i in index.tolist()])
        return Batch(latents[index], None, states[caption])

    return next_batch


# --- the editor (stage editor, and the DIFF-token encoder on the same pairs) -------------------------
def split_edit_pairs(n: int, stream: str, layout_range: float, edit_types: frozenset) -> list[tuple[Scene, Scene]]:
    """`n` random (before, after) pairs whose edit is one of `edit_types` (`world.SPLIT`), each edit
    type equally likely, drawn from `random.Random(stream)`: a string-keyed stream, never one of the
    integer-seeded streams the triplets of `world.triplets` come from."""
    rng = random.Random(stream)
    ordered = sorted(edit_types, key=lambda edit: (edit.family, str(edit.source), str(edit.target)))
    pairs = []
    for _ in range(n):
        edit = rng.choice(ordered)
        before = random_scene(rng, layout_range).with_(edit.family, edit.source)
        pairs.append((before, before.with_(edit.family, edit.target)))
    return pairs


def edit_pairs(n: int, seed: int | str, layout_range: float):
    """`n` random edits: (B, B′, the instruction variants), B′ = B with one attribute changed, same layout."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        before = random_scene(rng, layout_range)
        family = rng.choice(FAMILIES)
        target = rng.choice([v for v in ATTRIBUTES[family] if v != getattr(before, family)])
        pairs.append((before, before.with_(family, target), instruction_variants(family, before, target)))
    return pairs


def editor_batches(pairs, vae: AutoencoderKL, states_of, plan: TrainingPlan):
    """InstructPix2Pix batches: denoise B′'s latent given B's unscaled latent and an instruction.
    As InstructPix2Pix's training script: the instruction is dropped for 5 % + 5 %, the input
    picture for 5 % + 5 %, both for the 5 % in common (guidance on text and image needs all three)."""
    clean = encode_pictures(vae, np.stack([np.asarray(render(after)) for _, after, _ in pairs]))
    source = encode_pictures(vae, np.stack([np.asarray(render(before)) for before, _, _ in pairs]), scaled=False)
    texts = [""] + sorted({text for _, _, variants in pairs for text in variants})
    row = {text: i for i, text in enumerate(texts)}
    states = states_of(texts)
    options = [[row[text] for text in variants] for _, _, variants in pairs]
    rng = random.Random(plan.stream("editor instructions", 1))

    def next_batch(step: int) -> Batch:
        index = torch.randint(len(pairs), (plan.batch,))
        draws = [rng.random() for _ in range(plan.batch)]
        instruction = torch.tensor([0 if p < 0.10 else rng.choice(options[i]) for p, i in zip(draws, index.tolist())])
        keep_image = torch.tensor([not (0.05 <= p < 0.15) for p in draws], dtype=torch.float32).view(-1, 1, 1, 1)
        return Batch(clean[index], source[index] * keep_image, states[instruction])

    return next_batch


# --- inpainting (stage inpainting; stage vae_grids decodes the same kind of grid) ----------------------
def inpainting_grids(n: int, seed: int | str, layout_range: float):
    """`n` grids of four independent random scenes, each with one random cell to repaint."""
    rng = random.Random(seed)
    return [([random_scene(rng, layout_range) for _ in CELLS], rng.randrange(len(CELLS))) for _ in range(n)]


def grid_pictures(grids) -> np.ndarray:
    """The pictures of `inpainting_grids`, (N, 64, 64, 3) uint8."""
    return np.stack([np.asarray(grid_picture([render(s) for s in scenes])) for scenes, _ in grids])


def inpainting_batches(grids, vae: AutoencoderKL, states_of, plan: TrainingPlan):
    """SD-inpainting batches: denoise the grid's latent given the mask (1 channel) and the latent
    of the grid with the masked cell blanked (4), captioned by the masked cell's caption (10 %
    dropped). Blanking and mask follow `StableDiffusionInpaintPipeline`: pixels × (mask < 0.5) in
    [−1, 1], the mask resized to the latent grid."""
    pictures = grid_pictures(grids)
    clean = encode_pictures(vae, pictures)
    masks = np.stack([np.asarray(cell_mask(cell, RESOLUTION)) for _, cell in grids]) >= 128  # (N, 64, 64)
    blanked = pictures.astype(np.float32) / 127.5 - 1
    blanked[masks] = 0.0
    with torch.no_grad():
        pixels = torch.from_numpy(blanked).permute(0, 3, 1, 2)
        masked_latents = (
            torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
            * vae.config.scaling_factor
        )
    latent_masks = F.interpolate(torch.from_numpy(masks).float().unsqueeze(1), size=clean.shape[-2:])
    texts, options = [""], []
    for scenes, cell in grids:
        variants = caption_variants(scenes[cell])
        options.append(list(range(len(texts), len(texts) + len(variants))))
        texts.extend(variants)
    states = states_of(texts)
    rng = random.Random(plan.stream("inpainting captions", 2))

    def next_batch(step: int) -> Batch:
        index = torch.randint(len(grids), (plan.inpainting_batch,))
        caption = torch.tensor([0 if rng.random() < 0.1 else rng.choice(options[i]) for i in index.tolist()])
        return Batch(clean[index], torch.cat([latent_masks[index], masked_latents[index]], dim=1), states[caption])

    return next_batch
