"""Peak memory of Difference Inversion at full size, default mode against `--memory low`, measured on a CPU.

What sits on the accelerator in a stage of an analogy is the weights resident then plus the stage's
activations; the peak of an analogy is the largest of these sums. Here:

  - activations are MEASURED: each stage runs diffinv's real code on the CPU at full size (random weights
    from the published configurations in `benchmarks/configs/`, in `--dtype`, default bfloat16 as on CUDA)
    under `LiveBytes`, which counts the bytes of every tensor storage an operator creates while it is on
    and that is still alive (autograd's saved tensors included, until the backward frees them), and keeps
    the peak. Views and in-place results (the storage of an input) are not new memory and are not counted.
    Not seen: scratch memory inside one operator (oneDNN's, cuDNN's and the attention kernels' workspaces)
    and the CUDA caching allocator's reserve, so a GPU's `max_memory_allocated` may read a little higher;
  - weights are COUNTED: the parameters and buffers of the modules resident in the stage × the bytes of
    `--dtype`. In the default mode every model stays on the device from loading on (BLIP-2 too while it
    captions); in low mode only the running stage's unit (`diffinv.memory.StageOffload`, which offloads on
    CUDA only: on this CPU the residency is modelled from its units, the same in code and here);
  - BLIP-2 (blip2-opt-2.7b, built on PyTorch's meta device from transformers' BLIP-2 defaults, which are its
    ViT-g and Q-Former, and OPT-2.7B's published sizes) is counted as weights only; the CLIP image features
    and PEZ stages are not measured (a 224-px ViT at batch ≤ 3, a 77-token text tower: far below the fit).

Stages: captioning (BLIP-2), CLIP image features, VAE encode of A and A′ (batch 2; img2img's encode of B
is batch 1), one fit step (`inversion.fit_diff_tokens`, one step: text encoder(s) with ±D̃, UNet forward
and backward at batch 2, the CLIP loss through the CLIP text tower, AdamW), one sampling step (a UNet call
at batch 2, classifier-free guidance, no gradients) and the VAE decode of B′. Seconds per step are wall
time on this CPU (`--threads`), indicative only: a GPU's ratio of low to default differs.

    python benchmarks/memory.py --models sd15,sd21,sdxl --threads 1 --json memory.json
    python benchmarks/memory.py --models sdxl --stages vae_encode,vae_decode   # the VAE alone in RAM
    python benchmarks/memory.py --tiny          # a seconds-long smoke run of the code path, no figure

Run one at a time and check free RAM first: a model is built once (SDXL: ~8 GB of bfloat16 weights with
the CLIP's image tower left on the meta device) and `--max-ram-gb` (default 14) stops the process when its
resident memory passes that many GB, saying which stage did it; the stages printed before it stand. With
only VAE stages asked for, every other model is built on the meta device (its weights still counted).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import threading
import time
import weakref
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_speed
from diffinv.backbones.sd import StableDiffusionBackbone
from diffinv.backbones.sdxl import StableDiffusionXLBackbone
from diffinv.clip_space import ClipSpace
from diffinv.config import InversionConfig
from diffinv.inversion import PreparedPair, fit_diff_tokens
from diffinv.loading import DTYPES
from diffinv.memory import apply_low_memory
from diffinv.testing import WORDS, word_tokenizer

GIB = 2**30
MODES = ("default", "low")
# name → configurations (benchmarks/configs/<name>.json), pipeline and backbone classes, resolution.
MODELS = {
    "sd15": dict(
        title="SD 1.5",
        resolution=512,
        unet="sd15_unet",
        encoders=[("sd15_text_encoder", CLIPTextModel)],
        vae="sd15_vae",
        scheduler=("sd15_scheduler", PNDMScheduler),
        clip="sd15_clip_vit_l",
        pipeline=StableDiffusionPipeline,
        backbone=StableDiffusionBackbone,
    ),
    "sd21": dict(
        title="SD 2.1",
        resolution=768,
        unet="sd21_unet",
        encoders=[("sd21_text_encoder", CLIPTextModel)],
        vae="sd21_vae",
        scheduler=("sd21_scheduler", DDIMScheduler),
        clip="sd21_clip_vit_h",
        pipeline=StableDiffusionPipeline,
        backbone=StableDiffusionBackbone,
    ),
    "sdxl": dict(
        title="SDXL",
        resolution=1024,
        unet="sdxl_unet",
        encoders=[("sdxl_text_encoder", CLIPTextModel), ("sdxl_text_encoder_2", CLIPTextModelWithProjection)],
        vae="sdxl_vae",
        scheduler=("sdxl_scheduler", EulerDiscreteScheduler),
        clip="sdxl_clip_vit_bigg",
        pipeline=StableDiffusionXLPipeline,
        backbone=StableDiffusionXLBackbone,
    ),
}
# The stages of one analogy, in order, and the `StageOffload` unit each runs in (low mode's residents).
STAGES = {
    "captioning": "blip2",
    "image_features": "vision",
    "vae_encode": "vae",
    "fit_step": "text",
    "sampling_step": "text",
    "vae_decode": "vae",
}
STAGE_NAMES = {
    "captioning": "captioning A, A′ (BLIP-2)",
    "image_features": "CLIP image features",
    "vae_encode": "VAE encode of A, A′ (batch 2)",
    "fit_step": "one fit step (batch 2, forward + backward)",
    "sampling_step": "one sampling step (UNet, batch 2 for guidance)",
    "vae_decode": "VAE decode of B′",
}
MEASURED = ("vae_encode", "fit_step", "sampling_step", "vae_decode")


# --- counting live tensor bytes ---------------------------------------------------------------------------
class LiveBytes(TorchDispatchMode):
    """While on, the bytes of tensor storages that operators create and that are still alive (`live`), and
    their peak (`peak`), checked after every operator. A storage is counted when an operator returns it and
    none of the operator's inputs holds it (views and in-place results are not new memory); it is released
    when PyTorch frees it (a weak reference's callback), e.g. a saved activation once the backward used it."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._counted: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                key = _key(tensor)
                if key not in inputs and key not in self._counted:
                    self._count(tensor.untyped_storage(), key)
        return out

    def _count(self, storage, key: int) -> None:
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        self._counted[key] = weakref.ref(storage, lambda _, key=key, size=size: self._release(key, size))

    def _release(self, key: int, size: int) -> None:
        if self._counted.pop(key, None) is not None:
            self.live -= size


def _key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata  # the storage itself, shared by its views


def measured(fn, *args, **kwargs) -> tuple[object, float, float, float]:
    """(fn(*args, **kwargs), peak GiB of new live tensors while it ran, wall seconds, CPU seconds). The CPU
    seconds of this process are the steadier figure on a shared machine: other processes' load stretches
    the wall time, much less the work done."""
    gc.collect()
    counter = LiveBytes()
    start, start_cpu = time.perf_counter(), time.process_time()
    with counter:
        result = fn(*args, **kwargs)
    return result, counter.peak / GIB, time.perf_counter() - start, time.process_time() - start_cpu


# --- the models ---------------------------------------------------------------------------------------------
def tensor_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """Bytes of `module`'s parameters and buffers on the device: floating ones in `dtype`, others as they are."""
    size = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        element = torch.finfo(dtype).bits // 8 if tensor.is_floating_point() else tensor.element_size()
        size += tensor.numel() * element
    return size


def blip2_bytes(dtype: torch.dtype) -> int:
    """Bytes of blip2-opt-2.7b's weights in `dtype`, counted on the meta device: transformers' BLIP-2
    defaults (ViT-g/14 with 39 layers 1408 wide, Q-Former, 32 queries) and OPT-2.7B (32 layers 2560 wide,
    32 heads, MLP 10240, vocabulary 50272; OPT paper, Table 1)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    opt = OPTConfig(
        vocab_size=50272,
        hidden_size=2560,
        num_hidden_layers=32,
        ffn_dim=10240,
        num_attention_heads=32,
        max_position_embeddings=2048,
        word_embed_proj_dim=2560,
    )
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(Blip2Config(text_config=opt.to_dict(), num_query_tokens=32))
    return tensor_bytes(model, dtype)


def clip_with_text_tower_only(config: dict, text_source: torch.nn.Module, dtype: torch.dtype) -> CLIPModel:
    """The CLIP with its text tower (and projection) in memory, its image tower on the meta device (shapes
    only: never run here, counted as weights). The text tower takes the text encoder's weights (all of
    them for SD 1.5 and SDXL's encoder 2, all but the last layer for SD 2.1), as in the real models,
    so that diffinv's check that the two share their vocabulary passes."""
    with torch.device("meta"):
        model = CLIPModel(CLIPConfig(**config))
    model.text_model.to_empty(device="cpu")
    model.text_projection.to_empty(device="cpu")
    for parameter in [*model.text_model.parameters(), *model.text_projection.parameters()]:
        torch.nn.init.normal_(parameter, std=0.02)  # what the text encoder does not hold stays random
    source = getattr(text_source, "text_model", text_source)  # CLIPTextModelWithProjection: its tower
    own = model.text_model.state_dict()
    shared = {key: value for key, value in source.state_dict().items() if key.removeprefix("text_model.") in own}
    model.text_model.load_state_dict({key.removeprefix("text_model."): v for key, v in shared.items()}, strict=False)
    source_buffers = dict(source.named_buffers())
    for key, buffer in model.text_model.named_buffers():  # not in state dicts (position ids): copied
        buffer.copy_(source_buffers[key])
    if hasattr(text_source, "text_projection"):
        model.text_projection.load_state_dict(text_source.text_projection.state_dict())
    return model.to(dtype).requires_grad_(False).eval()


def build(
    name: str, dtype: torch.dtype, tiny: bool, vae_only: bool = False
) -> tuple[StableDiffusionBackbone, ClipSpace]:
    """The `name`-size backbone (random weights from the configurations, in `dtype`) and its CLIP; `tiny`
    shrinks every configuration as `gpu_speed --tiny` does (a smoke run). `vae_only`: every model but the
    VAE on the meta device (counted, never run), for the VAE stages alone."""
    spec = MODELS[name]
    encoders_config = [gpu_speed.load_config(config) for config, _ in spec["encoders"]]
    vocab = encoders_config[0]["vocab_size"]
    tokenizer = word_tokenizer(WORDS) if tiny else gpu_speed.clip_sized_tokenizer(vocab)
    unet, vae, clip = (gpu_speed.load_config(spec[part]) for part in ("unet", "vae", "clip"))
    if tiny:
        widths = [16, 32] if len(encoders_config) == 2 else [32]
        encoders_config = [gpu_speed.tiny_text(c, w, len(tokenizer)) for c, w in zip(encoders_config, widths)]
        pooled = widths[-1] if len(widths) == 2 else None
        unet = gpu_speed.tiny_unet(unet, sum(widths), pooled_width=pooled)
        vae, clip = gpu_speed.tiny_vae(vae), gpu_speed.tiny_clip(clip, widths[-1], len(tokenizer))
    torch.manual_seed(0)
    with torch.device("meta" if vae_only else "cpu"):
        encoders = [
            cls(CLIPTextConfig(**config)).to(dtype).requires_grad_(False).eval()
            for (_, cls), config in zip(spec["encoders"], encoders_config)
        ]
        unet = UNet2DConditionModel.from_config(unet).to(dtype).requires_grad_(False).eval()
    modules = dict(
        vae=AutoencoderKL.from_config(vae).to(dtype).requires_grad_(False).eval(),
        unet=unet,
        text_encoder=encoders[0],
        tokenizer=tokenizer,
        scheduler=spec["scheduler"][1].from_config(gpu_speed.load_config(spec["scheduler"][0])),
    )
    if len(encoders) == 2:
        tokenizer_2 = word_tokenizer(WORDS) if tiny else gpu_speed.clip_sized_tokenizer(vocab)
        tokenizer_2.pad_token = "!"  # SDXL's second tokenizer pads with "!"
        modules.update(text_encoder_2=encoders[1], tokenizer_2=tokenizer_2, add_watermarker=False)
        pipe = StableDiffusionXLPipeline(**modules, force_zeros_for_empty_prompt=True)
    else:
        pipe = StableDiffusionPipeline(
            **modules, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    backbone = spec["backbone"](pipe, model_id=f"random-{name}-size")
    if vae_only:
        with torch.device("meta"):
            clip_model = CLIPModel(CLIPConfig(**clip)).to(dtype)
    else:
        clip_model = clip_with_text_tower_only(clip, encoders[-1], dtype)
    clip_space = ClipSpace(clip_model, tokenizer)
    clip_space.execution_device = torch.device("cpu")  # not the image tower's meta device
    return backbone, clip_space


# --- the stages ---------------------------------------------------------------------------------------------
def fit_step(backbone, clip, resolution: int) -> None:
    """One step of diffinv's loop (`fit_diff_tokens`, steps = 1) on random latents of A and A′."""
    side = resolution // backbone.pipe.vae_scale_factor
    latents = torch.randn(2, backbone.unet.config.in_channels, side, side).to(backbone.dtype)
    target = torch.nn.functional.normalize(torch.randn(clip.joint_width), dim=0)
    pair = PreparedPair("a", "b", "a photo of a red circle", "a photo of a blue circle", target, latents)
    fit_diff_tokens(backbone, clip, pair, InversionConfig(steps=1), torch.Generator().manual_seed(0), False)


@torch.no_grad()
def sampling_step(backbone, resolution: int) -> None:
    """One UNet call at batch 2 (conditional and unconditional rows of classifier-free guidance)."""
    side = resolution // backbone.pipe.vae_scale_factor
    noisy = torch.randn(2, backbone.unet.config.in_channels, side, side).to(backbone.dtype)
    states = backbone.encode_plain(["a photo of a red square", ""])
    backbone.predict(noisy, torch.tensor([500, 500]), states)


@torch.no_grad()
def vae_encode(backbone, resolution: int) -> None:
    backbone.vae.encode(torch.rand(2, 3, resolution, resolution).to(backbone.vae.dtype) * 2 - 1)


@torch.no_grad()
def vae_decode(backbone, resolution: int) -> None:
    side = resolution // backbone.pipe.vae_scale_factor
    backbone.vae.decode(torch.randn(1, backbone.vae.config.latent_channels, side, side).to(backbone.vae.dtype))


RUNS = {"vae_encode": vae_encode, "fit_step": fit_step, "sampling_step": sampling_step, "vae_decode": vae_decode}


def set_mode(backbone, clip, mode: str) -> None:
    """The switches of `mode` on the same models: low mode's as `apply_low_memory` sets them on a CPU (no
    offload: its residency is counted from its units), the default's by turning them off again."""
    if mode == "low":
        apply_low_memory(backbone, clip, torch.device("cpu"))
        return
    backbone.unet.disable_gradient_checkpointing()
    backbone.vae.disable_slicing()
    backbone.vae.disable_tiling()


def unit_bytes(backbone, clip, dtype: torch.dtype, tiny: bool) -> dict[str, int]:
    """Weights of each `StageOffload` unit (and BLIP-2's) in `dtype`, as they would sit on the device."""
    model = clip.model
    encoders = [backbone.text_encoder] + ([backbone.text_encoder_2] if hasattr(backbone, "text_encoder_2") else [])
    text = [*encoders, backbone.unet, model.text_model, model.text_projection]
    return {
        "text": sum(tensor_bytes(m, dtype) for m in text),
        "vision": tensor_bytes(model.vision_model, dtype) + tensor_bytes(model.visual_projection, dtype),
        "vae": tensor_bytes(backbone.vae, dtype),
        "blip2": 0 if tiny else blip2_bytes(dtype),
    }


def watch_ram(max_ram_gb: float, stage: list[str]) -> None:
    """Stop this process, saying so, once its resident memory passes `max_ram_gb` GB, so that a stage too
    large for the machine does not push its other work out (polled every 0.2 s by a daemon thread).
    `stage` holds the name of the stage running, for the message. The stages printed so far stand."""

    def watch():
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            resident = int(Path("/proc/self/statm").read_text().split()[1]) * page
            if resident > max_ram_gb * 1e9:
                print(f"memory.py: {stage[0]} passed {max_ram_gb} GB of RAM; stopped, not measured", flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def bench(name: str, args, dtype: torch.dtype) -> dict:
    spec = MODELS[name]
    start = time.perf_counter()
    vae_only = not {"fit_step", "sampling_step"} & set(args.stages)  # the UNet and encoders stay on meta
    backbone, clip = build(name, dtype, args.tiny, vae_only)
    build_s = time.perf_counter() - start
    resolution = backbone.native_resolution
    assert args.tiny or resolution == spec["resolution"], (name, resolution)
    units = unit_bytes(backbone, clip, dtype, args.tiny)
    running = ["building"]
    if args.max_ram_gb:
        watch_ram(args.max_ram_gb, running)
    result = {"resolution": resolution, "build_s": build_s, "weights_gib": {k: v / GIB for k, v in units.items()}}
    for mode in args.modes:
        set_mode(backbone, clip, mode)
        stages = {}
        for stage, unit in STAGES.items():
            resident = list(units) if mode == "default" else [unit]
            if mode == "default" and stage != "captioning":
                resident.remove("blip2")  # freed after captioning in both modes
            row = {"resident": resident, "weights_gib": sum(units[u] for u in resident) / GIB}
            if stage in MEASURED and stage in args.stages:
                running[0] = f"{name} {mode} {stage}"
                try:
                    inputs = (backbone, clip) if stage == "fit_step" else (backbone,)
                    _, row["activations_gib"], row["seconds"], row["cpu_seconds"] = measured(
                        RUNS[stage], *inputs, resolution
                    )
                except (RuntimeError, MemoryError) as error:  # the allocator refused: reported, not measured
                    if not isinstance(error, MemoryError) and "allocate" not in str(error):
                        raise
                    first_line = (str(error).splitlines() or [""])[0][:120]
                    row["not_measured"] = f"did not fit in RAM ({first_line})"
                    gc.collect()
                row.setdefault("activations_gib", None)
            stages[stage] = row
            if "activations_gib" in row and row["activations_gib"] is not None:
                row["total_gib"] = row["weights_gib"] + row["activations_gib"]
            print(f"{name} {mode} {stage}: {row}", file=sys.stderr, flush=True)
        result[mode] = stages
    return result


# --- report ---------------------------------------------------------------------------------------------
def _gib(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def peaks(stages: dict) -> dict:
    """The peak of an analogy (largest weights + activations over the measured stages), with and without
    the captioning stage (captions given or --captions-from: no BLIP-2)."""
    measured_totals = [row["total_gib"] for row in stages.values() if "total_gib" in row]
    captioning = stages["captioning"]["weights_gib"]
    if not measured_totals:
        return {"captions_given": None, "with_blip2": None}
    return {"captions_given": max(measured_totals), "with_blip2": max(*measured_totals, captioning)}


def markdown(report: dict) -> str:
    lines = [
        f"CPU, {report['threads']} thread(s), dtype {report['dtype']}, torch {report['torch']}, diffusers "
        f"{report['diffusers']}; GiB; activations measured (live tensor bytes), weights counted (resident modules)"
    ]
    if report["tiny"]:
        lines.append("**tiny configurations (--tiny): a smoke run of the code path, not a memory figure**")
    for name, model in report["models"].items():
        modes = [mode for mode in MODES if mode in model]
        lines += ["", f"### {MODELS[name]['title']} at {model['resolution']} px", ""]
        header = (
            "| stage | " + " | ".join(f"{m}: resident / weights + activations = total / CPU s" for m in modes) + " |"
        )
        lines += [header, "| --- |" + " --- |" * len(modes)]
        for stage in STAGES:
            cells = []
            for mode in modes:
                row = model[mode][stage]
                what = " + ".join(row["resident"])
                if "not_measured" in row:
                    cells.append(f"{what} / {_gib(row['weights_gib'])} + {row['not_measured']}")
                elif "activations_gib" in row and row["activations_gib"] is not None:
                    cells.append(
                        f"{what} / {_gib(row['weights_gib'])} + {_gib(row['activations_gib'])} = "
                        f"**{_gib(row['total_gib'])}** / {row['cpu_seconds']:.1f}"
                    )
                else:
                    cells.append(f"{what} / {_gib(row['weights_gib'])} (weights only)")
            lines.append(f"| {STAGE_NAMES[stage]} | " + " | ".join(cells) + " |")
        for mode in modes:
            peak = peaks(model[mode])
            lines.append(
                f"\n{mode}: peak {_gib(peak['captions_given'])} GiB with captions given, "
                f"{_gib(peak['with_blip2'])} GiB captioning with BLIP-2"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,sd21", help="comma-separated subset of sd15,sd21,sdxl")
    parser.add_argument("--modes", default="default,low", help="comma-separated subset of default,low")
    parser.add_argument("--stages", default=",".join(MEASURED), help=f"measured stages, of {','.join(MEASURED)}")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="default bfloat16 (CUDA's)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch; default 1")
    parser.add_argument(
        "--max-ram-gb", type=float, default=14.0, help="stop past this many GB of RAM, 0 never; default 14"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny configurations: a smoke run in seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    for option, allowed in (("models", MODELS), ("modes", MODES), ("stages", MEASURED)):
        values = [v.strip() for v in getattr(args, option).split(",") if v.strip()]
        unknown = sorted(set(values) - set(allowed))
        if unknown or not values:
            parser.error(
                f"--{option} must be a comma-separated subset of {','.join(allowed)}, got {unknown or 'nothing'}"
            )
        setattr(args, option, values)
    if args.threads < 1 or args.max_ram_gb < 0 or not math.isfinite(args.max_ram_gb):
        parser.error("--threads must be ≥ 1 and --max-ram-gb ≥ 0")
    return args


def run(argv: list[str] | None = None) -> dict:
    import diffusers

    args = parse_args(argv)
    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    report = {
        "dtype": args.dtype,
        "threads": args.threads,
        "tiny": args.tiny,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "max_ram_gb": args.max_ram_gb,
        "models": {},
    }
    for name in args.models:
        report["models"][name] = bench(name, args, dtype)
        for mode in args.modes:
            report["models"][name][f"{mode}_peak_gib"] = peaks(report["models"][name][mode])
        gc.collect()
    print(markdown(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    run()
