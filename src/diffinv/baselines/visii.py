"""VISII, Visual Instruction Inversion (Nguyen, Li, Ojha & Lee, NeurIPS 2023), as a baseline.

VISII learns, from one before → after pair (A, A′), the text conditioning of an InstructPix2Pix
model, and then edits B with it — no words from the user:

1. prompt = PEZ(A′): a hard prompt whose CLIP text feature matches A′ (OpenCLIP ViT-H/14).
2. c = the text encoder's output states of that prompt. The states at the prompt's word
   positions (between <bos> and <eos>) are learned; the rest stays as encoded.
3. For each step: a timestep t and noise ε; z_t = q(z_A′, t, ε);
   ε̂ = InstructPix2Pix's guided prediction from z_t with image A and text c (text guidance
   7.5, image guidance 1.5 — guidance is applied during training too);
   L = λ_mse · ‖ε̂ − ε‖² − λ_clip · min(cos(P(mean c), E_I(A′) − E_I(A)), 0.5)
   with P the text projection and E_I the image tower of CLIP ViT-L/14 (the CLIP whose text
   tower is the encoder's). AdamW on the learned states; gradients clipped element-wise.
4. B′ = InstructPix2Pix(B, c) with the kept c.

    visii = Visii.from_pretrained()               # timbrooks/instruct-pix2pix + the two CLIPs
    instruction = visii.fit(a, a_prime, seed=0)   # steps 1-3
    b_prime = visii.apply(instruction, b, seed=0) # step 4

Published settings, from github.com/thaoshibe/visii (file: what):
- configs/config_ip2p.yaml: model timbrooks/instruct-pix2pix, learning rate 1e-3, 1000 steps,
  CLIP loss on, λ_clip 0.1, λ_mse 4, prompt initialised by PEZ ("learn").
- configs/hard_prompts_made_easy.json (read by train.py for PEZ): 10 tokens, 3000 steps,
  lr 0.1, weight decay 0.1, OpenCLIP ViT-H-14 laion2b_s32b_b79k, on the after image only.
- visii.py `StableDiffusionVisii.train`: training guidance 7.5 / 1.5; bitsandbytes AdamW8bit
  (weight decay 1e-2 by default); the loss above with the similarity clamped to [−1, 0.5];
  `clip_grad_value_` at the largest value of the initial states; after each step <bos>, <eos>
  and everything after it, and the unconditional rows, are reset; the kept embedding is
  `prompt_embeds_best.pt`, the one saved at the step with the lowest MSE. `text_projection2`:
  the direction is mean E_I(after) − mean E_I(before) of the projected, unnormalised CLIP
  ViT-L/14 image features, normalised.
- test.py: Euler-ancestral sampler, 20 steps, text guidance 8 (its `--guidance_scale`
  default; train.py's evaluation uses 7.5), image guidance 1.5, checkpoint "best".

Deviations from the official code:
- Learned parameter: only the states at the word positions, which is what the official code
  effectively learns (it resets all other entries after every step, and AdamW, its weight
  decay and value clipping act element-wise, so the result is the same).
  `learn="tokens"` (not VISII) learns the token embeddings at those positions instead, put into
  the frozen encoder with `text_slots.replaced_token_embeddings`, with the same losses (the CLIP
  loss still on the encoder's output) and the same clipping bound.
- Optimiser: torch's AdamW (32-bit moments) instead of bitsandbytes' AdamW8bit; same lr,
  betas (0.9, 0.999), eps 1e-8 and weight decay 1e-2.
- Gradient scale, reproduced: the official `accelerator.backward` under
  `mixed_precision="fp16"` multiplies the loss by GradScaler's initial scale 2¹⁶ and the
  gradients are never unscaled (the optimiser is not wrapped by accelerate), so the value
  clipping acts on 2¹⁶× gradients. `gradient_scale` keeps that; Adam itself is scale-free.
- Timesteps and noise: the official code visits each of the 1000 training timesteps once in an
  order shuffled by Python's unseeded `random`, with noises pre-drawn by torch's global RNG,
  and always runs exactly 1000 steps (the config's step count only picks which checkpoints are
  evaluated). Here a seeded CPU generator draws the permutation (repeated when `steps` exceeds
  the number of timesteps) and one noise per step, and `steps` is honoured.
- Noising: the official code noises with the Euler-ancestral scheduler (`add_noise`, then
  `scale_model_input`), which at integer timesteps equals DDPM's q(z_t | z_0) =
  √ᾱ_t z_0 + √(1 − ᾱ_t) ε used here. The MSE target is ε as in the official code; for a
  v-prediction model it would be v (the official code has no such case).
- Precision: the official code computes in float32 (its fp16 flag adds no autocast); here the
  model's dtype (the project's default on CUDA is bfloat16; pass dtype="float32" to match).
- Sizes: the official code squashes A, A′ and B to 512 × 512; here A gets the project's working
  size (aspect kept, area about the native 512²), A′ is fitted to A's size, and B gets its own
  working size, as in Difference Inversion.
- PEZ: the project's `pez.invert_prompt` on the transformers port of the same OpenCLIP
  ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K); start tokens are drawn from the usable
  vocabulary (no special tokens) with the seed rather than from the whole vocabulary unseeded.
- Seeds: PEZ and training draw from CPU generators seeded with `seed`; sampling B′ too (the
  official test script draws unseeded).
- Not implemented: several (A, A′) pairs in one fit, and the "hybrid" instruction
  (`test_concatenate`: the learned states followed by extra words).

Longer than the project's usual 400 lines: one baseline per file, and its learning loop, its
losses and the account above of the official code belong together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionInstructPix2PixPipeline
from PIL import Image
from tqdm.auto import tqdm

from ..backbones.text_slots import replaced_token_embeddings
from ..checks import hub_offline
from ..clip_space import ClipSpace, default_clip_for
from ..errors import DiffinvError
from ..images import ImageInput, as_rgb, fit_to
from ..loading import load_or_explain, resolve_device_dtype
from ..pez import invert_prompt
from .base import (
    Cost,
    PipelineBaseline,
    check_images,
    check_non_negative,
    check_positive,
    check_positive_ints,
    check_resolution_option,
    check_seed,
    check_text,
    check_unet_channels,
    cpu_generator,
    freeze,
    load_pipeline,
    loss_target,
    number,
    pipeline_edit,
    require,
    working_image,
)
from .instructpix2pix import DEFAULT_MODEL, check_instruct_guidance, euler_ancestral, instruct_batch

DEFAULT_PEZ_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # OpenCLIP ViT-H-14 laion2b_s32b_b79k
LEARN = ("states", "tokens")
KEEP = ("best", "last")


@dataclass(frozen=True)
class VisiiConfig:
    """VISII's published hyperparameters (see the module docstring for their sources).

    Learning the instruction
        steps: optimisation steps. 1000.
        learning_rate, weight_decay: AdamW. 1e-3, 1e-2.
        lambda_mse, lambda_clip: loss weights. 4, 0.1.
        clip_loss: use the CLIP direction loss. True.
        clip_similarity_cap: the cosine is clamped to [−1, cap] (no gain beyond it). 0.5.
        train_guidance_scale, train_image_guidance_scale: guidance of the trained prediction
            (≤ 1 / < 1: the plain conditional prediction, one latent per UNet call). 7.5, 1.5.
        gradient_scale: factor on the loss before backward (the official's unscaled fp16 loss
            scale; matters only through the value clipping). 2¹⁶.
        keep: "best" (the states right after the step with the lowest MSE, the official
            default checkpoint) or "last".
        learn: "states" (VISII: the encoder's output states at the prompt's positions) or
            "tokens" (the token embeddings there, through the frozen encoder; not VISII).
    Initial prompt (PEZ of A′)
        pez_prompt_len, pez_steps, pez_lr, pez_weight_decay: 10, 3000, 0.1, 0.1.
    Applying to B
        sample_steps, guidance_scale, image_guidance_scale: Euler-ancestral steps, text and
            image guidance. 20, 8, 1.5.
    resolution: side of the square whose area images are resized to (None: native, 512).
    """

    steps: int = 1000
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    lambda_mse: float = 4.0
    lambda_clip: float = 0.1
    clip_loss: bool = True
    clip_similarity_cap: float = 0.5
    train_guidance_scale: float = 7.5
    train_image_guidance_scale: float = 1.5
    gradient_scale: float = 2.0**16
    keep: str = "best"
    learn: str = "states"
    pez_prompt_len: int = 10
    pez_steps: int = 3000
    pez_lr: float = 0.1
    pez_weight_decay: float = 0.1
    sample_steps: int = 20
    guidance_scale: float = 8.0
    image_guidance_scale: float = 1.5
    resolution: int | None = None

    def __post_init__(self):
        check_positive_ints(self, "steps", "pez_prompt_len", "pez_steps")
        check_positive(self, "learning_rate", "pez_lr", "gradient_scale")
        check_non_negative(self, "weight_decay", "pez_weight_decay", "lambda_mse", "lambda_clip")
        require(
            number(self.clip_similarity_cap) and -1 < self.clip_similarity_cap <= 1,
            f"clip_similarity_cap must lie in (-1, 1], got {self.clip_similarity_cap!r}",
        )
        require(self.keep in KEEP, f"keep must be one of {KEEP}, got {self.keep!r}")
        require(self.learn in LEARN, f"learn must be one of {LEARN}, got {self.learn!r}")
        check_instruct_guidance(self.train_guidance_scale, self.train_image_guidance_scale, self.steps)
        check_instruct_guidance(self.guidance_scale, self.image_guidance_scale, self.sample_steps)
        check_resolution_option(self.resolution)

    @property
    def uses_clip_loss(self) -> bool:
        return self.clip_loss and self.lambda_clip > 0

    def cost(self) -> Cost:
        return Cost(
            sample_calls=self.sample_steps,
            sample_batch=instruct_batch(self.guidance_scale, self.image_guidance_scale),
            fit_calls=self.steps,
            fit_batch=instruct_batch(self.train_guidance_scale, self.train_image_guidance_scale),
            other=f"PEZ: {self.pez_steps} CLIP text-tower steps with a backward pass (none when a prompt is given)",
        )


@dataclass
class VisiiPair:
    """What learning from (A, A′) needs, computed once (`Visii.prepare`). L: sequence length,
    d: text width, k: the prompt's word tokens, h × w: the latent size."""

    prompt: str
    ids: torch.Tensor  # (1, L) long: the prompt's tokens
    attention_mask: torch.Tensor | None  # (1, L), only for encoders configured to take one
    slot_mask: torch.Tensor  # (1, L) bool: the k learned positions, 1 … k
    initial: torch.Tensor  # (k, d) float32: the learned values' start
    prompt_states: torch.Tensor  # (1, L, d): the encoder's output for the prompt
    empty_states: torch.Tensor  # (1, L, d): the empty prompt's, the unconditional branch
    condition_latents: torch.Tensor  # (1, C, h, w): A's VAE mode, unscaled (InstructPix2Pix's image input)
    target_latents: torch.Tensor  # (1, C, h, w): A′'s VAE mode × the scaling factor
    direction: torch.Tensor | None  # (D,) float32 unit: CLIP image direction A → A′ (None: no CLIP loss)
    gradient_clip: float  # the largest value of the initial states (official clipping bound)


@dataclass
class VisiiInstruction:
    """A learned instruction. `states` is all InstructPix2Pix needs to apply it."""

    prompt: str  # the initial prompt (PEZ of A′, or given)
    token_ids: list[int]  # its k tokens in the model's tokenizer: the learned positions
    learned: torch.Tensor  # (k, d) float32 CPU: the learned values (states, or token embeddings)
    states: torch.Tensor  # (1, L, d) float32 CPU: the full text conditioning
    learn: str
    kept_step: int  # the step whose result was kept
    history: dict[str, list[float]] = field(default_factory=dict)  # per step: loss, mse, clip_similarity


class VisiiLoss(NamedTuple):
    total: torch.Tensor  # () the objective
    mse: torch.Tensor  # () ‖ε̂ − ε‖² per element
    clip_similarity: torch.Tensor | None  # () the unclamped cosine, None without the CLIP loss


def training_timesteps(steps: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps,) long: every training timestep once in a random order, again when steps exceed them."""
    rounds = math.ceil(steps / num_train_timesteps)
    return torch.cat([torch.randperm(num_train_timesteps, generator=generator) for _ in range(rounds)])[:steps]


class Visii(PipelineBaseline):
    """VISII on an InstructPix2Pix model.

    Args:
        pipe: an InstructPix2Pix pipeline (UNet with 8 input channels); its modules are frozen.
            It is not otherwise changed: sampling uses a pipeline of the same modules with an
            Euler-ancestral scheduler.
        clip: the CLIP whose text tower is the pipeline's text encoder (ViT-L/14 for
            InstructPix2Pix), for the CLIP loss.
        pez_clip: the CLIP of the PEZ initialisation (VISII: OpenCLIP ViT-H/14); None: `clip`.
        config: hyperparameters (default `VisiiConfig()`).
    """

    name = "VISII"
    uses_text = False  # learns the instruction from (A, A′); `prompt` only starts it
    pipeline_class = StableDiffusionInstructPix2PixPipeline
    default_model = DEFAULT_MODEL
    config_class = VisiiConfig

    def __init__(
        self,
        pipe: StableDiffusionInstructPix2PixPipeline,
        clip: ClipSpace,
        pez_clip: ClipSpace | None = None,
        config: VisiiConfig | None = None,
    ):
        check_unet_channels(pipe, 2 * pipe.vae.config.latent_channels, "VISII")
        freeze(pipe)
        width = pipe.text_encoder.config.hidden_size
        if clip.model.text_projection.in_features != width:
            raise DiffinvError(
                f"the CLIP's text projection takes {clip.model.text_projection.in_features}-wide states, the "
                f"model's text encoder gives {width}: pass the CLIP whose text tower is the encoder"
            )
        self.pipe = euler_ancestral(pipe)
        self.clip = clip
        self.pez_clip = pez_clip or clip
        self.config = config or VisiiConfig()
        # Training noises with the model's own forward process (betas, prediction type).
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        offline: bool | None = None,
        config: VisiiConfig | None = None,
        clip_model: str | None = None,
        pez_clip_model: str | None = DEFAULT_PEZ_CLIP,
        **pipeline_kwargs,
    ) -> Visii:
        """An InstructPix2Pix model and the two CLIPs, by hub id or local directory.

        clip_model: default the CLIP matching the text encoder (`clip_space.default_clip_for`).
        pez_clip_model: the CLIP of the PEZ initialisation; None: `clip_model`'s.
        offline: hub cache and local directories only (default: `HF_HUB_OFFLINE`).
        """
        offline = hub_offline() if offline is None else offline
        device, dtype = resolve_device_dtype(device, dtype)
        pipe = load_pipeline(cls.pipeline_class, model, device, dtype, offline, **pipeline_kwargs)
        check_unet_channels(pipe, 2 * pipe.vae.config.latent_channels, "VISII")  # before loading the CLIPs
        clip_model = clip_model or default_clip_for(pipe.text_encoder.get_input_embeddings().embedding_dim)
        clip = load_or_explain(
            clip_model, offline, lambda: ClipSpace.from_pretrained(clip_model, device, dtype, offline)
        )
        pez_clip = None
        if pez_clip_model is not None and pez_clip_model != clip_model:
            pez_clip = load_or_explain(
                pez_clip_model, offline, lambda: ClipSpace.from_pretrained(pez_clip_model, device, dtype, offline)
            )
        return cls(pipe, clip, pez_clip, config)

    # --- preparing ------------------------------------------------------------------------------
    @property
    def sequence_length(self) -> int:
        return min(self.pipe.tokenizer.model_max_length, self.pipe.text_encoder.config.max_position_embeddings)

    def _tokenize(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(ids (1, L), attention mask or None, k): padded as diffusers' pipeline pads; k word tokens."""
        tokens = self.pipe.tokenizer(
            prompt, padding="max_length", max_length=self.sequence_length, truncation=True, return_tensors="pt"
        )
        ids = tokens.input_ids.to(self.pipe.device)
        attention_mask = None
        if getattr(self.pipe.text_encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(self.pipe.device)
        eos = int((ids[0] == self.pipe.tokenizer.eos_token_id).nonzero()[0])
        return ids, attention_mask, eos - 1

    def _encode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.pipe.text_encoder(ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def _edit_direction(self, a: Image.Image, a_prime: Image.Image) -> torch.Tensor:
        """(D,) unit: E_I(A′) − E_I(A) of CLIP's projected image features, not normalised before
        the difference (as VISII's `text_projection2`)."""
        output = self.clip.model.get_image_features(pixel_values=self.clip.pixels([a, a_prime]))
        features = output.pooler_output.float()
        return F.normalize(features[1] - features[0], dim=0)

    def prepare(
        self, a: ImageInput, a_prime: ImageInput, *, prompt: str | None = None, seed: int = 0, progress: bool = True
    ) -> VisiiPair:
        """Everything `fit` needs from (A, A′). prompt: the initial prompt instead of PEZ(A′),
        whose start is drawn from a CPU generator seeded with `seed`."""
        c = self.config
        a = working_image(a, self.pipe, c.resolution)
        a_prime = fit_to(as_rgb(a_prime), a.size)
        if prompt is not None:
            check_text(prompt, "VISII's initial prompt")
        else:
            prompt = invert_prompt(
                self.pez_clip,
                [a_prime],
                c.pez_prompt_len,
                c.pez_steps,
                c.pez_lr,
                c.pez_weight_decay,
                cpu_generator(seed),
                progress,
            )
        prompt = check_text(prompt, "VISII's initial prompt (PEZ found only an empty one)")
        ids, attention_mask, k = self._tokenize(prompt)
        slot_mask = torch.zeros_like(ids, dtype=torch.bool)
        slot_mask[0, 1 : 1 + k] = True
        with torch.no_grad():
            prompt_states = self._encode(ids, attention_mask)
            empty_states = self._encode(*self._tokenize("")[:2])
            if c.learn == "states":
                initial = prompt_states[0, 1 : 1 + k].float()
            else:
                initial = self.pipe.text_encoder.get_input_embeddings().weight[ids[0, 1 : 1 + k]].float()
            pixels = self.pipe.image_processor.preprocess([a, a_prime]).to(self.pipe.device, self.pipe.unet.dtype)
            modes = self.pipe.vae.encode(pixels).latent_dist.mode()
        return VisiiPair(
            prompt=prompt,
            ids=ids,
            attention_mask=attention_mask,
            slot_mask=slot_mask,
            initial=initial.clone(),
            prompt_states=prompt_states,
            empty_states=empty_states,
            condition_latents=modes[:1],
            target_latents=modes[1:] * self.pipe.vae.config.scaling_factor,
            direction=self._edit_direction(a, a_prime) if c.uses_clip_loss else None,
            gradient_clip=float(torch.maximum(prompt_states.max(), empty_states.max())),
        )

    # --- the objective and its optimisation ---------------------------------------------------
    def states(self, pair: VisiiPair, learned: torch.Tensor) -> torch.Tensor:
        """(1, L, d) text conditioning with `learned` (k, d) at the prompt's positions;
        differentiable in `learned`."""
        if self.config.learn == "tokens":
            embedding = self.pipe.text_encoder.get_input_embeddings().weight
            with replaced_token_embeddings(self.pipe.text_encoder, pair.slot_mask, learned.to(embedding.dtype)):
                return self._encode(pair.ids, pair.attention_mask)
        fixed = pair.prompt_states
        k = learned.shape[0]
        return torch.cat([fixed[:, :1], learned[None].to(fixed.dtype), fixed[:, 1 + k :]], dim=1)

    def loss(self, pair: VisiiPair, learned: torch.Tensor, timestep: int, noise: torch.Tensor) -> VisiiLoss:
        """VISII's objective at one timestep and noise (1, C, h, w): one UNet call."""
        c, unet = self.config, self.pipe.unet
        t = torch.tensor([timestep], device=unet.device)
        noise = noise.to(unet.device, unet.dtype)
        noisy = self.noise_scheduler.add_noise(pair.target_latents, noise, t)
        text = self.states(pair, learned)
        if instruct_batch(c.train_guidance_scale, c.train_image_guidance_scale) == 3:
            # branches: (text, A), (∅, A), (∅, no image) — InstructPix2Pix's guidance, as at sampling
            image = torch.cat([pair.condition_latents, pair.condition_latents, torch.zeros_like(noisy)])
            states = torch.cat([text, pair.empty_states, pair.empty_states])
            out = unet(torch.cat([noisy.expand(3, -1, -1, -1), image], dim=1), t, encoder_hidden_states=states).sample
            both, image_only, neither = out.chunk(3)
            g_text, g_image = c.train_guidance_scale, c.train_image_guidance_scale
            prediction = neither + g_text * (both - image_only) + g_image * (image_only - neither)
        else:
            prediction = unet(torch.cat([noisy, pair.condition_latents], dim=1), t, encoder_hidden_states=text).sample
        target = loss_target(self.noise_scheduler, pair.target_latents, noise, t)
        mse = F.mse_loss(prediction.float(), target.float())
        if pair.direction is None:
            return VisiiLoss(c.lambda_mse * mse, mse, None)
        projection = self.clip.model.text_projection
        feature = F.normalize(projection(text[0].mean(dim=0).to(projection.weight.dtype)).float(), dim=0)
        similarity = torch.dot(feature, pair.direction)
        total = c.lambda_mse * mse - c.lambda_clip * similarity.clamp(-1.0, c.clip_similarity_cap)
        return VisiiLoss(total, mse, similarity)

    def fit(
        self, a: ImageInput, a_prime: ImageInput, *, prompt: str | None = None, seed: int = 0, progress: bool = True
    ) -> VisiiInstruction:
        """Learn the instruction A → A′. prompt: the initial prompt instead of PEZ(A′).
        seed: fixes PEZ's start, the timestep order and the noise (two CPU generators, so that a
        given prompt gives what PEZ finding that prompt would)."""
        c = self.config
        pair = self.prepare(a, a_prime, prompt=prompt, seed=seed, progress=progress)
        generator = cpu_generator(seed)
        timesteps = training_timesteps(c.steps, self.noise_scheduler.config.num_train_timesteps, generator)
        learned = pair.initial.clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([learned], lr=c.learning_rate, weight_decay=c.weight_decay)
        history = {"loss": [], "mse": [], "clip_similarity": []}
        best, best_mse, best_step = learned.detach().clone(), math.inf, -1
        for step, t in enumerate(tqdm(timesteps.tolist(), desc="VISII", disable=not progress, leave=False)):
            noise = torch.randn(pair.target_latents.shape, generator=generator)
            loss = self.loss(pair, learned, t, noise)
            optimizer.zero_grad(set_to_none=True)
            (loss.total * c.gradient_scale).backward()  # ×2¹⁶ as the official fp16 loss scale, never unscaled
            learned.grad.clamp_(-pair.gradient_clip, pair.gradient_clip)
            optimizer.step()
            history["loss"].append(loss.total.item())
            history["mse"].append(loss.mse.item())
            if loss.clip_similarity is not None:
                history["clip_similarity"].append(loss.clip_similarity.item())
            if history["mse"][-1] <= best_mse:  # kept: the states right after that step's update, as VISII saves them
                best, best_mse, best_step = learned.detach().clone(), history["mse"][-1], step
        kept, kept_step = (best, best_step) if c.keep == "best" else (learned.detach(), c.steps - 1)
        with torch.no_grad():
            states = self.states(pair, kept)
        return VisiiInstruction(
            prompt=pair.prompt,
            token_ids=pair.ids[0, pair.slot_mask[0]].tolist(),
            learned=kept.cpu(),
            states=states.float().cpu(),
            learn=c.learn,
            kept_step=kept_step,
            history=history,
        )

    # --- applying ---------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(
        self, instruction: VisiiInstruction, b: ImageInput, *, seed: int = 0, progress: bool = True
    ) -> Image.Image:
        """B′: B (any `ImageInput`) edited by the learned instruction, an RGB image at B's working size."""
        c = self.config
        expected = (1, self.sequence_length, self.pipe.text_encoder.config.hidden_size)
        if tuple(instruction.states.shape) != expected:
            raise DiffinvError(
                f"this instruction's states are {tuple(instruction.states.shape)}, this model takes {expected}: "
                "it was learned with another model"
            )
        return pipeline_edit(
            self.pipe,
            b,
            c.resolution,
            seed=seed,
            progress=progress,
            desc="VISII sampling",
            prompt_embeds=instruction.states.to(self.pipe.device, self.pipe.text_encoder.dtype),
            num_inference_steps=c.sample_steps,
            guidance_scale=c.guidance_scale,
            image_guidance_scale=c.image_guidance_scale,
        )

    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
        prompt: str | None = None,
    ) -> Image.Image:
        """B′ for A : A′ :: B : B′: `fit` on (A, A′), then `apply` to B, both with `seed`.
        prompt: VISII's initial prompt instead of PEZ(A′)."""
        # Refuse a bad seed or B before a long fit, not after it.
        check_seed(seed)
        check_images(b)
        instruction = self.fit(a, a_prime, prompt=prompt, seed=seed, progress=progress)
        return self.apply(instruction, b, seed=seed, progress=progress)
