"""Drawing B′ from an inversion of B: the samplers every backbone shares.

A backbone's `sample` draws from noise or by SDEdit through its diffusers pipeline; the inversion
modes are written here once, against the small backbone interface (`encode_images`,
`decode_latents`, `predict`, `stack_states`, `unconditional_states`, `pipe`'s scheduler config and
progress bar), so that SD 1.x / 2.x and SDXL run the same loops:

    from_inversion            the dispatch on `DrawSettings.inversion`, and what it refuses
    from_ddim_inversion       DDIM inversion of B, then DDIM denoising (+ shared attention, edit
                              mask, direct inversion)
    from_edit_friendly_inversion   edit-friendly DDPM inversion, then denoising that adds its noise back
    guided_prediction         one UNet call with classifier-free guidance, given the prediction callable
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from PIL import Image

from .backbones.shared_attention import sharing_self_attention
from .config import DrawSettings
from .errors import DiffinvError

# What `guided_prediction` calls: the backbone's `predict(noisy, timesteps, text_states)`.
Predict = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def check_inversion_options(settings: DrawSettings) -> None:
    """Refuse attention sharing, the edit mask and direct inversion outside DDIM inversion: each
    compares B′ with B's DDIM inversion path, which no other mode has."""
    if settings.mode != "inversion" and (settings.share_attention or settings.edit_mask or settings.direct_inversion):
        raise DiffinvError(
            "attention sharing, the edit mask and direct inversion work with DDIM inversion only "
            f"(mode 'inversion'), not mode {settings.mode!r}"
        )


def from_inversion(
    backbone,
    text_states,
    image: Image.Image | None,
    invert_states,
    negative_states,
    settings: DrawSettings,
    generator: torch.Generator,
    progress: bool,
) -> Image.Image:
    """B′ (an image at `image`'s size) from an inversion of `image` under `invert_states`, drawn with
    `text_states` (one row each; the backbone's text states): `settings.inversion` "ddim"
    (`from_ddim_inversion`; `generator` unused) or "edit-friendly" (`from_edit_friendly_inversion`)."""
    if image is None:
        raise DiffinvError("inversion needs an image to invert")
    if invert_states is None:
        raise DiffinvError("inversion needs the text states the image is inverted under (invert_states)")
    check_inversion_options(settings)
    if settings.inversion == "edit-friendly":
        return from_edit_friendly_inversion(
            backbone, text_states, image, invert_states, negative_states, settings, generator, progress
        )
    if settings.inversion != "ddim":
        raise DiffinvError(f"mode {settings.mode!r} draws from no inversion")
    return from_ddim_inversion(backbone, text_states, image, invert_states, negative_states, settings, progress)


def ddim_config(backbone) -> dict:
    """The model's scheduler config for DDIM. DDIM and its inverse only space timesteps
    "leading" or "trailing"; another spacing (e.g. "linspace") is replaced by "leading"."""
    config = dict(backbone.pipe.scheduler.config)
    if config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
        config["timestep_spacing"] = "leading"
    return config


def from_ddim_inversion(
    backbone,
    text_states,
    image: Image.Image,
    invert_states,
    negative_states,
    settings: DrawSettings,
    progress: bool,
) -> Image.Image:
    """Deterministic DDIM inversion of `image`, then DDIM denoising with guidance; B′ at `image`'s size.

    Timesteps: those img2img at `settings.strength` denoises with a DDIM scheduler of
    `settings.steps` steps, the last k = int(steps × strength) of the schedule. The VAE posterior
    mean of `image` is carried up through them by diffusers' `DDIMInverseScheduler` (the model's
    betas and prediction type; at each step the UNet's conditional prediction on `invert_states`,
    i.e. guidance 1, evaluated at the current, lower noise level — the usual DDIM-inversion
    approximation), then brought back down by `DDIMScheduler` (η = 0) on the same timesteps with
    `text_states` and classifier-free guidance (`negative_states`, else the empty prompt, as the
    unconditional branch). With `text_states` = `invert_states` and guidance ≤ 1 the round trip
    reconstructs the latent of `image` up to that approximation. Costs k UNet calls for the
    inversion plus k (batch 2 when guided) for the denoising.

    share_attention: over the first round(k × share_attention) denoising steps, the
    reconstruction of `image` (under `invert_states`, guided alike) is denoised beside the
    drawing, in one batch, and the drawing's self-attention probabilities are the
    reconstruction's (`backbones.shared_attention`); those steps cost a batch twice as large.

    edit_mask > 0 (DiffEdit's mask and masked decoding, with the mask read off the inversion):
    each inversion step also predicts the noise under `text_states`, in the same batch; the
    mask (1, 1, h, w) is where the mean over channels of |ε(text_states) − ε(invert_states)|,
    summed over the steps, reaches `edit_mask` × its maximum. After every denoising step the
    latents outside the mask are replaced by the inversion's latents at that noise level (B's
    clean latent after the last step), so only the masked region is redrawn.

    direct_inversion (Direct Inversion, Ju et al., ICLR 2024): the reconstruction of `image` is
    denoised beside the drawing at every step, as for attention sharing; after each step the
    reconstruction's gap to the inversion path at that level — the error that guidance and the
    inversion's approximation made — is added to the drawing, and the reconstruction is put
    back on the path. With `text_states` = `invert_states` the drawing is B's latent exactly,
    at any guidance; otherwise it moves from B only as far as the text states move the
    predictions. The denoising batch doubles.
    """
    steps, guidance_scale = settings.steps, settings.guidance_scale
    edit_mask, direct_inversion = settings.edit_mask, settings.direct_inversion
    config = ddim_config(backbone)
    scheduler = DDIMScheduler.from_config(config)
    inverse = DDIMInverseScheduler.from_config(config)
    scheduler.set_timesteps(steps, device=backbone.device)
    inverse.set_timesteps(steps)  # its step size: num_train_timesteps // steps, as DDIM's
    timesteps = last_timesteps(scheduler, steps, settings.strength)
    latents = backbone.encode_images([image]).to(backbone.dtype)
    invert_states = invert_states.to(backbone.dtype)
    states = guidance_states(backbone, text_states, negative_states, guidance_scale)
    backbone.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="inverting and sampling")
    path = [latents] if edit_mask or direct_inversion else None  # B's inversion path, clean latent first
    if edit_mask:  # where D̃ changes the prediction
        difference = torch.zeros_like(latents[:, :1])
        both_states = backbone.stack_states([invert_states, text_states.to(backbone.dtype)])
    with backbone.pipe.progress_bar(total=2 * len(timesteps)) as bar:
        for t in timesteps.flip(0):
            if edit_mask:
                noise_pred, edited = backbone.predict(torch.cat([latents, latents]), t.expand(2), both_states).chunk(2)
                difference += (edited - noise_pred).abs().mean(dim=1, keepdim=True)
            else:
                noise_pred = backbone.predict(latents, t.expand(1), invert_states)
            latents = inverse.step(noise_pred, int(t), latents).prev_sample
            if path is not None:
                path.append(latents)
            bar.update()
        mask = None
        if edit_mask:  # 1 where B′ is drawn; no difference at all (D̃ = 0) keeps all of B
            largest = difference.max()
            mask = (difference >= edit_mask * largest) & (largest > 0)
        shared_steps = round(len(timesteps) * settings.share_attention)
        source_states = guidance_states(backbone, invert_states, negative_states, guidance_scale)
        source = latents  # B's reconstruction, denoised beside B′ while attention is shared or corrected
        with sharing_self_attention(backbone.unet) if shared_steps else nullcontext() as sharing:
            for i, t in enumerate(timesteps):
                level = path[len(timesteps) - 1 - i] if path is not None else None  # B's path, one step down
                if i < shared_steps or direct_inversion:
                    if sharing is not None:
                        sharing.active = i < shared_steps
                    both = torch.cat([source, latents])
                    both_states = backbone.stack_states([source_states, states])
                    noise_pred = guided_prediction(backbone.predict, scheduler, both, t, both_states, guidance_scale)
                    source, latents = scheduler.step(noise_pred, int(t), both, eta=0.0).prev_sample.chunk(2)
                    if sharing is not None:
                        sharing.active = False
                    if direct_inversion:  # the reconstruction's error, taken out of B′ too
                        latents, source = latents + (level - source), level
                else:
                    noise_pred = guided_prediction(backbone.predict, scheduler, latents, t, states, guidance_scale)
                    latents = scheduler.step(noise_pred, int(t), latents, eta=0.0).prev_sample
                if mask is not None:  # back on B's path outside the mask, at the level just reached
                    latents = torch.where(mask, latents, level)
                bar.update()
    return backbone.decode_latents(latents)[0]


def from_edit_friendly_inversion(
    backbone,
    text_states,
    image: Image.Image,
    invert_states,
    negative_states,
    settings: DrawSettings,
    generator: torch.Generator,
    progress: bool,
) -> Image.Image:
    """Edit-friendly DDPM inversion of `image` (Huberman-Spiegelglas, Kulikov & Michaeli,
    CVPR 2024), then DDPM denoising with `text_states` that adds its noise back; B′ at `image`'s size.

    On the timesteps `from_ddim_inversion` uses, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε_t is drawn for each
    t with its own noise ε_t from `generator` (x_0: the latent of `image`). The residual
    r_t = x_{t−1} − μ(x_t) is what takes the DDPM step (DDIM at η = 1) under `invert_states`,
    guided as the denoising is, exactly from x_t to x_{t−1}; the last step lands on x_0
    itself. Denoising then starts from the top x_t and adds r_t to each step's mean under
    `text_states`. With `text_states` = `invert_states` it gives back x_0 bit for bit,
    whatever the guidance; other states change the picture only as far as
    they change the means. Costs k UNet calls (batch 2 when guided) for the inversion and as
    many for the denoising, k = int(steps × strength).
    """
    steps, guidance_scale = settings.steps, settings.guidance_scale
    scheduler = DDIMScheduler.from_config(ddim_config(backbone))
    scheduler.set_timesteps(steps, device=backbone.device)
    timesteps = last_timesteps(scheduler, steps, settings.strength)
    clean = backbone.encode_images([image]).to(backbone.dtype)
    noisy = [
        scheduler.add_noise(clean, torch.randn(clean.shape, generator=generator).to(clean), t.reshape(1))
        for t in timesteps
    ] + [clean]
    inversion_states = guidance_states(backbone, invert_states, negative_states, guidance_scale)
    states = guidance_states(backbone, text_states, negative_states, guidance_scale)

    def mean(latents: torch.Tensor, t: torch.Tensor, conditioning) -> torch.Tensor:
        prediction = guided_prediction(backbone.predict, scheduler, latents, t, conditioning, guidance_scale)
        step = scheduler.step(prediction, int(t), latents, eta=1.0, variance_noise=torch.zeros_like(latents))
        return step.prev_sample

    backbone.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="inverting and sampling")
    with backbone.pipe.progress_bar(total=2 * len(timesteps)) as bar:
        inverted_means = []
        for i, t in enumerate(timesteps):
            inverted_means.append(mean(noisy[i], t, inversion_states))
            bar.update()
        latents = noisy[0]
        for i, t in enumerate(timesteps):
            # x_{t−1} + (μ − μ_inv) is μ + r_t, written so that equal means give x_{t−1} bit for bit
            latents = noisy[i + 1] + (mean(latents, t, states) - inverted_means[i])
            bar.update()
    return backbone.decode_latents(latents)[0]


def last_timesteps(scheduler, steps: int, strength: float) -> torch.Tensor:
    """The last k = int(steps × strength) of `scheduler`'s timesteps (k,), descending: those
    img2img at `strength` denoises."""
    return scheduler.timesteps[steps - min(int(steps * strength), steps) :]


def guidance_states(backbone, text_states, negative_states, guidance_scale: float):
    """`text_states` (n rows) in the backbone's dtype, with the unconditional branch
    (`negative_states`, else the empty prompt's) stacked in front when guided (guidance_scale > 1)."""
    states = text_states.to(backbone.dtype)
    if guidance_scale <= 1:
        return states
    uncond = backbone.unconditional_states() if negative_states is None else negative_states
    return backbone.stack_states([uncond.to(backbone.dtype), states])


def guided_prediction(
    predict: Predict, scheduler, latents: torch.Tensor, t: torch.Tensor, states, guidance_scale: float
) -> torch.Tensor:
    """The UNet's predictions (n, C, h, w) for `latents` (n, C, h, w) at timestep `t`, row i
    under the i-th of n `guidance_states` stacked in `states` (2n rows when guided, n
    otherwise), combined by classifier-free guidance when guided. The UNet's batch is the
    rows in order, each latent repeated for its two branches: [x₁, x₁, x₂, x₂, …].

    predict: the backbone's `predict(noisy, timesteps, text_states)`."""
    guided = guidance_scale > 1
    model_input = latents.repeat_interleave(2, dim=0) if guided else latents
    model_input = scheduler.scale_model_input(model_input, t)
    prediction = predict(model_input, t.expand(len(model_input)), states)
    if not guided:
        return prediction
    uncond_pred, cond_pred = prediction.view(len(latents), 2, *prediction.shape[1:]).unbind(1)
    return uncond_pred + guidance_scale * (cond_pred - uncond_pred)
