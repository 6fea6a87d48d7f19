"""Training the shapes world's models from scratch on CPU: `diffinv shapes train`.

Stages, each saved as soon as it is done and skipped when `training.json` says it finished (so
an interrupted run resumes at the stage it was in; the UNet also resumes from its last
checkpoint, and leaves a usable pipeline in the directory at each one):

1. classifier  — attribute classifier on fresh renders (evaluation only)
2. clip        — `CLIPModel` (image + text towers), contrastive on renders and caption variants
3. vae         — `AutoencoderKL`, 32×32×3 → 8×8×4; then vae_decoder: the decoder alone refined
                 with the encoder frozen (sharper small details, unchanged latents)
4. unet        — `UNet2DConditionModel`, v-prediction, on pre-encoded latents, conditioned on
                 the frozen CLIP text tower (which becomes the pipeline's text encoder)

The output directory is a standard Stable Diffusion directory (`StableDiffusionPipeline.
from_pretrained` loads it) with `clip/` and `classifier/` beside the usual components.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTextModel

from ..clip_space import CLIP_MEAN, CLIP_STD
from ..model_card import write_descriptor
from ..word_tokenizer import word_tokenizer
from .classifier import AttributeClassifier, targets
from .world import (
    ATTRIBUTES,
    RESOLUTION,
    all_scenes,
    canonical_caption,
    caption_variants,
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


@dataclass
class TrainingPlan:
    seed: int = 0
    n_images: int = 12000
    classifier_steps: int = 1000
    clip_steps: int = 1000
    vae_steps: int = 800
    vae_decoder_steps: int = 1500
    unet_steps: int = 4000
    checkpoint_every: int = 500
    batch: int = 64
    clip_batch: int = 128


def _scene_key(scene) -> tuple:
    return tuple(scene.attributes.values())


def _pixels(array: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


def _cosine_lr(optimizer, step: int, total: int, base: float, warmup: int = 100) -> None:
    scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    for group in optimizer.param_groups:
        group["lr"] = base * max(scale, 0.02)


def render_dataset(n: int, seed: int):
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(n)]
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
    model = AttributeClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    pixels, labels = _pixels(images), targets(scenes)
    for step in tqdm(range(plan.classifier_steps), desc="classifier"):
        _cosine_lr(optimizer, step, plan.classifier_steps, 2e-3)
        index = torch.randint(len(scenes), (128,))
        logits = model(_perturb(pixels[index]))
        loss = sum(F.cross_entropy(logits[k], labels[k][index]) for k in ATTRIBUTES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


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
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    pixels = _clip_pixels(_pixels(images))
    keys = [_scene_key(s) for s in scenes]
    variants = {key: caption_variants(s) for key, s in zip(keys, scenes)}
    rng = random.Random(plan.seed)
    for step in tqdm(range(plan.clip_steps), desc="CLIP"):
        _cosine_lr(optimizer, step, plan.clip_steps, 1e-3)
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


def refine_vae_decoder(vae: AutoencoderKL, images: np.ndarray, plan: TrainingPlan) -> AutoencoderKL:
    """Train the decoder further with the encoder frozen: sharper details (the dot) at the cost
    of decoder passes only, and latents — hence anything trained on them — unchanged."""
    vae.requires_grad_(False)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in decoder:
        parameter.requires_grad_(True)
    pixels = _pixels(images) * 2 - 1
    with torch.no_grad():
        posteriors = [vae.encode(pixels[i : i + 256]).latent_dist for i in range(0, len(pixels), 256)]
        mean, std = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
    optimizer = torch.optim.AdamW(decoder, lr=1e-3)
    vae.decoder.train()
    for step in tqdm(range(plan.vae_decoder_steps), desc="VAE decoder"):
        _cosine_lr(optimizer, step, plan.vae_decoder_steps, 1e-3)
        index = torch.randint(len(pixels), (32,))
        latents = mean[index] + std[index] * torch.randn_like(mean[index])
        reconstruction = vae.decode(latents).sample
        loss = F.mse_loss(reconstruction, pixels[index]) + 0.5 * F.l1_loss(reconstruction, pixels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vae.requires_grad_(False).eval()


# --- 4. UNet --------------------------------------------------------------------------------------
def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(48, 96, 96),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )


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


def train_unet(
    scenes,
    images: np.ndarray,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer,
    plan: TrainingPlan,
    partial: Path,
    on_checkpoint=None,
) -> UNet2DConditionModel:
    """v-prediction on fixed latents; 10 % of captions dropped for classifier-free guidance;
    the saved weights are an exponential moving average (decay 0.999).

    Every `plan.checkpoint_every` steps the online and EMA weights go to `partial` (resumed from
    there, with a fresh optimiser) and `on_checkpoint(ema)` may write a usable snapshot.
    """
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    start = 0
    if partial.exists():
        state = load_file(str(partial))
        unet.load_state_dict({k[len("online.") :]: v for k, v in state.items() if k.startswith("online.")})
        ema.load_state_dict({k[len("ema.") :]: v for k, v in state.items() if k.startswith("ema.")})
        with safe_open(str(partial), framework="pt") as handle:
            start = int(handle.metadata()["step"]) + 1
    scheduler = training_scheduler()
    with torch.no_grad():
        pixels = _pixels(images) * 2 - 1
        latents = (
            torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
            * vae.config.scaling_factor
        )
    keys = [_scene_key(s) for s in scenes]
    texts, choices = [""], {}
    for key, scene in zip(keys, scenes):
        if key not in choices:
            variants = caption_variants(scene)
            choices[key] = list(range(len(texts), len(texts) + len(variants)))
            texts.extend(variants)
    states = encode_captions(text_encoder, tokenizer, texts)
    options = [choices[k] for k in keys]
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    rng = random.Random(plan.seed)
    bar = tqdm(range(start, plan.unet_steps), desc="UNet", initial=start, total=plan.unet_steps)
    for step in bar:
        _cosine_lr(optimizer, step, plan.unet_steps, 1e-3, warmup=200)
        index = torch.randint(len(latents), (plan.batch,))
        caption = torch.tensor([0 if rng.random() < 0.1 else rng.choice(options[i]) for i in index.tolist()])
        z0 = latents[index]
        noise = torch.randn_like(z0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (plan.batch,))
        prediction = unet(scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=states[caption]).sample
        loss = F.mse_loss(prediction, scheduler.get_velocity(z0, noise, t))
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
        if (step + 1) % plan.checkpoint_every == 0 and step + 1 < plan.unet_steps:
            weights = {f"online.{k}": v.contiguous() for k, v in unet.state_dict().items()}
            weights.update({f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()})
            save_file(weights, str(partial), metadata={"step": str(step)})
            if on_checkpoint is not None:
                on_checkpoint(ema.eval())
    return ema.eval()


# --- orchestration --------------------------------------------------------------------------------
def sampling_scheduler() -> DDIMScheduler:
    return DDIMScheduler.from_config(
        training_scheduler().config, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing"
    )


def train_world(out: Path, plan: TrainingPlan | None = None) -> dict:
    """Train (or resume) every stage into `out`; returns the seconds each stage took."""
    plan = plan or TrainingPlan()
    out.mkdir(parents=True, exist_ok=True)
    # Tiny weights and softmax gradients drift into subnormal floats, which x86 CPUs compute
    # tens of times slower; flushing them to zero changes nothing measurable in the result.
    torch.set_flush_denormal(True)
    torch.manual_seed(plan.seed)
    timings_path = out / "training.json"
    timings = json.loads(timings_path.read_text())["seconds"] if timings_path.exists() else {}
    scenes, images = render_dataset(plan.n_images, plan.seed)
    tokenizer = word_tokenizer(vocabulary_words(), max_length=TEXT_LENGTH)

    def stage(name: str, work) -> None:
        if name in timings:  # finished in an earlier run
            return
        start = time.time()
        work()
        timings[name] = round(time.time() - start, 1)
        timings_path.write_text(json.dumps({"plan": asdict(plan), "seconds": timings}, indent=1))

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

    def unet_stage():
        clip = CLIPModel.from_pretrained(out / "clip")
        text_encoder = CLIPTextModel(clip.config.text_config)
        text_encoder.load_state_dict(clip.text_model.state_dict())
        text_encoder.eval()
        vae = AutoencoderKL.from_pretrained(out / "vae").eval()

        def save(unet: UNet2DConditionModel) -> None:
            StableDiffusionPipeline(
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=unet,
                scheduler=sampling_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            ).save_pretrained(out)

        save(
            train_unet(
                scenes,
                images,
                vae,
                text_encoder,
                tokenizer,
                plan,
                out / "unet-partial.safetensors",
                on_checkpoint=save,
            )
        )
        (out / "unet-partial.safetensors").unlink(missing_ok=True)

    stage("unet", unet_stage)
    (out / "captions.txt").write_text("\n".join(canonical_caption(s) for s in all_scenes()) + "\n", encoding="utf-8")
    write_descriptor(out, **DESCRIPTOR)
    return timings


if __name__ == "__main__":
    import sys

    print(train_world(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("shapes-model")))
