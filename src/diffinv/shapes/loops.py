"""One optimisation loop per network of the shapes world: the attribute classifier, CLIP, the VAE and
the denoisers (text-to-image, editor, inpainting share one loop). Each takes its data and the plan
and returns the trained network; saving it, and the order of the stages, is `shapes.train`'s.

Every loop runs AdamW on `schedules.cosine_lr`, and draws from torch's global generator, which
`shapes.train` seeds per stage.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPModel

from ..clip_space import CLIP_MEAN, CLIP_STD
from ..schedules import cosine_lr
from .classifier import AttributeClassifier, targets
from .data import scene_key
from .descriptor import TrainingPlan
from .networks import TEXT_LENGTH, build_clip, build_vae, to_pixels, training_scheduler
from .world import ATTRIBUTES, caption_variants, random_scene, render


# --- the attribute classifier --------------------------------------------------------------------
def train_classifier(scenes, images: np.ndarray, plan: TrainingPlan) -> AttributeClassifier:
    """Cross-entropy per attribute on perturbed renders; world v2 adds the centre (smooth L1 in
    pixels) and sets the layout threshold from the trained classifier's own centre error."""
    model = AttributeClassifier(centre=plan.world >= 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    pixels, labels = to_pixels(images), targets(scenes)
    centres = torch.tensor([[s.dx, s.dy] for s in scenes], dtype=torch.float32)
    for step in tqdm(range(plan.classifier_steps), desc="classifier"):
        cosine_lr(optimizer, step, plan.classifier_steps, 2e-3)
        index = torch.randint(len(scenes), (plan.classifier_batch,))
        outputs = model(_perturb(pixels[index]))
        loss = sum(F.cross_entropy(outputs[k], labels[k][index]) for k in ATTRIBUTES)
        if model.centre is not None:
            loss = loss + F.smooth_l1_loss(outputs["centre"], centres[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    if model.centre is not None:
        errors = centre_errors(
            model, plan.layout_range, n=plan.layout_check_renders, seed=plan.stream("layout check", 7)
        )
        model.layout_threshold = layout_threshold(errors)
    return model


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


def centre_errors(
    classifier: AttributeClassifier, layout_range: float, n: int = 1000, seed: int | str = 7
) -> np.ndarray:
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


# --- CLIP ------------------------------------------------------------------------------------------
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


def _clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _contrastive(model: CLIPModel, parameters, scenes, images, tokenizer, plan: TrainingPlan, steps: int, desc: str):
    """Symmetric InfoNCE over `parameters`, a random caption variant per picture, with every
    picture of the same attribute values a positive (soft targets)."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.05)
    pixels = _clip_pixels(to_pixels(images))
    keys = [scene_key(s) for s in scenes]
    variants = {key: caption_variants(s) for key, s in zip(keys, scenes)}
    rng = random.Random(plan.stream("CLIP captions", 0))
    model.train()
    for step in tqdm(range(steps), desc=desc):
        cosine_lr(optimizer, step, steps, 1e-3)
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


# --- the VAE ---------------------------------------------------------------------------------------
def train_vae(images: np.ndarray, plan: TrainingPlan) -> AutoencoderKL:
    """Reconstruction (MSE + ½ L1) with a tiny KL term; the scaling factor makes latents unit-std."""
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    pixels = to_pixels(images) * 2 - 1
    for step in tqdm(range(plan.vae_steps), desc="VAE"):
        cosine_lr(optimizer, step, plan.vae_steps, 1e-3)
        x = pixels[torch.randint(len(pixels), (plan.vae_batch,))]
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
        cosine_lr(optimizer, step, steps, 1e-3)
        pixels, mean, std = sets[step % len(sets)]
        batch = plan.vae_batch if step % len(sets) == 0 else max(1, plan.vae_batch // 4)  # a grid is four pictures
        index = torch.randint(len(pixels), (batch,))
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
    pixels = to_pixels(images) * 2 - 1
    posteriors = [vae.encode(pixels[i : i + 256]).latent_dist for i in range(0, len(pixels), 256)]
    return pixels, torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])


# --- the denoisers ---------------------------------------------------------------------------------
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
    `data.Batch`; classifier-free-guidance dropout is its business.

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
        cosine_lr(optimizer, step, steps, 1e-3, warmup=200)
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
