"""DIA, Diffusion Image Analogies (Šubrtová, Lukáč, Čech, Futschik, Shechtman & Sýkora,
SIGGRAPH 2023), as a baseline, following its official code on Stable Diffusion 1.x.

What the code does (the paper calls the inverted conditionings "CLIP features"; in the code
they are CLIP *text* token embeddings estimated with a diffusion loss, not outputs of a CLIP
image encoder):

1. Each image is padded to a square with black (centred) and resized to 512 × 512.
2. Conditioning inversion, for A, A′ and B separately: the 77 input token embeddings of the
   text encoder start as those of the empty prompt (<bos> then padding); the first 10
   positions (the <bos> one included) are learned with the diffusion loss
   ‖ε − ε_θ(√ᾱ_t z + √(1 − ᾱ_t) ε, t, E_T(tokens))‖² on a batch of 8 views of the image (itself,
   its mirror image, 6 random square crops of 85–99 % of its area, resized back), each view
   with its own DDIM timestep — a random permutation of the first 8 of the 10 DDIM timesteps,
   fixed for the run — and fresh noise per step. AdamW, lr 0.01, 10 steps.
3. Noise inversion of B: the start noise x_T, initialised as the forward process of B's latent at
   the last DDIM timestep, is optimised with L-BFGS (lr 0.1, 10 steps of at most 20
   evaluations) so that deterministic DDIM sampling (10 steps, no guidance) from x_T with B's
   conditioning reproduces B: MSE on the latent plus MSE on the decoded pixels.
4. Analogy: c = c_B + λ (c_A′ − c_A) on the text encoder's output states; B′ = DDIM (10 steps,
   η = 0) from B's x_T with c, guidance scale s against the empty prompt's states.

    dia = Dia.from_pretrained()   # CompVis/stable-diffusion-v1-4
    b_prime = dia.analogy(a, a_prime, b, seed=0)

Published settings, from github.com/subrtadel/DIA (file: what):
- config/parameter_estimation.yaml: ddim_steps 10, ddim_eta 0, sufficient_loss 0.0008 (a
  stage stops once its loss is below it); conditioning_optimization: 10 steps, lr 0.01,
  N_tokens 10, batch 8, fixed_timesteps True; noise_optimization: 10 steps, lr 0.1;
  shape 4 × 64 × 64.
- ddim_invertor.py: `perform_cond_inversion_individual_timesteps` (step 2: torch AdamW, default
  weight decay 1e-2, which therefore also shrinks the 67 frozen positions a little; the gradient
  masked to the first N_tokens rows; views from `RandomHorizontalFlip(p=1)` and
  `RandomResizedCrop(512, scale=(0.85, 0.99), ratio=(1, 1))`; latents sampled from the VAE
  posterior), `perform_inversion` (step 3: `torch.optim.LBFGS` with its defaults, max_iter 20
  and no line search; loss weights latents 1, pixels 1; pixels compared in [−1, 1] without
  clamping).
- analogy_creator.py and do_analogies.py: step 4, c_B + λ (c_A′ − c_A) on
  `transformer(inputs_embeds=…).last_hidden_state`, the unconditional branch the empty
  prompt, one UNet call without guidance when s = 1.
- process_new_data.py: step 1 (ImageMagick: black padding, resize to 512 × 512).
- utils.py `prepare_default_model`: SD v1.4 (sd-v1-4.ckpt) with the CLIP ViT-L/14 text tower.
- config/analogy_params.yaml: the code renders a grid of s ∈ {1, 2, 3, 5, 7, 9, 12} ×
  λ ∈ linspace(0, 1.5, 20) (the notebook: linspace(0, 3, 20)) and leaves the choice to the user.

Deviations from the official code:
- One B′ per call, not a grid: the defaults are s = 5 (the row the notebook shows) and λ = 1
  (the plain analogy c_B + c_A′ − c_A); both are options, to sweep as the official grid does.
- Model: the diffusers copy of SD v1.4 (its text encoder is the same CLIP ViT-L/14 text tower).
  The official code runs in float32; here the model's dtype (the project's default on CUDA is
  bfloat16; pass dtype="float32" to match); the learned embeddings and x_T stay float32.
- Sampler: diffusers' DDIM with clip_sample off, set_alpha_to_one off, steps_offset 1 and
  "leading" spacing — the same timesteps (1, 101, …, 901) and update as the LDM DDIM sampler.
- The official L-BFGS loop also back-propagates the loss it computes for its stopping test,
  whose gradients L-BFGS's closure discards; here that evaluation runs without gradients.
- Randomness: one CPU generator seeded with `seed` draws, in order, the views and timesteps and
  noises of A's, A′'s and B's conditioning inversions, the VAE samples, and x_T's start (the
  official code: torch's global RNG, seeded 42 once per script).
- Output: B′ is the part of the square sample where B lies (the padding cropped off), resized
  to B's working size; the official code keeps the padded 512 × 512 square.
- `resolution` (the square's side; None: the model's native 512) is not in the official code.
- Cost: `Cost` counts the most UNet calls; the stopping threshold and L-BFGS's own
  convergence tests can end a stage sooner (with the official threshold they rarely do).

Longer than the project's usual 400 lines: one baseline per file, and its two inversions, its
draw and the account above of the official code belong together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ..backbones.text_slots import replaced_token_embeddings
from ..images import ImageInput, as_rgb
from .base import (
    Cost,
    PipelineBaseline,
    check_guidance,
    check_non_negative,
    check_positive,
    check_positive_ints,
    check_resolution_option,
    check_seed,
    check_unet_channels,
    cpu_generator,
    freeze,
    loss_target,
    number,
    require,
    size_multiple,
    square_side,
    working_image,
)

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"


@dataclass(frozen=True)
class DiaCost(Cost):
    """`Cost` plus DIA's noise inversion of B, whose UNet calls carry one latent each.

    noise_fit_calls: calls followed by a backward pass (L-BFGS evaluations, each a full DDIM
        run). noise_check_calls: calls without one (the stopping test before each L-BFGS step).
    `fit_calls`/`fit_batch` are the three conditioning inversions. All counts are maxima.
    """

    noise_fit_calls: int = 0
    noise_check_calls: int = 0

    @property
    def unet_calls(self) -> int:
        return self.sample_calls + self.fit_calls + self.noise_fit_calls + self.noise_check_calls

    @property
    def latent_passes(self) -> int:
        return super().latent_passes + 3 * self.noise_fit_calls + self.noise_check_calls

    def __str__(self) -> str:
        return (
            f"{self.sample_calls} UNet calls × {self.sample_batch} latents to draw B′; "
            f"{self.fit_calls} calls × {self.fit_batch} latents with a backward pass to invert the conditionings of "
            f"A, A′ and B; {self.noise_fit_calls} calls × 1 latent with a backward pass and {self.noise_check_calls} "
            f"without to invert B's noise; at most {self.unet_calls} UNet calls ≈ {self.latent_passes} latent passes"
        )


@dataclass(frozen=True)
class DiaConfig:
    """DIA's published hyperparameters (see the module docstring for their sources).

    steps: DDIM steps, for inversion and sampling alike. 10.
    Conditioning inversion (each of A, A′, B)
        token_steps: AdamW steps. 10.
        token_lr, token_weight_decay: 0.01, 0.01 (torch's AdamW default).
        learned_tokens: how many leading positions of the 77 are learned. 10.
        views: the batch: the image, its mirror image and views − 2 random crops; each view
            gets one of the first `views` DDIM timesteps (so views ≤ steps). 8.
        crop_scale: area fraction of the random square crops. (0.85, 0.99).
    Noise inversion of B
        noise_steps: L-BFGS steps. 10.
        noise_lr: L-BFGS learning rate. 0.1.
        lbfgs_iterations: L-BFGS `max_iter`, the function evaluations per step. 20.
        latent_weight, pixel_weight: weights of the latent and pixel MSE. 1, 1.
    sufficient_loss: a stage stops once its loss is below it (0 never stops early). 0.0008.
    Analogy
        guidance_scale: s, against the empty prompt (1: no guidance, one latent per call). 5.
        analogy_strength: λ in c_B + λ (c_A′ − c_A). 1.
    resolution: the side of the square the images are padded and resized to (None: native, 512).
    """

    steps: int = 10
    token_steps: int = 10
    token_lr: float = 0.01
    token_weight_decay: float = 0.01
    learned_tokens: int = 10
    views: int = 8
    crop_scale: tuple[float, float] = (0.85, 0.99)
    noise_steps: int = 10
    noise_lr: float = 0.1
    lbfgs_iterations: int = 20
    latent_weight: float = 1.0
    pixel_weight: float = 1.0
    sufficient_loss: float = 0.0008
    guidance_scale: float = 5.0
    analogy_strength: float = 1.0
    resolution: int | None = None

    def __post_init__(self):
        check_positive_ints(self, "steps", "token_steps", "learned_tokens", "views", "noise_steps", "lbfgs_iterations")
        require(
            self.views <= self.steps,
            f"views ({self.views}) must not exceed steps ({self.steps}): each view gets its own DDIM timestep",
        )
        check_positive(self, "token_lr", "noise_lr")
        check_non_negative(
            self, "token_weight_decay", "latent_weight", "pixel_weight", "sufficient_loss", "guidance_scale"
        )
        require(self.latent_weight + self.pixel_weight > 0, "latent_weight and pixel_weight cannot both be 0")
        require(number(self.analogy_strength), f"analogy_strength must be a number, got {self.analogy_strength!r}")
        low_high = self.crop_scale
        require(
            isinstance(low_high, tuple)
            and len(low_high) == 2
            and all(number(v) for v in low_high)
            and 0 < low_high[0] <= low_high[1] <= 1,
            f"crop_scale must be a (low, high) pair with 0 < low ≤ high ≤ 1, got {low_high!r}",
        )
        check_resolution_option(self.resolution)

    @property
    def sample_batch(self) -> int:
        return 1 if self.guidance_scale == 1 else 2

    def cost(self) -> DiaCost:
        return DiaCost(
            sample_calls=self.steps,
            sample_batch=self.sample_batch,
            fit_calls=3 * self.token_steps,
            fit_batch=self.views,
            noise_fit_calls=self.noise_steps * self.lbfgs_iterations * self.steps,
            noise_check_calls=self.noise_steps * self.steps,
        )


@dataclass
class DiaConditioning:
    """One image's inverted conditioning. L: sequence length, d: text width."""

    tokens: torch.Tensor  # (L, d) float32 CPU: the learned input token embeddings
    states: torch.Tensor  # (1, L, d) float32 CPU: the text encoder's output for them (the conditioning)
    history: list[float] = field(default_factory=list)  # the loss of each step run


@dataclass
class DiaNoise:
    """B's inverted start noise."""

    noise: torch.Tensor  # (1, C, h, w) float32 CPU: x_T
    history: list[float] = field(default_factory=list)  # the loss before each L-BFGS step


def square_padded(image: Image.Image, side: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """(square, box): `image` padded with black to a centred square and resized to side × side
    (Lanczos), as DIA prepares its data; box (left, top, right, bottom) is where `image` lies
    in the square."""
    width, height = image.size
    longest = max(width, height)
    left, top = (longest - width) // 2, (longest - height) // 2
    canvas = Image.new("RGB", (longest, longest), (0, 0, 0))
    canvas.paste(image, (left, top))
    scale = side / longest
    box = tuple(round(v * scale) for v in (left, top, left + width, top + height))
    return canvas.resize((side, side), Image.Resampling.LANCZOS), box


def random_views(image: Image.Image, count: int, crop_scale: tuple[float, float], generator) -> list[Image.Image]:
    """DIA's batch for one square image: itself, its mirror image, then count − 2 random square
    crops of a `crop_scale` fraction of its area resized back to its size (bilinear), drawn as
    torchvision's `RandomResizedCrop` with ratio (1, 1) draws them."""
    if count == 1:
        return [image]
    views = [image, ImageOps.mirror(image)]
    side = image.width
    for _ in range(count - 2):
        fraction = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * torch.rand((), generator=generator).item()
        crop = min(side, max(1, round(math.sqrt(side * side * fraction))))
        top = int(torch.randint(0, side - crop + 1, (), generator=generator))
        left = int(torch.randint(0, side - crop + 1, (), generator=generator))
        views.append(image.resize((side, side), Image.Resampling.BILINEAR, box=(left, top, left + crop, top + crop)))
    return views


class Dia(PipelineBaseline):
    """DIA on a text-to-image Stable Diffusion 1.x model.

    Args:
        pipe: a text-to-image Stable Diffusion pipeline; its modules are frozen and it is not
            otherwise changed (DIA runs its own DDIM loops with its own scheduler).
        config: hyperparameters (default `DiaConfig()`).
    """

    name = "DIA"
    uses_text = False
    pipeline_class = StableDiffusionPipeline  # a Stable Diffusion 1.x model
    default_model = DEFAULT_MODEL
    config_class = DiaConfig

    def __init__(self, pipe: StableDiffusionPipeline, config: DiaConfig | None = None):
        check_unet_channels(pipe, pipe.vae.config.latent_channels, "DIA")
        freeze(pipe)
        self.pipe = pipe
        self.config = config or DiaConfig()
        # The LDM DDIM sampler's schedule: timesteps 1, 1 + T/k, …; no clipping; ᾱ_prev = ᾱ_0 at the end.
        self.scheduler = DDIMScheduler.from_config(
            pipe.scheduler.config,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="leading",
        )
        self.scheduler.set_timesteps(self.config.steps)

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def side(self) -> int:
        """The side of the square the images are worked at."""
        side = square_side(self.pipe, self.config.resolution)
        multiple = size_multiple(self.pipe)
        require(side % multiple == 0, f"resolution {side} must be a multiple of {multiple}")
        return side

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W) in [−1, 1], the VAE's dtype, on the model's device."""
        return self.pipe.image_processor.preprocess(images).to(self.device, self.pipe.vae.dtype)

    def _latents(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents sampled from the VAE posterior, with noise from the CPU generator."""
        posterior = self.pipe.vae.encode(pixels).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
        return (posterior.mean + posterior.std * noise) * self.pipe.vae.config.scaling_factor

    def _empty_ids(self) -> torch.Tensor:
        tokenizer = self.pipe.tokenizer
        return tokenizer(
            "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(1, L, d) conditioning from input token embeddings (L, d); differentiable in them."""
        ids = self._empty_ids()
        every_position = torch.ones_like(ids, dtype=torch.bool)
        with replaced_token_embeddings(self.pipe.text_encoder, every_position, tokens):
            return self.pipe.text_encoder(ids)[0]

    def empty_states(self) -> torch.Tensor:
        """(1, L, d): the empty prompt's conditioning, the unconditional branch."""
        with torch.no_grad():
            return self.pipe.text_encoder(self._empty_ids())[0]

    def ddim(
        self, noise: torch.Tensor, states: torch.Tensor, guidance_scale: float = 1.0, uncond=None
    ) -> torch.Tensor:
        """DDIM (η = 0) over the config's steps from x_T `noise` (1, C, h, w) with conditioning
        `states` (1, L, d); guidance against `uncond` unless guidance_scale is 1. Differentiable
        when gradients are on. Returns the final latent."""
        unet, latents = self.pipe.unet, noise
        for t in self.scheduler.timesteps:
            t = t.to(self.device)
            model_input = latents.to(unet.dtype)
            if guidance_scale == 1:
                prediction = unet(model_input, t, encoder_hidden_states=states.to(unet.dtype)).sample
            else:
                both = torch.cat([uncond, states]).to(unet.dtype)
                unconditional, conditional = unet(
                    model_input.expand(2, -1, -1, -1), t, encoder_hidden_states=both
                ).sample.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(prediction.float(), t, latents.float(), eta=0.0).prev_sample
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) pixels in about [−1, 1] (not clamped) from scaled latents; differentiable."""
        vae = self.pipe.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.float()

    # --- step 2: conditioning inversion ----------------------------------------------------------
    def invert_conditioning(
        self, square: Image.Image, generator: torch.Generator, progress: bool = True
    ) -> DiaConditioning:
        """The conditioning of one square working image (side × side), DIA's step 2."""
        c, unet = self.config, self.pipe.unet
        with torch.no_grad():
            views = random_views(square, c.views, c.crop_scale, generator)
            latents = self._latents(self._pixels(views), generator).float()
            start = self.pipe.text_encoder.get_input_embeddings()(self._empty_ids())[0].float()
        # Each view keeps one DDIM timestep for the whole run (the official fixed_timesteps).
        ascending = self.scheduler.timesteps.flip(0)
        timesteps = ascending[torch.randperm(c.views, generator=generator)].to(self.device)
        tokens = start.clone().requires_grad_(True)
        learned_rows = torch.zeros_like(tokens)
        learned_rows[: c.learned_tokens] = 1.0
        optimizer = torch.optim.AdamW([tokens], lr=c.token_lr, weight_decay=c.token_weight_decay)
        history = []
        for _ in tqdm(range(c.token_steps), desc="DIA conditioning", disable=not progress, leave=False):
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            states = self.encode_tokens(tokens)
            prediction = unet(
                noisy.to(unet.dtype), timesteps, encoder_hidden_states=states.expand(c.views, -1, -1).to(unet.dtype)
            ).sample
            loss = F.mse_loss(prediction.float(), loss_target(self.scheduler, latents, noise, timesteps).float())
            history.append(loss.item())
            if history[-1] < c.sufficient_loss:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            tokens.grad.mul_(learned_rows)  # only the first positions learn; weight decay still acts on all
            optimizer.step()
        with torch.no_grad():
            states = self.encode_tokens(tokens)
        return DiaConditioning(tokens.detach().cpu(), states.float().cpu(), history)

    # --- step 3: noise inversion -------------------------------------------------------------------
    def invert_noise(
        self, square: Image.Image, states: torch.Tensor, generator: torch.Generator, progress: bool = True
    ) -> DiaNoise:
        """x_T such that DDIM from it with `states` (1, L, d) redraws the square image, DIA's step 3."""
        c = self.config
        states = states.to(self.device)
        with torch.no_grad():
            pixels = self._pixels([square]).float()
            target = self._latents(pixels.to(self.pipe.vae.dtype), generator).float()
        last = self.scheduler.timesteps[:1]  # the largest DDIM timestep
        start = self.scheduler.add_noise(target, torch.randn(target.shape, generator=generator).to(target), last)
        noise = start.clone(memory_format=torch.contiguous_format).requires_grad_(True)  # L-BFGS views its grad flat

        def loss_of(latents: torch.Tensor) -> torch.Tensor:
            loss = c.latent_weight * F.mse_loss(latents, target)
            if c.pixel_weight:
                loss = loss + c.pixel_weight * F.mse_loss(self.decode(latents), pixels)
            return loss

        def closure():
            optimizer.zero_grad()
            loss = loss_of(self.ddim(noise, states))
            loss.backward()
            return loss.item()

        optimizer = torch.optim.LBFGS([noise], lr=c.noise_lr, max_iter=c.lbfgs_iterations)
        history = []
        for _ in tqdm(range(c.noise_steps), desc="DIA noise", disable=not progress, leave=False):
            with torch.no_grad():
                history.append(loss_of(self.ddim(noise, states)).item())
            if history[-1] < c.sufficient_loss:
                break
            optimizer.step(closure)
        return DiaNoise(noise.detach().cpu(), history)

    # --- the method -------------------------------------------------------------------------------------
    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
    ) -> Image.Image:
        """B′ for A : A′ :: B : B′ (steps 1–4), at B's working size."""
        check_seed(seed)
        a, a_prime, b = as_rgb(a), as_rgb(a_prime), as_rgb(b)
        side = self.side()
        out_size = working_image(b, self.pipe, side).size
        generator = cpu_generator(seed)
        (square_a, _), (square_a_prime, _), (square_b, box_b) = (square_padded(x, side) for x in (a, a_prime, b))
        c_a, c_a_prime, c_b = (
            self.invert_conditioning(square, generator, progress) for square in (square_a, square_a_prime, square_b)
        )
        x_t = self.invert_noise(square_b, c_b.states, generator, progress)
        return self.draw(c_a, c_a_prime, c_b, x_t).crop(box_b).resize(out_size, Image.Resampling.BICUBIC)

    @torch.no_grad()
    def draw(
        self,
        c_a: DiaConditioning,
        c_a_prime: DiaConditioning,
        c_b: DiaConditioning,
        x_t: DiaNoise,
        *,
        guidance_scale: float | None = None,
        analogy_strength: float | None = None,
    ) -> Image.Image:
        """The square B′ (side × side) from the inverted parts, DIA's step 4. guidance_scale,
        analogy_strength: override the config's (to sweep them as the official grid does)."""
        s = self.config.guidance_scale if guidance_scale is None else guidance_scale
        strength = self.config.analogy_strength if analogy_strength is None else analogy_strength
        check_guidance(s)
        require(number(strength), f"analogy_strength must be a number, got {strength!r}")
        states = c_b.states + strength * (c_a_prime.states - c_a.states)
        latents = self.ddim(x_t.noise.to(self.device), states.to(self.device), s, self.empty_states())
        pixels = (self.decode(latents) / 2 + 0.5).clamp(0, 1)
        processor = self.pipe.image_processor
        return processor.numpy_to_pil(processor.pt_to_numpy(pixels.cpu()))[0]
