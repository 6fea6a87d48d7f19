"""GPU speed of Difference Inversion at real model sizes (SD 2.1 and SDXL), with random weights.

The models are built from the published configurations kept in `benchmarks/configs/` (see its
README for their sources) with random weights, so nothing is downloaded; speed and memory do
not depend on the weights' values. Everything runs in `--dtype` (default bfloat16 on CUDA) at
the model's native resolution. Both sizes run diffinv's real code, timed the same way:

  - SD 2.1 size (768 px, v-prediction): OpenCLIP ViT-H text encoder, DDIM, a
    `StableDiffusionPipeline` → `StableDiffusionBackbone`; the ViT-H CLIP for the deltas and the
    CLIP loss (its text tower holds the text encoder's weights);
  - SDXL size (1024 px, ε): CLIP-L and bigG text encoders, Euler, a `StableDiffusionXLPipeline` →
    `StableDiffusionXLBackbone` (DIFF tokens 768 + 1280 wide, pooled text and size conditioning);
    the ViT-bigG CLIP, whose text tower holds encoder 2's weights and projection, so that the
    CLIP loss sees encoder 2's 1280 columns of D̃ as in diffinv.

For each size (`bench`):
  - floor: one batched UNet forward + backward on the two latents (z_A, z_A′) at two timesteps,
    the gradient reaching the text states (for SDXL also the pooled embedding; the size numbers
    as the backbone makes them) — the least any implementation of step ⑥ must do;
  - step: one step of diffinv's real loop (`inversion.fit_diff_tokens` on the backbone): text
    encoder(s) with ±D̃, the UNet call, the CLIP loss through the CLIP's text tower, AdamW. Floor
    and step are timed interleaved, `--repeats` times `--steps` steps each, after a warm-up;
    medians are reported, and their ratio;
  - one analogy, phase by phase: PEZ on A and A′, the CLIP deltas and VAE latents, the fit,
    PEZ on B, drawing B′ (img2img at the default strength, classifier-free guidance), and the
    same analogy extrapolated to the paper's counts (PEZ, N and sampling steps of the defaults);
  - peak GPU memory per phase (`torch.cuda.max_memory_allocated`);
  - the same analogy again in `--memory low` (UNet checkpointing, VAE slicing and tiling, model CPU
    offload between stages on CUDA): peak GPU memory per phase, the fit's step against the default
    mode's, the drawing's time (`--default-memory-only` skips it). benchmarks/memory.py measures
    the same on a CPU, stage by stage.

    python benchmarks/gpu_speed.py --models sd21,sdxl --json gpu.json
    python benchmarks/gpu_speed.py --tiny --device cpu --dtype float32 --steps 2 --pez-steps 2 --sampling-steps 2

`--tiny` shrinks every configuration (few layers and channels, 64 px; SDXL's encoders 16 and 32
wide, the bigG CLIP's text tower still encoder 2) so that the whole script runs on a CPU in
seconds: a smoke test of the code path, meaningless as a speed figure.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import math
import statistics
import string
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from diffinv.backbones.sd import StableDiffusionBackbone
from diffinv.backbones.sdxl import StableDiffusionXLBackbone, XLTextStates
from diffinv.clip_space import ClipSpace
from diffinv.config import InversionConfig
from diffinv.errors import DiffinvError
from diffinv.inversion import (
    PreparedPair,
    check_compatible,
    fit_diff_tokens,
    noised_pair,
    prompt_pairs,
)
from diffinv.loading import resolve_device_dtype
from diffinv.memory import apply_low_memory
from diffinv.pipeline import DifferenceInversion
from diffinv.testing import WORDS, word_tokenizer
from diffinv.tokens import DiffTokens

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MODELS = ("sd21", "sdxl")
PAPER = InversionConfig()  # the paper's / VISII's counts, for the extrapolated analogy time
CAPTIONS = ("a photo of a red circle", "a photo of a blue circle")
TINY_NOTE = "tiny configurations (--tiny): a smoke run of the code path, not a speed figure"


# --- configurations -------------------------------------------------------------------------
def load_config(name: str) -> dict:
    """`configs/<name>.json` without its note keys (those starting with "_")."""
    values = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {key: value for key, value in values.items() if not key.startswith("_")}


def tiny_text(config: dict, width: int, vocab_size: int) -> dict:
    """A CLIP text tower `width` wide, 2 layers deep, otherwise as `config`."""
    return dict(
        config,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=4 if width % 4 == 0 else 2,
        projection_dim=width,
        vocab_size=vocab_size,
    )


def tiny_unet(config: dict, cross_attention_dim: int, pooled_width: int | None = None) -> dict:
    """The same block layout (and added embeddings) with 32–64 channels, one layer per block, 8² latents."""
    levels = len(config["block_out_channels"])
    channels = [32 * 2 ** min(level, 1) for level in range(levels)]
    tiny = dict(
        config,
        block_out_channels=channels,
        attention_head_dim=[c // 16 for c in channels],
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        sample_size=8,
    )
    if isinstance(config.get("transformer_layers_per_block"), list):
        tiny["transformer_layers_per_block"] = [1] * levels
    if config.get("addition_embed_type") == "text_time":
        tiny["addition_time_embed_dim"] = 8
        tiny["projection_class_embeddings_input_dim"] = pooled_width + 6 * 8  # pooled text + 6 time ids
    return tiny


def tiny_vae(config: dict) -> dict:
    levels = len(config["block_out_channels"])
    channels = [8 * 2 ** min(level // 2, 1) for level in range(levels)]
    return dict(
        config, block_out_channels=channels, layers_per_block=1, norm_num_groups=8, sample_size=8 * 2 ** (levels - 1)
    )


def tiny_clip(config: dict, width: int, vocab_size: int) -> dict:
    vision = dict(
        config["vision_config"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=width,
    )
    return dict(
        config,
        projection_dim=width,
        text_config=tiny_text(config["text_config"], width, vocab_size),
        vision_config=vision,
    )


def clip_sized_tokenizer(vocab_size: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with exactly `vocab_size` ids (bytes, merged letter strings, then
    <|startoftext|> and <|endoftext|> last, as in CLIP), so that every id of a full-size
    embedding table decodes to text. CLIP's real merges cannot be downloaded here; which strings
    the ids stand for does not matter for speed."""
    vocab = set(word_tokenizer([]).get_vocab())
    free = vocab_size - len(vocab)
    words = []

    def candidates():
        yield from WORDS
        for length in itertools.count(2):
            for letters in itertools.product(string.ascii_lowercase, repeat=length):
                yield "".join(letters)

    for word in candidates():
        new, suffix = [], word[-1] + "</w>"  # the word's tokens as `word_tokenizer` grows them, from its end
        for character in reversed(word[:-1]):
            suffix = character + suffix
            if suffix not in vocab:
                new.append(suffix)
        if not new or len(new) > free:
            continue
        vocab.update(new)
        words.append(word)
        free -= len(new)
        if free == 0:
            break
    tokenizer = word_tokenizer(words)
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer


# --- timing and memory ----------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds), the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    synchronize(device)
    return result, time.perf_counter() - start


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak memory allocated by tensors since the last `reset_peak`, GiB (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def frozen(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return module.to(dtype).requires_grad_(False).eval()


def picture(size: int, colour: str, shape: str, seed: int) -> Image.Image:
    """A size² RGB picture: one shape on a noisy background."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((200 + rng.integers(0, 55, (size, size, 3))).astype(np.uint8), "RGB")
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=colour)
    return image


# --- the two model sizes ------------------------------------------------------------------
def build_sd21(tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[StableDiffusionBackbone, ClipSpace]:
    """SD 2.1 size: UNet (v-prediction), OpenCLIP ViT-H text encoder, VAE, DDIM; the ViT-H CLIP."""
    text = load_config("sd21_text_encoder")
    tokenizer = word_tokenizer(WORDS) if tiny else clip_sized_tokenizer(text["vocab_size"])
    unet, vae, clip = load_config("sd21_unet"), load_config("sd21_vae"), load_config("sd21_clip_vit_h")
    if tiny:
        text = tiny_text(text, 32, len(tokenizer))
        unet, vae, clip = tiny_unet(unet, 32), tiny_vae(vae), tiny_clip(clip, 32, len(tokenizer))
    with torch.device(device):  # random weights made on the device: no copy of a 3 GB model
        modules = dict(
            vae=frozen(AutoencoderKL.from_config(vae), dtype),
            text_encoder=frozen(CLIPTextModel(CLIPTextConfig(**text)), dtype),
            unet=frozen(UNet2DConditionModel.from_config(unet), dtype),
        )
        clip_model = frozen(CLIPModel(CLIPConfig(**clip)), dtype)
    # As in the real models, SD 2's text encoder is the CLIP's text tower less its last layer (diffinv
    # checks that the two share their token embeddings): copy it in, the last layer stays random.
    load = clip_model.text_model.load_state_dict(modules["text_encoder"].state_dict(), strict=False)
    assert not load.unexpected_keys, load.unexpected_keys
    pipe = StableDiffusionPipeline(
        **modules,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler.from_config(load_config("sd21_scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return StableDiffusionBackbone(pipe, model_id="random-sd21-size"), ClipSpace(clip_model, tokenizer)


def build_sdxl(tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[StableDiffusionXLBackbone, ClipSpace]:
    """SDXL size: UNet (ε, added text/time embeddings), CLIP-L and bigG text encoders, VAE, Euler;
    the ViT-bigG CLIP, whose text tower is encoder 2. --tiny: encoders 16 and 32 wide (unequal,
    so that a mixed-up split of D̃ fails), the CLIP's text tower 32 wide like encoder 2."""
    text_1, text_2 = load_config("sdxl_text_encoder"), load_config("sdxl_text_encoder_2")
    tokenizer = word_tokenizer(WORDS) if tiny else clip_sized_tokenizer(text_1["vocab_size"])
    tokenizer_2 = copy.deepcopy(tokenizer)  # one vocabulary; SDXL's second tokenizer pads with "!"
    tokenizer_2.pad_token = "!"
    unet, vae, clip = load_config("sdxl_unet"), load_config("sdxl_vae"), load_config("sdxl_clip_vit_bigg")
    if tiny:
        text_1, text_2 = tiny_text(text_1, 16, len(tokenizer)), tiny_text(text_2, 32, len(tokenizer))
        unet = tiny_unet(unet, 16 + 32, pooled_width=32)
        vae, clip = tiny_vae(vae), tiny_clip(clip, 32, len(tokenizer))
    with torch.device(device):
        modules = dict(
            vae=frozen(AutoencoderKL.from_config(vae), dtype),
            text_encoder=frozen(CLIPTextModel(CLIPTextConfig(**text_1)), dtype),
            text_encoder_2=frozen(CLIPTextModelWithProjection(CLIPTextConfig(**text_2)), dtype),
            unet=frozen(UNet2DConditionModel.from_config(unet), dtype),
        )
        clip_model = frozen(CLIPModel(CLIPConfig(**clip)), dtype)
    # ViT-bigG's text tower *is* SDXL's encoder 2, all its layers and its projection: copy both in
    # (strictly: the two configurations must agree), so that `inversion.check_compatible` passes.
    encoder_2 = modules["text_encoder_2"]
    clip_model.text_model.load_state_dict(encoder_2.text_model.state_dict())
    clip_model.text_projection.load_state_dict(encoder_2.text_projection.state_dict())
    pipe = StableDiffusionXLPipeline(
        **modules,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=EulerDiscreteScheduler.from_config(load_config("sdxl_scheduler")),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return StableDiffusionXLBackbone(pipe, model_id="random-sdxl-size"), ClipSpace(clip_model, tokenizer)


BUILDERS = {"sd21": build_sd21, "sdxl": build_sdxl}


def leaf(text_states):
    """Text states cut from their graph, as a leaf that takes a gradient (both fields of SDXL's)."""
    if isinstance(text_states, XLTextStates):
        return XLTextStates(leaf(text_states.hidden), leaf(text_states.pooled))
    return text_states.detach().requires_grad_(True)


def unet_floor(backbone, latents, text_states, steps: int, generator) -> float:
    """Seconds per step of the floor: batched UNet forward + backward on the latents, the gradient
    reaching the text states (timesteps, noise and targets drawn as the fit draws them; SDXL's
    pooled embedding and size numbers go in as the backbone gives them)."""

    def run():
        for _ in range(steps):
            noisy, timesteps, targets = noised_pair(backbone, latents, generator)
            prediction = backbone.predict(noisy, timesteps, leaf(text_states))
            (prediction.float() - targets.float()).pow(2).mean().backward()

    return timed(backbone.device, run)[1] / steps


def bench(name: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    """Build the `name`-size models, then time diffinv's real loop on them: floor against step,
    one analogy phase by phase, peak memory, and the analogy extrapolated to the paper's counts."""
    torch.manual_seed(0)
    (backbone, clip), build_s = timed(device, BUILDERS[name], args.tiny, device, dtype)
    weights = allocated_gib(device)
    di = DifferenceInversion(backbone, clip, captioner=None)
    size = backbone.native_resolution
    a, a_prime = picture(size, "red", "circle", 1), picture(size, "blue", "circle", 2)
    b = picture(size, "red", "square", 3)
    config = InversionConfig(steps=args.steps, pez_steps=args.pez_steps, sampling_steps=args.sampling_steps)
    check_compatible(backbone, clip, config)  # the CLIP's text tower is the (second) text encoder
    # Timesteps and noise are drawn on the CPU (`noised_pair`), as `DifferenceInversion.fit` does.
    noise_generator = torch.Generator().manual_seed(0)

    def prepare(cfg) -> tuple[PreparedPair, dict]:
        """Steps ①–③ with the captions given: PEZ on A and A′, then the CLIP deltas and VAE latents."""
        seconds = {}
        (prompts,), seconds["pez_a_a_prime"] = timed(
            device, prompt_pairs, clip, [(a, a_prime)], [CAPTIONS], cfg, torch.Generator().manual_seed(0), False
        )
        pair, seconds["clip_deltas_vae_latents"] = timed(
            device, di.prepare, a, a_prime, cfg, captions=CAPTIONS, prompts=prompts, progress=False
        )
        return pair, seconds

    def fit(pair, cfg):
        diff, _ = fit_diff_tokens(backbone, clip, pair, cfg, noise_generator, progress=False)
        return DiffTokens(
            embeddings=diff.cpu(),
            model_id=backbone.model_id,
            vocab_size=backbone.vocab_size,
            family=backbone.family,
            encoder_widths=backbone.encoder_widths,
            config=cfg,
            prompt_a=pair.prompt_a,
            prompt_a_prime=pair.prompt_a_prime,
        )

    def draw(tokens, prompt_b, cfg):
        return di.apply(tokens, b, seed=0, prompt=prompt_b, config=cfg, progress=False)

    @torch.no_grad()
    def text_states(pair):
        """The floor's text states: (prompt_A′, prompt_A) with their DIFF-token slots at zero."""
        ids, slot_mask = backbone.slot_ids([pair.prompt_a_prime, pair.prompt_a], config.n_tokens)
        zeros = torch.zeros(2, config.n_tokens, backbone.token_width, device=device)
        return backbone.encode_prompt(ids, slot_mask, zeros)

    # Warm-up: every kernel and code path once (cuDNN/cuBLAS set-up, lazy pipeline creation).
    warm = config.replace(steps=2, pez_steps=1, sampling_steps=2)
    pair, _ = prepare(warm)
    draw(fit(pair, warm), "a photo", warm)
    unet_floor(backbone, pair.latents, text_states(pair), 1, noise_generator)

    # One analogy, phase by phase (captions given: the captioner, BLIP-2, is not part of it).
    reset_peak(device)
    pair, phases = prepare(config)
    peak = {"pez_deltas_latents": peak_gib(device)}
    states = text_states(pair)

    # Step against floor, interleaved.
    reset_peak(device)
    floors, steps = [], []
    for _ in range(args.repeats):
        floors.append(unet_floor(backbone, pair.latents, states, args.steps, noise_generator))
        steps.append(timed(device, fit, pair, config)[1] / args.steps)
    peak["floor_and_fit"] = peak_gib(device)
    floor, step = statistics.median(floors), statistics.median(steps)

    tokens, phases["fit"] = timed(device, fit, pair, config)
    reset_peak(device)
    prompt_b, phases["pez_b"] = timed(device, di.describe, b, config, 0, False)
    peak["pez_b"] = peak_gib(device)
    reset_peak(device)
    _, phases["sampling"] = timed(device, draw, tokens, prompt_b, config)
    peak["sampling"] = peak_gib(device)
    known = [value for value in peak.values() if value is not None]
    low_memory = low_memory_run(backbone, clip, device, args, prepare, fit, draw, step) if args.low_memory else None

    pez = phases["pez_a_a_prime"] + phases["pez_b"]
    paper = {
        "pez": pez * PAPER.pez_steps / args.pez_steps,
        "clip_deltas_vae_latents": phases["clip_deltas_vae_latents"],
        "fit": step * PAPER.steps,
        "sampling": phases["sampling"] * PAPER.sampling_steps / args.sampling_steps,
    }
    paper["total"] = sum(paper.values())
    encoders = {"text_encoder": backbone.text_encoder}
    if isinstance(backbone, StableDiffusionXLBackbone):
        encoders["text_encoder_2"] = backbone.text_encoder_2
    return {
        "backbone": type(backbone).__name__,
        "family": backbone.family,
        "token_width": backbone.token_width,
        "encoder_widths": list(backbone.encoder_widths) if backbone.encoder_widths else None,
        "clip_text_tower_matches": True,  # `check_compatible` above passed
        "resolution": size,
        "latents": list(pair.latents.shape),
        "parameters": {
            "unet": parameters(backbone.unet),
            **{key: parameters(module) for key, module in encoders.items()},
            "vae": parameters(backbone.vae),
            "clip": parameters(clip.model),
        },
        "build_s": build_s,
        "floor_s": floor,
        "step_s": step,
        "step_over_floor": step / floor,
        "floor_runs_s": floors,
        "step_runs_s": steps,
        "analogy_s": {**phases, "pez_total": pez, "total": sum(phases.values())},
        "analogy_counts": {
            "pez_steps": args.pez_steps,
            "fit_steps": args.steps,
            "sampling_steps": args.sampling_steps,
            "sampling_mode": config.sampling_mode,
            "strength": config.strength,
            "unet_calls_sampling": int(args.sampling_steps * config.strength)
            if config.sampling_mode == "img2img"
            else args.sampling_steps,
        },
        "paper_defaults_estimate_s": paper,
        "memory_gib": {"weights": weights, "peak": peak, "peak_overall": max(known) if known else None},
        "low_memory": low_memory,
    }


def low_memory_run(backbone, clip, device: torch.device, args, prepare, fit, draw, default_step_s: float) -> dict:
    """The same analogy in `--memory low` (`diffinv.memory.apply_low_memory` on these models: UNet
    checkpointing, VAE slicing and tiling, and on CUDA model CPU offload between stages, every model
    first sent to the CPU): peak GPU memory per phase (`torch.cuda.max_memory_allocated`; None off
    CUDA), the fit's seconds per step against the default mode's (`--steps` steps, once: the default's
    figure is the median of `--repeats`) and the drawing's seconds. Run after the default mode's
    figures, since it changes the models."""
    apply_low_memory(backbone, clip, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    config = InversionConfig(steps=args.steps, pez_steps=args.pez_steps, sampling_steps=args.sampling_steps)
    resident = allocated_gib(device)  # with offload: nothing of the models until a stage needs it
    reset_peak(device)
    pair, _ = prepare(config)
    peak = {"pez_deltas_latents": peak_gib(device)}
    reset_peak(device)
    tokens, fit_s = timed(device, fit, pair, config)
    peak["fit"] = peak_gib(device)
    reset_peak(device)
    _, sampling_s = timed(device, draw, tokens, "a photo of a red square", config)
    peak["sampling"] = peak_gib(device)
    known = [value for value in peak.values() if value is not None]
    step_s = fit_s / args.steps
    return {
        "offload": backbone.offload is not None,
        "resident_after_loading": resident,
        "peak": peak,
        "peak_overall": max(known) if known else None,
        "step_s": step_s,
        "step_over_default": step_s / default_step_s,
        "sampling_s": sampling_s,
    }


# --- report ---------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def _gib(value: float | None) -> str:
    return "n/a (not CUDA)" if value is None else f"{value:.2f} GiB"


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 1e6 else f"{count / 1e6:.3f} M"


def _table(title: str, rows: list[tuple[str, str]]) -> list[str]:
    return ["", f"### {title}", "", "| what | value |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]


# What the report says of each model size.
DESCRIPTIONS = {
    "sd21": {
        "title": "SD 2.1 size",
        "floor": "",
        "step": "text encoder ±D̃, UNet, CLIP loss through the ViT-H text tower, AdamW",
    },
    "sdxl": {
        "title": "SDXL size",
        "floor": ", pooled text + size embeddings",
        "step": "both text encoders ±D̃, UNet with pooled text + size conditioning, CLIP loss on encoder 2's "
        "columns through the ViT-bigG text tower, AdamW",
    },
}
PART_NAMES = {
    "unet": "UNet",
    "text_encoder": "text encoder",
    "text_encoder_2": "text encoder 2",
    "vae": "VAE",
    "clip": "CLIP",
}


def analogy_rows(name: str, model: dict) -> list[tuple[str, str]]:
    """One model size's table: parameters, floor, step, step / floor, the analogy phase by phase and
    extrapolated to the paper's counts, memory."""
    text = DESCRIPTIONS[name]
    counts, phases, paper, memory = (
        model["analogy_counts"],
        model["analogy_s"],
        model["paper_defaults_estimate_s"],
        model["memory_gib"],
    )
    h, w = model["latents"][-2:]
    parts = " / ".join(PART_NAMES[part] for part in model["parameters"])
    widths = f"DIFF tokens {model['token_width']} wide"
    if model["encoder_widths"]:
        widths += " = " + " + ".join(str(width) for width in model["encoder_widths"])
    return [
        ("backbone", f"`{model['backbone']}` ({widths})"),
        (f"parameters: {parts}", " / ".join(_millions(v) for v in model["parameters"].values())),
        (f"floor: UNet forward + backward, batch 2, {h}×{w} latents{text['floor']}", _ms(model["floor_s"])),
        (f"step of `fit_diff_tokens` ({text['step']})", _ms(model["step_s"])),
        ("**step / floor**", f"**{model['step_over_floor']:.3f}**"),
        (f"PEZ on A and A′ ({counts['pez_steps']} steps)", _s(phases["pez_a_a_prime"])),
        ("CLIP deltas (slerp) + VAE latents", _s(phases["clip_deltas_vae_latents"])),
        (f"fit ({counts['fit_steps']} steps)", _s(phases["fit"])),
        (f"PEZ on B ({counts['pez_steps']} steps)", _s(phases["pez_b"])),
        (
            f"drawing B′ ({counts['sampling_mode']}, strength {counts['strength']}, {counts['sampling_steps']} "
            f"steps: {counts['unet_calls_sampling']} UNet calls at batch 2 for guidance, VAE encode + decode)",
            _s(phases["sampling"]),
        ),
        ("one analogy as run (captions given)", _s(phases["total"])),
        (
            f"one analogy at the defaults (PEZ {PAPER.pez_steps} steps, N = {PAPER.steps}, "
            f"{PAPER.sampling_steps} sampling steps), extrapolated",
            f"{_s(paper['total'])} (PEZ {_s(paper['pez'])}, fit {_s(paper['fit'])}, sampling {_s(paper['sampling'])})",
        ),
        ("memory: weights", _gib(memory["weights"])),
        *((f"peak memory: {part.replace('_', ' ')}", _gib(value)) for part, value in memory["peak"].items()),
        *low_memory_rows(model.get("low_memory")),
    ]


def low_memory_rows(low: dict | None) -> list[tuple[str, str]]:
    """The `--memory low` rows of a model size's table (none when it was not run)."""
    if low is None:
        return []
    offload = "on" if low["offload"] else "off (not CUDA)"
    return [
        (f"**--memory low** (model CPU offload {offload}): step of `fit_diff_tokens`", _ms(low["step_s"])),
        ("--memory low: step / default step", f"{low['step_over_default']:.3f}"),
        ("--memory low: drawing B′", _s(low["sampling_s"])),
        ("--memory low: memory resident after loading", _gib(low["resident_after_loading"])),
        *(
            (f"--memory low: peak memory: {part.replace('_', ' ')}", _gib(value))
            for part, value in low["peak"].items()
        ),
    ]


def markdown(report: dict) -> str:
    """The report as markdown tables, one per model size."""
    lines = [
        f"device: {report['device_name']} ({report['device']}), dtype {report['dtype']}, torch {report['torch']}, "
        f"diffusers {report['diffusers']}, transformers {report['transformers']}; "
        f"medians of {report['repeats']} repeats of {report['steps']} steps",
    ]
    if report["tiny"]:
        lines.append(f"**{TINY_NOTE}**")
    for name, model in report["models"].items():
        title = f"{DESCRIPTIONS[name]['title']} ({model['resolution']} px, random weights)"
        lines += _table(title, analogy_rows(name, model))
    return "\n".join(lines)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive, default=50, help="steps per timed run (fit and floor); default 50")
    parser.add_argument("--pez-steps", type=positive, default=300, help="PEZ steps per prompt; default 300")
    parser.add_argument("--sampling-steps", type=positive, default=50, help="scheduler steps for B′; default 50")
    parser.add_argument("--repeats", type=positive, default=5, help="timed runs, median reported; default 5")
    parser.add_argument("--device", default=None, help="default cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16; default bfloat16 on CUDA")
    parser.add_argument("--models", default="sd21,sdxl", help="comma-separated subset of sd21,sdxl")
    parser.add_argument("--threads", type=positive, default=None, help="CPU threads for torch; default torch's")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations: a CPU smoke run in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--default-memory-only",
        dest="low_memory",
        action="store_false",
        help="skip the second run of each analogy in --memory low (peak memory and step time of both modes)",
    )
    args = parser.parse_args(argv)
    if int(args.sampling_steps * PAPER.strength) < 1:  # img2img runs int(steps × strength) UNet steps
        parser.error(
            f"--sampling-steps must be at least {math.ceil(1 / PAPER.strength)} (img2img at strength {PAPER.strength})"
        )
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown or not args.models:
        parser.error(f"--models must be a comma-separated subset of {','.join(MODELS)}, got {unknown or 'nothing'}")
    return args


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmark (arguments as on the command line); print and return the report."""
    import diffusers
    import transformers

    args = parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()  # config keys of other scheduler classes, dtype casts
    device, dtype = resolve_device_dtype(args.device, args.dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": args.tiny,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "steps": args.steps,
        "pez_steps": args.pez_steps,
        "sampling_steps": args.sampling_steps,
        "repeats": args.repeats,
        "cpu_threads": torch.get_num_threads(),
        "models": {},
    }
    if args.tiny:
        report["note"] = TINY_NOTE
    for name in args.models:
        report["models"][name] = bench(name, args, device, dtype)
        gc.collect()  # the next model size starts from an empty device
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name, model in report["models"].items():  # a broken timing must not pass for a figure
        bad = [k for k, v in model.items() if isinstance(v, float) and not (math.isfinite(v) and v > 0)]
        if bad:
            raise RuntimeError(f"{name}: non-positive or non-finite figures {bad}")
    print(markdown(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except DiffinvError as error:  # e.g. --device cuda without a GPU: one line, as the CLI does
        print(f"gpu_speed: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
