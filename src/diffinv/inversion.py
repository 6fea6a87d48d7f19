"""Algorithm 1 of Difference Inversion, one named function per step.

    ① caption_pair           cap_A, cap_A′ from the captioner
    ② interpolated_delta     D_inter = slerp(E_I(A′) − E_I(A), E_T(cap_A′) − E_T(cap_A); α)
    ③ prompt_pair            prompt_A, prompt_A′ (PEZ or the captions);  latent_pair: z_A, z_A′
    ④ init_diff_tokens       D̃ ← 0
    ⑤ noised_pair            t, ε ~ U{0…T−1}, N(0, I) independently for A and A′; q(z, t, ε)
    ⑥ token_consistency_loss ε_θ(z_A,t, {prompt_A′, −D̃}) and ε_θ(z_A′,t, {prompt_A, +D̃}), one UNet call
    ⑦ clip_loss              1 − cos(D̃ in CLIP space, D_inter)
       fit_diff_tokens       the loop: L = λ_tc L_tc + λ_clip L_clip, AdamW on D̃ only

Everything else (UNet, VAE, text encoders, CLIP) is frozen; D̃ is the only leaf with a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .backbone import StableDiffusionBackbone
from .captioners import Captioner
from .clip_space import ClipSpace, delta, slerp
from .config import InversionConfig
from .errors import DiffinvError
from .pez import invert_prompt, project_straight_through, usable_token_mask


@dataclass
class PreparedPair:
    """What steps ①–③ compute from (A, A′) before the optimisation."""

    caption_a: str
    caption_a_prime: str
    prompt_a: str
    prompt_a_prime: str
    target_delta: torch.Tensor  # (D,) unit vector D_inter in CLIP's joint space
    latents: torch.Tensor  # (2, C, h, w): z_A, z_A′ (scaled VAE latents)


# ① ---------------------------------------------------------------------------------------
def caption_pair(captioner: Captioner, a: Image.Image, a_prime: Image.Image) -> tuple[str, str]:
    caption_a, caption_a_prime = captioner([a, a_prime])
    return caption_a, caption_a_prime


# ② ---------------------------------------------------------------------------------------
def interpolated_delta(
    clip: ClipSpace, a: Image.Image, a_prime: Image.Image, caption_a: str, caption_a_prime: str, alpha: float
) -> torch.Tensor:
    """D_inter (D,): slerp between the image delta (α = 0) and the text delta (α = 1)."""
    image = clip.image_features([a, a_prime])
    text = clip.text_features([caption_a, caption_a_prime])
    return slerp(delta(image[0], image[1]), delta(text[0], text[1]), alpha)


# ③ ---------------------------------------------------------------------------------------
def prompt_pair(
    clip: ClipSpace,
    a: Image.Image,
    a_prime: Image.Image,
    captions: tuple[str, str],
    config: InversionConfig,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[str, str]:
    """prompt_A, prompt_A′: PEZ hard prompts (the paper) or the captions (faster)."""
    if config.prompt_source == "caption":
        return captions
    return pez_prompt(clip, a, config, generator, progress), pez_prompt(clip, a_prime, config, generator, progress)


def pez_prompt(
    clip: ClipSpace,
    image: Image.Image,
    config: InversionConfig,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> str:
    """A PEZ hard prompt for one image with the config's PEZ settings (also used for prompt_B)."""
    return invert_prompt(
        clip,
        [image],
        config.pez_prompt_len,
        config.pez_steps,
        config.pez_lr,
        config.pez_weight_decay,
        generator,
        progress,
    )


def latent_pair(backbone: StableDiffusionBackbone, a: Image.Image, a_prime: Image.Image) -> torch.Tensor:
    """(2, C, h, w): z_A and z_A′ (the two images must have the same size)."""
    return backbone.encode_images([a, a_prime])


# ④ ---------------------------------------------------------------------------------------
def init_diff_tokens(
    config: InversionConfig,
    backbone: StableDiffusionBackbone,
    generator: torch.Generator | None = None,
    count: int = 1,
) -> torch.Tensor:
    """D̃ (count, n, d), float32, requires grad — one set per pair fitted together: zeros (the
    paper), or random at the vocabulary's scale."""
    shape = (count, config.n_tokens, backbone.token_width)
    if config.init == "zeros":
        tokens = torch.zeros(shape, device=backbone.device)
    else:
        scale = backbone.vocabulary.float().std().item()
        tokens = torch.randn(shape, generator=generator, device=backbone.device) * scale
    return tokens.requires_grad_(True)


# ⑤ ---------------------------------------------------------------------------------------
def noised_pair(
    backbone: StableDiffusionBackbone, latents: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy, timesteps, targets) for latents (2K, C, h, w) = (z_A, z_A′) of K pairs: a timestep
    ~ U{0…T−1} and ε ~ N(0, I) drawn independently for every row; targets are what the UNet
    should output."""
    timesteps = torch.randint(
        0, backbone.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
    )
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return backbone.add_noise(latents, noise, timesteps), timesteps, backbone.loss_target(latents, noise, timesteps)


# ⑥ ---------------------------------------------------------------------------------------
def signed_pair(diff: torch.Tensor) -> torch.Tensor:
    """(2K, n, d) from D̃ (K, n, d): rows −D̃_k ("before") and +D̃_k ("after") for each pair k."""
    return torch.stack([-diff, diff], dim=1).flatten(0, 1)


def token_consistency_loss(
    backbone: StableDiffusionBackbone,
    diff: torch.Tensor,
    ids: torch.Tensor,
    slot_mask: torch.Tensor,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """L_tc (eqs. 7–9) of K pairs (K,), both branches of all pairs in one text-encoder and one
    UNet call.

    For pair k, row 2k ("before"): z_A,t denoised with {prompt_A′, −D̃_k}; row 2k+1 ("after"):
    z_A′,t with {prompt_A, +D̃_k}. diff: (K, n, d); `ids`/`slot_mask` (2K, L) hold prompt_A′ and
    prompt_A of each pair in that order; noisy/targets (2K, C, h, w), timesteps (2K,).
    Each pair's loss is the sum of its two rows' mean squared errors and depends on its own D̃_k only.
    """
    text_states = backbone.encode_prompt(ids, slot_mask, signed_pair(diff))
    prediction = backbone.predict(noisy, timesteps, text_states)
    row_errors = (prediction.float() - targets.float()).pow(2).mean(dim=(1, 2, 3))
    return row_errors.view(-1, 2).sum(dim=1)


# ⑦ ---------------------------------------------------------------------------------------
def clip_loss(clip: ClipSpace, diff: torch.Tensor, target_delta: torch.Tensor, space: str) -> torch.Tensor:
    """L_clip (eq. 6) of K pairs (K,): cosine distance between D̃_k (K, n, d), brought into CLIP's
    joint space, and D_inter of pair k (K, D)."""
    features = clip.slot_features(diff) if space == "text-tower" else diff.mean(dim=1)  # else "token-mean"
    return 1 - F.cosine_similarity(features.float(), target_delta.float(), dim=-1)


def check_compatible(backbone: StableDiffusionBackbone, clip: ClipSpace, config: InversionConfig) -> None:
    """Refuse combinations whose spaces do not match, before any work is done."""
    if (
        clip.vocabulary.shape[1] != backbone.token_width
        and config.use_clip_loss
        and config.clip_loss_space == "text-tower"
    ):
        raise DiffinvError(
            f"the CLIP text tower has token width {clip.vocabulary.shape[1]} but the model's text encoder "
            f"{backbone.token_width}; use the CLIP that matches the model (--clip-model)"
        )
    if config.use_clip_loss and config.clip_loss_space == "token-mean" and clip.joint_width != backbone.token_width:
        raise DiffinvError(
            f"clip_loss_space='token-mean' needs token width = CLIP joint width, got {backbone.token_width} "
            f"and {clip.joint_width}; use clip_loss_space='text-tower'"
        )


# The loop ------------------------------------------------------------------------------------
def fit_diff_tokens(
    backbone: StableDiffusionBackbone,
    clip: ClipSpace,
    pairs: PreparedPair | list[PreparedPair],
    config: InversionConfig,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[dict[str, list[float]]]]:
    """Steps ④–⑦ repeated `config.steps` times, for one pair or for K independent pairs at once.

    K pairs share every text-encoder, UNet and CLIP call (batch 2K), but each pair's loss depends
    on its own D̃_k only and AdamW works element-wise, so each D̃_k follows the same dynamics as a
    fit on its own (with other noise draws). Latents of all pairs must have one size.
    Returns D̃ (K, n, d) float32 — (n, d) if one pair was passed — and each pair's per-step
    history of the three losses. With `config.hard_tokens` the forward passes used the
    projection; `harden` finishes it.
    """
    single = isinstance(pairs, PreparedPair)
    pairs = [pairs] if single else pairs
    check_compatible(backbone, clip, config)
    if len({tuple(p.latents.shape) for p in pairs}) > 1:
        raise DiffinvError("pairs fitted together must have latents of one size; group them by size")
    latents = torch.cat([p.latents for p in pairs])  # (2K, C, h, w): z_A, z_A′ of each pair
    target_delta = torch.stack([p.target_delta for p in pairs])  # (K, D)
    ids, slot_mask = backbone.slot_ids(
        [prompt for p in pairs for prompt in (p.prompt_a_prime, p.prompt_a)], config.n_tokens
    )
    diff = init_diff_tokens(config, backbone, generator, count=len(pairs))
    optimizer = torch.optim.AdamW([diff], lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(backbone.device.type, enabled=backbone.dtype == torch.float16)
    vocabulary = backbone.vocabulary.detach()
    usable = usable_token_mask(backbone.tokenizer, vocabulary.shape[0], vocabulary.device)
    zero = torch.zeros(len(pairs), device=backbone.device)
    history = []

    bar = tqdm(range(config.steps), desc="DIFF tokens", disable=not progress, leave=False)
    for step in bar:
        used = project_straight_through(diff, vocabulary, usable)[0] if config.hard_tokens else diff
        loss_tc = (
            token_consistency_loss(backbone, used, ids, slot_mask, *noised_pair(backbone, latents, generator))
            if config.use_token_consistency
            else zero
        )
        loss_clip = clip_loss(clip, used, target_delta, config.clip_loss_space) if config.use_clip_loss else zero
        loss = config.lambda_tc * loss_tc + config.lambda_clip * loss_clip  # (K,): one per pair

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        history.append(torch.stack([loss.detach(), loss_tc.detach(), loss_clip.detach()], dim=1))  # (K, 3)
        if step % 50 == 0:
            bar.set_postfix(tc=f"{loss_tc.mean().item():.4f}", clip=f"{loss_clip.mean().item():.4f}")

    trace = torch.stack(history, dim=1).cpu().tolist() if history else [[] for _ in pairs]  # (K, steps, 3)
    curves = [
        {name: [row[i] for row in rows] for i, name in enumerate(("loss", "loss_tc", "loss_clip"))} for rows in trace
    ]
    diff = diff.detach().float()
    return (diff[0], curves[0]) if single else (diff, curves)
