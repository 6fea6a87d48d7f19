"""Training the shapes world's models from scratch on CPU: `diffinv shapes train`.

Stages, each saved as soon as it is done and skipped when `training.json` says it finished (so
an interrupted run resumes at the stage it was in; the denoisers also resume from their last
checkpoint, and leave a usable pipeline in the directory at each one):

1. classifier  — attribute classifier on fresh renders (evaluation only); world v2: also the
                 shape's centre, and the layout threshold chosen from its own error
2. clip        — `CLIPModel` (image + text towers), contrastive on renders and caption variants
3. vae         — `AutoencoderKL`, 32×32×3 → 8×8×4; then vae_decoder: the decoder alone refined
                 with the encoder frozen (sharper small details, unchanged latents)
4. unet        — `UNet2DConditionModel`, v-prediction, on pre-encoded latents, conditioned on
                 the frozen CLIP text tower (which becomes the pipeline's text encoder)
5. editor      — (v2) the world's InstructPix2Pix: the UNet with 8 input channels (noisy latent +
                 the input picture's latent), on (B, instruction, B′) pairs, started from stage 4
                 with zero weights on the new channels, as InstructPix2Pix started from SD
6. inpainting  — (v2) an SD-style inpainting UNet with 9 input channels (noisy latent + mask +
                 masked-picture latent) on 2×2 grids of world pictures (64×64) with one cell
                 masked and that cell's caption, started from stage 4 likewise
7. clip_vision — (v2) the CLIP's image tower trained further with its text tower frozen (better
                 retrieval of v2's pictures; the text encoder every denoiser reads is unchanged)
8. vae_grids   — (v2) the VAE decoder again, encoder frozen, on single pictures and 2×2 grids in
                 turn: grids' latents are not their cells' latents side by side
9. diff_encoder — (v2) the editor's DIFF-token encoder (`diffinv.diff_encoder`, `init="encoder"`),
                 on the editor's own training pairs, into `editor/diff_encoder/`

The output directory is a standard Stable Diffusion directory (`StableDiffusionPipeline.
from_pretrained` loads it) with `clip/` and `classifier/` beside the usual components, and for v2
`editor/` (`StableDiffusionInstructPix2PixPipeline`) and `inpainting/`
(`StableDiffusionInpaintPipeline`), each a complete pipeline directory of its own.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextModel

from ..clip_space import CLIP_MEAN, CLIP_STD
from ..model_card import write_descriptor
from ..word_tokenizer import word_tokenizer
from .classifier import AttributeClassifier, targets
from .evaluate import GUIDANCE, IMAGE_GUIDANCE, SAMPLING_STEPS
from .world import (
    ATTRIBUTES,
    FAMILIES,
    LAYOUT_RANGE,
    RESOLUTION,
    all_scenes,
    canonical_caption,
    caption_variants,
    instruction_variants,
    random_scene,
    render,
    vocabulary_words,
)

TEXT_LENGTH = 32  # tokens: longest caption (16) + up to 14 DIFF tokens + <bos>/<eos>
WIDTH = 64  # text/token width = CLIP joint width, as in SD (token 768 = ViT-L joint 768)

# The world's diffinv.json (see diffinv.model_card): step budget tuned for this world (docs/shapes.md),
# the "in-context" method (chosen by measurement, docs/results.md §6), captions by exact CLIP
# retrieval among the world's canonical captions (so PEZ is not needed), and what `diffinv bench`
# uses by default on this world.
DESCRIPTOR = dict(
    name="shapes",
    config=dict(
        prompt_source="caption",
        steps=200,
        learning_rate=1e-2,
        sampling_steps=20,
        guidance_scale=4.0,
        strength=0.8,
        clip_loss_space="in-context",
        tc_reduction="sum",
    ),
    captioner={"kind": "clip-retrieval", "captions": "captions.txt"},
    bench={"batch": 8, "embedders": ["clip"], "classifier": "classifier"},
)
# World v2 adds its version, the directories of its editor and inpainting model, and the budget
# its baselines run at in `diffinv bench`: the world's sampling steps (20) and guidance (4; the
# editor's image guidance 3.0, chosen for it in shapes/evaluate.py), as Difference Inversion got
# them before V2_SAMPLING lowered its own guidance to 2.5 for drawing from an inversion; VISII's
# fit on the budget Difference Inversion's fit had when the baselines were measured (200 steps at
# lr 1e-2, docs/shapes.md; V2_FIT has since halved DI's), its PEZ start at a tenth of its 3000
# steps; the grids of Analogist at the inpainting model's 64 px without gutters (its training
# grids have none) and without its English quality phrases (no word of them is in the world's
# vocabulary). Everything else stays at each baseline's published values.
EDITOR_DIR, INPAINTING_DIR = "editor", "inpainting"
# The world's models besides text-to-image, each named in the descriptor once its stage is done.
BENCH_MODELS = {"editor": EDITOR_DIR, "inpainting": INPAINTING_DIR}
# Stages the text-to-image world does not wait for: it is described (benches, checks) without them.
BESIDE_THE_WORLD = (*BENCH_MODELS, "diff_encoder")
# How v2 draws B′: from B's DDIM inversion at strength 0.6 and guidance 2.5 instead of img2img at
# 0.8 and guidance 4 — chosen on development triplet seeds 1-4 and then measured once on held-out
# seed 120 (docs/results.md §7: correct 28 % against 5.5 %, layout 53 % against 12.5 %). v1 keeps
# DESCRIPTOR's values: it has no layout to keep, and there the mode did not matter (§4, §6).
V2_SAMPLING = {"sampling_mode": "inversion", "strength": 0.6, "guidance_scale": 2.5}
# v2 fits in 100 steps instead of 200: equal on development seeds 5-8 (correct 0.0 ± 4.2 points,
# 200 triplets) and then on held-out seed 140 (−0.5 ± 3.8), in half the time (docs/results.md §7),
# which brings the README's analogy under 5 s on 2 cores. v1 keeps 200, as measured there.
V2_FIT = {"steps": 100}
V2_BASELINE_BUDGETS = {
    "sdedit": {"steps": 20, "guidance_scale": 4.0},
    "instructpix2pix": {"steps": 20, "guidance_scale": 4.0, "image_guidance_scale": IMAGE_GUIDANCE},
    "visii": {
        "steps": 200,
        "learning_rate": 1e-2,
        "pez_steps": 300,
        "train_guidance_scale": 4.0,
        "sample_steps": 20,
        "guidance_scale": 4.0,
        "image_guidance_scale": IMAGE_GUIDANCE,
    },
    "analogist": {
        "steps": 20,
        "guidance_scale": 4.0,
        "resolution": 2 * RESOLUTION,
        "gutter": 0,
        "added_prompt": "",
        "negative_prompt": "",
    },
    "dia": {"guidance_scale": 4.0},
}


def world_descriptor(plan: TrainingPlan, trained=None) -> dict:
    """The world's `diffinv.json` values for `plan`'s version. trained: the stages done (default:
    all); the editor and the inpainting model are named only once their stage is."""
    descriptor = dict(DESCRIPTOR)
    if plan.world >= 2:
        descriptor["world"] = {"version": plan.world, "layout_range": plan.layout_range}
        descriptor["config"] = {**DESCRIPTOR["config"], **V2_FIT, **V2_SAMPLING}
        descriptor["bench"] = {
            **DESCRIPTOR["bench"],
            **{name: directory for name, directory in BENCH_MODELS.items() if trained is None or name in trained},
            "baselines": V2_BASELINE_BUDGETS,
        }
    return descriptor


# The editor as a Difference Inversion model of its own ("shapes-editor", `backbone_editor`): the
# world's method at its learning rate, drawn as its InstructPix2Pix baseline draws (20 steps, text
# guidance 4, image guidance 3), with the world's captions, CLIP and classifier one directory up.
# EDITOR_FIT: 200 steps (not V2_FIT's 100) and AdamW weight decay 1 (not 1e-2), chosen on
# development triplet seeds 7-9 and then measured once on held-out seed 150 (docs/results.md §7:
# correct 50.5 % against 32 % with the world's fit and 24.5 % for the text-to-image default).
EDITOR_FIT = {"steps": 200, "weight_decay": 1.0}
# Once the editor has its DIFF-token encoder (stage diff_encoder), D̃ is the encoder's prediction with
# no fit: chosen on development seeds 7-8 and measured once on held-out seed 160 (docs/results.md §7:
# correct 75 % against 54.5 % for EDITOR_FIT). A fit from zeros or a random start (`--init zeros`,
# every preset) keeps EDITOR_FIT's step budget, which the descriptor records as init_budgets.
EDITOR_ENCODER = {"init": "encoder", "steps": 0}
EDITOR_FIT_BUDGETS = {init: {"steps": EDITOR_FIT["steps"]} for init in ("zeros", "random")}
EDITOR_DESCRIPTOR = dict(
    name="shapes-editor",
    config=dict(
        {
            key: DESCRIPTOR["config"][key]
            for key in ("prompt_source", "learning_rate", "clip_loss_space", "tc_reduction")
        },
        **EDITOR_FIT,
        sampling_mode="editor",
        sampling_steps=SAMPLING_STEPS,
        guidance_scale=GUIDANCE,
        image_guidance_scale=IMAGE_GUIDANCE,
    ),
    # the world's captions, CLIP and classifier, one directory up
    captioner={**DESCRIPTOR["captioner"], "captions": "../" + DESCRIPTOR["captioner"]["captions"]},
    clip="../clip",
    bench={**DESCRIPTOR["bench"], "classifier": "../" + DESCRIPTOR["bench"]["classifier"]},
)


def editor_descriptor(plan: TrainingPlan, trained=None) -> dict:
    """The editor directory's `diffinv.json` values (world v2 and later). trained: the stages done
    (default: all); D̃ comes from the encoder only once stage diff_encoder is."""
    descriptor = {**EDITOR_DESCRIPTOR, "world": {"version": plan.world, "layout_range": plan.layout_range}}
    if trained is None or "diff_encoder" in trained:
        descriptor["config"] = {**descriptor["config"], **EDITOR_ENCODER}
        descriptor["init_budgets"] = EDITOR_FIT_BUDGETS
    return descriptor


@dataclass
class TrainingPlan:
    """Every setting of `diffinv shapes train`. world 1 trains v1 (stages 1–4, ±1.5 px jitter);
    world 2 trains v2 (all six stages, offsets within ±`LAYOUT_RANGE`)."""

    seed: int = 0
    world: int = 2
    n_images: int = 12000
    classifier_steps: int = 2000  # v1: 1000; v2's wider layout left the shape head at 99.0 % after 1000
    clip_steps: int = 1000
    clip_vision_steps: int = 1000  # v2 only: retrieval of v2's pictures was 93.0 % after the CLIP stage
    vae_steps: int = 800
    vae_decoder_steps: int = 1500
    vae_grid_steps: int = 1500  # v2: the decoder again, on single pictures and 2×2 grids in turn
    unet_steps: int = 6000  # v1: 4000 (of a 6000-step schedule, see docs/shapes.md); v2 needed 6000
    editor_steps: int = 8000  # 2000 kept the other attributes in 42 % of development edits, 6000 in 86 %
    n_edit_pairs: int = 12000
    inpainting_steps: int = 10000  # 2000 gave 68 %, 6000 85 %, 10000 89 % (its gate: 90 %)
    n_grids: int = 6000
    diff_encoder_steps: int = 10000  # v2 only: the DIFF-token encoder (diffinv.diff_encoder), on the editor's pairs
    inpainting_batch: int = 32
    checkpoint_every: int = 500
    batch: int = 64
    clip_batch: int = 128

    @property
    def layout_range(self) -> float:
        from .world import LAYOUT_RANGES

        return LAYOUT_RANGES[self.world]


def _scene_key(scene) -> tuple:
    return tuple(scene.attributes.values())


def _pixels(array: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


def _cosine_lr(optimizer, step: int, total: int, base: float, warmup: int = 100) -> None:
    scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    for group in optimizer.param_groups:
        group["lr"] = base * max(scale, 0.02)


def render_dataset(n: int, seed: int, layout_range: float = LAYOUT_RANGE):
    rng = random.Random(seed)
    scenes = [random_scene(rng, layout_range) for _ in range(n)]
    return scenes, np.stack([np.asarray(render(s)) for s in scenes])


def _perturb(pixels: torch.Tensor) -> torch.Tensor:
    """What a decoder or a sampler does to a picture, roughly: a little blur, a colour offset
    and noise, each of random strength. Keeps the evaluator from mistaking such artefacts for
    attributes (it first read faint backgrounds in VAE round trips as "no dot")."""
    n = pixels.shape[0]
    blurred = F.avg_pool2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1) * 0.6
    pixels = (1 - mix) * pixels + mix * blurred
    pixels = pixels + (torch.rand(n, 3, 1, 1) - 0.5) * 0.08
    pixels = pixels + torch.randn_like(pixels) * torch.rand(n, 1, 1, 1) * 0.04
    return pixels.clamp(0, 1)


# --- 1. classifier --------------------------------------------------------------------------------
def train_classifier(scenes, images: np.ndarray, plan: TrainingPlan) -> AttributeClassifier:
    """Cross-entropy per attribute on perturbed renders; world v2 adds the centre (smooth L1 in
    pixels) and sets the layout threshold from the trained classifier's own centre error."""
    model = AttributeClassifier(centre=plan.world >= 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    pixels, labels = _pixels(images), targets(scenes)
    centres = torch.tensor([[s.dx, s.dy] for s in scenes], dtype=torch.float32)
    for step in tqdm(range(plan.classifier_steps), desc="classifier"):
        _cosine_lr(optimizer, step, plan.classifier_steps, 2e-3)
        index = torch.randint(len(scenes), (128,))
        outputs = model(_perturb(pixels[index]))
        loss = sum(F.cross_entropy(outputs[k], labels[k][index]) for k in ATTRIBUTES)
        if model.centre is not None:
            loss = loss + F.smooth_l1_loss(outputs["centre"], centres[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    if model.centre is not None:
        errors = centre_errors(model, plan.layout_range, seed=plan.seed + 7)
        model.layout_threshold = layout_threshold(errors)
    return model


def centre_errors(classifier: AttributeClassifier, layout_range: float, n: int = 1000, seed: int = 7) -> np.ndarray:
    """(n,) pixels between the classifier's centre and the truth, on fresh renders (not trained on)."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, layout_range) for _ in range(n)]
    predicted = classifier.predict([render(s) for s in scenes])
    return np.array([math.dist(p["centre"], (s.dx, s.dy)) for p, s in zip(predicted, scenes)])


def layout_threshold(errors: np.ndarray) -> float:
    """Twice the classifier's 99th-percentile centre error on true renders, rounded up to 0.25 px
    and at least 0.5 px: a B′ drawn exactly where B is passes with room for what decoding and
    sampling blur, while a shape moved by more than that fails."""
    return max(0.5, math.ceil(2 * float(np.quantile(errors, 0.99)) * 4) / 4)


# --- 2. CLIP --------------------------------------------------------------------------------------
def build_clip(tokenizer) -> CLIPModel:
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


def _clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def train_clip(scenes, images: np.ndarray, tokenizer, plan: TrainingPlan) -> CLIPModel:
    """Contrastive training; pictures of the same attributes count as positives of each other."""
    model = build_clip(tokenizer)
    return _contrastive(model, list(model.parameters()), scenes, images, tokenizer, plan, plan.clip_steps, "CLIP")


def refine_clip_vision(model: CLIPModel, scenes, images: np.ndarray, tokenizer, plan: TrainingPlan) -> CLIPModel:
    """More contrastive training of the image tower (and its projection) alone, the text tower
    frozen: better retrieval of a world's pictures (v2's offsets make them harder to read) at no
    change to the text encoder — which the UNet, the editor and the inpainting model are
    conditioned on, and which must stay the CLIP's text tower."""
    model.requires_grad_(False)
    vision = [*model.vision_model.parameters(), *model.visual_projection.parameters(), model.logit_scale]
    for parameter in vision:
        parameter.requires_grad_(True)
    model = _contrastive(model, vision, scenes, images, tokenizer, plan, plan.clip_vision_steps, "CLIP vision")
    return model.requires_grad_(False)


def _contrastive(model: CLIPModel, parameters, scenes, images, tokenizer, plan: TrainingPlan, steps: int, desc: str):
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.05)
    pixels = _clip_pixels(_pixels(images))
    keys = [_scene_key(s) for s in scenes]
    variants = {key: caption_variants(s) for key, s in zip(keys, scenes)}
    rng = random.Random(plan.seed)
    model.train()
    for step in tqdm(range(steps), desc=desc):
        _cosine_lr(optimizer, step, steps, 1e-3)
        index = torch.randint(len(scenes), (plan.clip_batch,))
        batch_keys = [keys[i] for i in index.tolist()]
        texts = [rng.choice(variants[k]) for k in batch_keys]
        ids = tokenizer(
            texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids
        image_features = F.normalize(model.get_image_features(pixel_values=pixels[index]).pooler_output, dim=-1)
        text_features = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_features @ text_features.T
        same = torch.tensor([[a == b for b in batch_keys] for a in batch_keys], dtype=torch.float32)
        soft = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (
            torch.sum(-soft * logits.log_softmax(dim=1), dim=1).mean()
            + torch.sum(-soft * logits.T.log_softmax(dim=1), dim=1).mean()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# --- 3. VAE ---------------------------------------------------------------------------------------
def build_vae() -> AutoencoderKL:
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


def train_vae(images: np.ndarray, plan: TrainingPlan) -> AutoencoderKL:
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    pixels = _pixels(images) * 2 - 1
    for step in tqdm(range(plan.vae_steps), desc="VAE"):
        _cosine_lr(optimizer, step, plan.vae_steps, 1e-3)
        x = pixels[torch.randint(len(pixels), (32,))]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, min(2048, len(pixels)), 256)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def refine_vae_decoder(
    vae: AutoencoderKL, images: np.ndarray, plan: TrainingPlan, grids: np.ndarray | None = None
) -> AutoencoderKL:
    """Train the decoder further with the encoder frozen: sharper details (the dot) at the cost
    of decoder passes only, and latents — hence anything trained on them — unchanged.

    With `grids` (N, 64, 64, 3) (world v2's `vae_grids` stage): every other step decodes 2×2
    grids instead of single pictures. The VAE's mid-block attention and group norms see the whole
    picture, so a grid's latent is not its four cells' latents side by side (40–56 % apart) and a
    decoder trained on single pictures turns grids into colour-shifted ones; the inpainting model
    works on grid latents."""
    vae.requires_grad_(False)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in decoder:
        parameter.requires_grad_(True)
    sets = [_posteriors(vae, images)] + ([] if grids is None else [_posteriors(vae, grids)])
    steps = plan.vae_decoder_steps if grids is None else plan.vae_grid_steps
    optimizer = torch.optim.AdamW(decoder, lr=1e-3)
    vae.decoder.train()
    for step in tqdm(range(steps), desc="VAE decoder" if grids is None else "VAE decoder (grids)"):
        _cosine_lr(optimizer, step, steps, 1e-3)
        pixels, mean, std = sets[step % len(sets)]
        index = torch.randint(len(pixels), (32 if step % len(sets) == 0 else 8,))  # a grid is four pictures
        latents = mean[index] + std[index] * torch.randn_like(mean[index])
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, pixels[index]) + 0.5 * F.l1_loss(reconstruction, pixels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vae.requires_grad_(False).eval()


@torch.no_grad()
def _posteriors(vae: AutoencoderKL, images: np.ndarray):
    """(pixels in [−1, 1], posterior means, posterior stds) of (N, H, W, 3) uint8 pictures."""
    pixels = _pixels(images) * 2 - 1
    posteriors = [vae.encode(pixels[i : i + 256]).latent_dist for i in range(0, len(pixels), 256)]
    return pixels, torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])


# --- 4. UNet --------------------------------------------------------------------------------------
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
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
    )


@torch.no_grad()
def encode_captions(text_encoder: CLIPTextModel, tokenizer, texts: list[str]) -> torch.Tensor:
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
    pixels = _pixels(images) * 2 - 1
    latents = torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    return latents * vae.config.scaling_factor if scaled else latents


class Batch(NamedTuple):
    clean: torch.Tensor  # (B, 4, h, w) scaled latents to denoise
    inputs: torch.Tensor | None  # (B, k, h, w) extra input channels, concatenated after the noisy latents
    states: torch.Tensor  # (B, L, WIDTH) text states


def train_denoiser(
    unet: UNet2DConditionModel,
    next_batch,
    steps: int,
    plan: TrainingPlan,
    partial: Path,
    desc: str,
    on_checkpoint=None,
) -> UNet2DConditionModel:
    """v-prediction with AdamW (lr 1e-3, cosine, 200 warm-up steps), gradients clipped at 1; the
    saved weights are an exponential moving average (decay 0.999). `next_batch(step)` gives a
    `Batch`; classifier-free-guidance dropout is its business.

    Every `plan.checkpoint_every` steps the online and EMA weights go to `partial` (resumed from
    there, with a fresh optimiser) and `on_checkpoint(ema)` may write a usable snapshot.
    """
    ema = copy.deepcopy(unet).requires_grad_(False)
    start = 0
    if partial.exists():
        state = load_file(str(partial))
        unet.load_state_dict({k[len("online.") :]: v for k, v in state.items() if k.startswith("online.")})
        ema.load_state_dict({k[len("ema.") :]: v for k, v in state.items() if k.startswith("ema.")})
        with safe_open(str(partial), framework="pt") as handle:
            start = int(handle.metadata()["step"]) + 1
    scheduler = training_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    unet.train()
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps)
    for step in bar:
        _cosine_lr(optimizer, step, steps, 1e-3, warmup=200)
        batch = next_batch(step)
        noise = torch.randn_like(batch.clean)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch.clean),))
        noisy = scheduler.add_noise(batch.clean, noise, t)
        model_input = noisy if batch.inputs is None else torch.cat([noisy, batch.inputs], dim=1)
        prediction = unet(model_input, t, encoder_hidden_states=batch.states).sample
        loss = F.mse_loss(prediction, scheduler.get_velocity(batch.clean, noise, t))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for target, source in zip(ema.parameters(), unet.parameters()):
                target.lerp_(source, 1 - decay)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % plan.checkpoint_every == 0 and step + 1 < steps:
            weights = {f"online.{k}": v.contiguous() for k, v in unet.state_dict().items()}
            weights.update({f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()})
            save_file(weights, str(partial), metadata={"step": str(step)})
            if on_checkpoint is not None:
                on_checkpoint(ema.eval())
    return ema.eval()


def caption_batches(scenes, latents: torch.Tensor, states_of, plan: TrainingPlan):
    """Text-to-image batches: a scene's latent and one of its caption variants, 10 % of captions
    dropped (the empty caption) for classifier-free guidance."""
    keys = [_scene_key(s) for s in scenes]
    texts, choices = [""], {}
    for key, scene in zip(keys, scenes):
        if key not in choices:
            variants = caption_variants(scene)
            choices[key] = list(range(len(texts), len(texts) + len(variants)))
            texts.extend(variants)
    states = states_of(texts)
    options = [choices[k] for k in keys]
    rng = random.Random(plan.seed)

    def next_batch(step: int) -> Batch:
        index = torch.randint(len(latents), (plan.batch,))
        caption = torch.tensor([0 if rng.random() < 0.1 else rng.choice(options[i]) for i in index.tolist()])
        return Batch(latents[index], None, states[caption])

    return next_batch


# --- 5. editor ------------------------------------------------------------------------------------
def edit_pairs(n: int, seed: int, layout_range: float):
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
    rng = random.Random(plan.seed + 1)

    def next_batch(step: int) -> Batch:
        index = torch.randint(len(pairs), (plan.batch,))
        draws = [rng.random() for _ in range(plan.batch)]
        instruction = torch.tensor([0 if p < 0.10 else rng.choice(options[i]) for p, i in zip(draws, index.tolist())])
        keep_image = torch.tensor([not (0.05 <= p < 0.15) for p in draws], dtype=torch.float32).view(-1, 1, 1, 1)
        return Batch(clean[index], source[index] * keep_image, states[instruction])

    return next_batch


# --- 6. inpainting ------------------------------------------------------------------------------
CELLS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (column, row) of the 2×2 grid: A | A′ over B | B′


def grid_picture(pictures: list[Image.Image]) -> Image.Image:
    """Four same-sized pictures as a 2×2 grid, in `CELLS` order (top-left, top-right, bottom-left, bottom-right)."""
    side = pictures[0].width
    grid = Image.new("RGB", (2 * side, 2 * side))
    for picture, (column, row) in zip(pictures, CELLS):
        grid.paste(picture, (column * side, row * side))
    return grid


def cell_mask(cell: int, side: int) -> Image.Image:
    """The inpainting mask of one cell of a 2×2 grid of `side`-pixel pictures: white (repaint) in
    the cell, black elsewhere."""
    mask = Image.new("L", (2 * side, 2 * side), 0)
    column, row = CELLS[cell]
    mask.paste(255, (column * side, row * side, (column + 1) * side, (row + 1) * side))
    return mask


def inpainting_grids(n: int, seed: int, layout_range: float):
    """`n` grids of four independent random scenes, each with one random cell to repaint."""
    rng = random.Random(seed)
    return [([random_scene(rng, layout_range) for _ in CELLS], rng.randrange(len(CELLS))) for _ in range(n)]


def inpainting_batches(grids, vae: AutoencoderKL, states_of, plan: TrainingPlan):
    """SD-inpainting batches: denoise the grid's latent given the mask (1 channel) and the latent
    of the grid with the masked cell blanked (4), captioned by the masked cell's caption (10 %
    dropped). Blanking and mask follow `StableDiffusionInpaintPipeline`: pixels × (mask < 0.5) in
    [−1, 1], the mask resized to the latent grid."""
    pictures = np.stack([np.asarray(grid_picture([render(s) for s in scenes])) for scenes, _ in grids])
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
    rng = random.Random(plan.seed + 2)

    def next_batch(step: int) -> Batch:
        index = torch.randint(len(grids), (plan.inpainting_batch,))
        caption = torch.tensor([0 if rng.random() < 0.1 else rng.choice(options[i]) for i in index.tolist()])
        return Batch(clean[index], torch.cat([latent_masks[index], masked_latents[index]], dim=1), states[caption])

    return next_batch


# --- orchestration --------------------------------------------------------------------------------
def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler.from_config(
        training_scheduler().config, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"
    )


# In training order, except clip_vision and vae_grids (v2), which came last into the plan: they
# change no latent and no text state, so they may run before or after the denoisers.
STAGES = ("classifier", "clip", "vae", "vae_decoder", "unet", "editor", "inpainting", "clip_vision", "vae_grids")
STAGES += ("diff_encoder",)
NEEDS = {"clip": (), "classifier": (), "vae": (), "vae_decoder": ("vae",), "unet": ("clip", "vae_decoder")}
NEEDS.update(editor=("unet",), inpainting=("unet",), clip_vision=("clip",), vae_grids=("vae_decoder",))
NEEDS.update(diff_encoder=("editor", "clip_vision", "vae_grids"))


def train_world(out: Path, plan: TrainingPlan | None = None, stages: list[str] | None = None) -> dict:
    """Train (or resume) every stage into `out` — or only `stages`, whose prerequisites must be
    done; returns the seconds each finished stage took. Several processes may train different
    stages of one directory at once (`training.json` is updated under a lock)."""
    from filelock import FileLock

    from ..errors import DiffinvError

    plan = plan or TrainingPlan()
    known = STAGES if plan.world >= 2 else STAGES[:5]
    unknown = [name for name in stages or () if name not in known]
    if unknown:
        raise DiffinvError(f"unknown stage(s) {', '.join(unknown)}; the stages: {', '.join(known)}")
    out.mkdir(parents=True, exist_ok=True)
    # Tiny weights and softmax gradients drift into subnormal floats, which x86 CPUs compute
    # tens of times slower; flushing them to zero changes nothing measurable in the result.
    torch.set_flush_denormal(True)
    torch.manual_seed(plan.seed)
    timings_path = out / "training.json"
    lock = FileLock(str(out / "training.json.lock"))

    def finished() -> dict:
        with lock:
            return json.loads(timings_path.read_text())["seconds"] if timings_path.exists() else {}

    timings = finished()
    for name in stages or ():
        missing = [need for need in NEEDS[name] if need not in timings and need not in stages]
        if missing:
            raise DiffinvError(f"stage {name} needs {', '.join(missing)} trained first")
    scenes, images = render_dataset(plan.n_images, plan.seed, plan.layout_range)
    tokenizer = word_tokenizer(vocabulary_words(), max_length=TEXT_LENGTH)

    def stage(name: str, work) -> None:
        if name in timings or (stages and name not in stages):  # finished earlier, or not asked for
            return
        torch.manual_seed(plan.seed + STAGES.index(name))  # each stage's draws independent of how the run was split
        start = time.time()
        work()
        with lock:  # another process may have finished a stage meanwhile; other keys (notes) are kept
            record = json.loads(timings_path.read_text()) if timings_path.exists() else {}
            timings.update({**record.get("seconds", {}), name: round(time.time() - start, 1)})
            record.update(plan=asdict(plan), seconds=timings)
            timings_path.write_text(json.dumps(record, indent=1))

    stage("classifier", lambda: train_classifier(scenes, images, plan).save(out / "classifier"))

    def clip_stage():
        clip = train_clip(scenes, images, tokenizer, plan)
        clip.save_pretrained(out / "clip")
        tokenizer.save_pretrained(out / "clip")

    stage("clip", clip_stage)
    stage("vae", lambda: train_vae(images, plan).save_pretrained(out / "vae"))
    stage(
        "vae_decoder",
        lambda: refine_vae_decoder(AutoencoderKL.from_pretrained(out / "vae"), images, plan).save_pretrained(
            out / "vae"
        ),
    )

    def frozen_parts():
        clip = CLIPModel.from_pretrained(out / "clip")
        text_encoder = CLIPTextModel(clip.config.text_config)
        text_encoder.load_state_dict(clip.text_model.state_dict())
        return text_encoder.eval(), AutoencoderKL.from_pretrained(out / "vae").eval()

    def pipeline_saver(pipeline_class, directory: Path, text_encoder, half: bool = False):
        """Saves a complete pipeline around a UNet; `half`: the UNet's weights stored in float16
        (diffusers loads them into a float32 model by default), which keeps the bundle small. The
        VAE is read from the world's directory at each save: another process's `vae_grids` stage
        may have refined its decoder since this stage began."""

        def save(unet: UNet2DConditionModel) -> None:
            pipeline_class(
                vae=AutoencoderKL.from_pretrained(out / "vae").eval(),
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=copy.deepcopy(unet).half() if half else unet,
                scheduler=sampling_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            ).save_pretrained(directory)

        return save

    def denoiser_stage(name, directory, pipeline_class, make_unet, make_batches, steps) -> None:
        text_encoder, vae = frozen_parts()
        # The editor and the inpainting model repeat the world's VAE and text encoder (each is a
        # complete pipeline directory): their UNets are stored in float16 to keep the bundle small.
        save = pipeline_saver(pipeline_class, directory, text_encoder, half=directory != out)
        partial = out / f"{name}-partial.safetensors"
        next_batch = make_batches(vae, lambda texts: encode_captions(text_encoder, tokenizer, texts))
        save(train_denoiser(make_unet(), next_batch, steps, plan, partial, name, on_checkpoint=save))
        partial.unlink(missing_ok=True)

    def text_to_image_unet() -> UNet2DConditionModel:
        return UNet2DConditionModel.from_pretrained(out / "unet")

    stage(
        "unet",
        lambda: denoiser_stage(
            "unet",
            out,
            StableDiffusionPipeline,
            build_unet,
            lambda vae, states_of: caption_batches(scenes, encode_pictures(vae, images), states_of, plan),
            plan.unet_steps,
        ),
    )
    if plan.world >= 2:
        stage(
            "editor",
            lambda: denoiser_stage(
                "editor",
                out / EDITOR_DIR,
                StableDiffusionInstructPix2PixPipeline,
                lambda: widened_from(text_to_image_unet(), 8, RESOLUTION // 4),
                lambda vae, states_of: editor_batches(
                    edit_pairs(plan.n_edit_pairs, plan.seed + 1, plan.layout_range), vae, states_of, plan
                ),
                plan.editor_steps,
            ),
        )
        stage(
            "inpainting",
            lambda: denoiser_stage(
                "inpainting",
                out / INPAINTING_DIR,
                StableDiffusionInpaintPipeline,
                lambda: widened_from(text_to_image_unet(), 9, 2 * RESOLUTION // 4),
                lambda vae, states_of: inpainting_batches(
                    inpainting_grids(plan.n_grids, plan.seed + 2, plan.layout_range), vae, states_of, plan
                ),
                plan.inpainting_steps,
            ),
        )

        def clip_vision_stage():
            clip = refine_clip_vision(CLIPModel.from_pretrained(out / "clip"), scenes, images, tokenizer, plan)
            clip.save_pretrained(out / "clip")

        stage("clip_vision", clip_vision_stage)

        def vae_grids_stage():
            grids = np.stack(
                [
                    np.asarray(grid_picture([render(s) for s in scenes]))
                    for scenes, _ in inpainting_grids(plan.n_grids, plan.seed + 3, plan.layout_range)
                ]
            )
            vae = refine_vae_decoder(AutoencoderKL.from_pretrained(out / "vae"), images, plan, grids)
            # every pipeline directory of the world holds a copy of the VAE
            for directory in (out, out / EDITOR_DIR, out / INPAINTING_DIR):
                if (directory / "vae").is_dir():
                    vae.save_pretrained(directory / "vae")

        stage("vae_grids", vae_grids_stage)

        def diff_encoder_stage():
            from ..backbone_editor import InstructPix2PixBackbone
            from ..clip_space import ClipSpace
            from ..diff_encoder import ENCODER_DIR, train_diff_encoder

            backbone = InstructPix2PixBackbone.from_pretrained(str(out / EDITOR_DIR), "cpu", torch.float32)
            clip = ClipSpace.from_pretrained(str(out / "clip"), "cpu", torch.float32)
            # The editor's own training pairs: the encoder sees no edit the editor did not.
            pairs = edit_pairs(plan.n_edit_pairs, plan.seed + 1, plan.layout_range)
            partial = out / "diff_encoder-partial.safetensors"
            encoder = train_diff_encoder(
                backbone,
                clip,
                [render(before) for before, _, _ in pairs],
                [render(after) for _, after, _ in pairs],
                plan.diff_encoder_steps,
                checkpoint=partial,
                checkpoint_every=plan.checkpoint_every,
                generator=torch.Generator().manual_seed(plan.seed + 4),
            )
            encoder.save_pretrained(out / EDITOR_DIR / ENCODER_DIR)
            partial.unlink(missing_ok=True)

        stage("diff_encoder", diff_encoder_stage)
    timings = finished()
    # Once its text-to-image models are done the directory is a world (benches and checks can run
    # while the editor and the inpainting model still train): describe it, and again as they finish.
    if all(name in timings for name in known if name not in BESIDE_THE_WORLD):
        (out / "captions.txt").write_text(
            "\n".join(canonical_caption(s) for s in all_scenes()) + "\n", encoding="utf-8"
        )
        write_descriptor(out, **world_descriptor(plan, trained=timings))
    if "editor" in timings:
        write_descriptor(out / EDITOR_DIR, **editor_descriptor(plan, trained=timings))
    return timings


# The denoiser stages, the plan field that counts their steps, and the directory of their UNet.
DENOISER_STAGES = {"unet": ("unet_steps", "."), "editor": ("editor_steps", EDITOR_DIR)}
DENOISER_STAGES["inpainting"] = ("inpainting_steps", INPAINTING_DIR)


def extend_stage(out: Path, name: str, steps: int) -> TrainingPlan:
    """Make a finished denoiser stage of the world in `out` ready for another leg, to `steps` in all.

    Its saved UNet (the EMA weights, float32 again if stored in float16) becomes the stage's
    checkpoint at the step it had reached, as both online and EMA weights (the optimiser starts
    afresh); the stage leaves `training.json`, where a note records the leg. Returns the plan
    `training.json` recorded, with the stage's steps raised to `steps`: `train_world(out, plan,
    [name])` then trains steps reached … steps − 1 of a `steps`-step cosine schedule. Called again
    while that leg is unfinished (interrupted), it changes nothing and returns the same plan, so
    the same command resumes the leg.
    """
    from filelock import FileLock

    from ..errors import DiffinvError

    if name not in DENOISER_STAGES:
        raise DiffinvError(f"only a denoiser stage can be extended ({', '.join(DENOISER_STAGES)}), not {name!r}")
    field, directory = DENOISER_STAGES[name]
    timings_path, partial = out / "training.json", out / f"{name}-partial.safetensors"
    with FileLock(str(out / "training.json.lock")):
        record = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        if name not in record.get("seconds", {}):
            if not partial.exists():
                raise DiffinvError(f"stage {name} has not been trained in {out}; train it first")
            with safe_open(str(partial), framework="pt") as handle:
                reached = int(handle.metadata()["step"]) + 1
            if not isinstance(steps, int) or steps <= reached:
                raise DiffinvError(f"stage {name} is at step {reached}; extend it to more than that, not {steps!r}")
            return replace(TrainingPlan(**record["plan"]), **{field: steps})  # an unfinished leg: resume it
        plan = TrainingPlan(**record["plan"])
        reached = getattr(plan, field)
        if not isinstance(steps, int) or steps <= reached:
            raise DiffinvError(f"stage {name} has had {reached} steps; extend it to more than that, not {steps!r}")
        unet = UNet2DConditionModel.from_pretrained(out / directory / "unet").float()
        weights = {k: v.contiguous() for k, v in unet.state_dict().items()}
        checkpoint = {f"online.{k}": v for k, v in weights.items()} | {
            f"ema.{k}": v.clone() for k, v in weights.items()
        }
        save_file(checkpoint, str(partial), metadata={"step": str(reached - 1)})
        del record["seconds"][name]
        leg = f"resumed from the {reached}-step weights for steps {reached}-{steps - 1} of a {steps}-step schedule"
        notes = record.setdefault("notes", {})
        notes[name] = f"{notes[name]}; then {leg}" if name in notes else leg
        timings_path.write_text(json.dumps(record, indent=1))
    return replace(plan, **{field: steps})


if __name__ == "__main__":
    import sys

    print(train_world(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("shapes-model")))
