"""`memory="low"` (`--memory low`): the switches that bring Difference Inversion within a 10–16 GB GPU.

    checkpoint_unet   gradient checkpointing of the UNet's blocks, on during the DIFF-token fit
    lean_attention    PyTorch's fused attention (SDPA), or sliced attention where it is missing
    lean_vae          VAE slicing and tiling; float16 VAE weights where the model allows
    StageOffload      model CPU offload between stages, on a CUDA device only
    apply_low_memory  all of them on a backbone and its CLIP

The default mode changes nothing. What each switch saves, measured at full size, is in
docs/benchmarks.md ("Memory"); `benchmarks/memory.py` measures it. The captioner (BLIP-2) is
loaded to caption and freed right after in both modes (`captioners.Blip2Captioner`); in low mode
it first sends every other model to the CPU (`StageOffload.offload_all`).
"""

from __future__ import annotations

from collections import deque

import diffusers
import torch
import torch.nn.functional as F
from accelerate.hooks import ModelHook, add_hook_to_module
from accelerate.utils import send_to_device
from packaging.version import Version

from .model_options import MEMORY_MODES, check_memory_mode

__all__ = [
    "MEMORY_MODES",
    "StageOffload",
    "apply_low_memory",
    "check_memory_mode",
    "checkpoint_unet",
    "half_vae_weights",
    "lean_attention",
    "lean_vae",
]

# Before diffusers 0.32 a block checkpointed only in training mode (`self.training and …`); since
# then whenever gradients are on (`torch.is_grad_enabled() and …`), which is what the fit needs:
# its UNet stays in eval mode, only D̃ takes a gradient.
CHECKPOINTS_IN_EVAL_MODE = Version(diffusers.__version__).release >= (0, 32)


# --- the UNet -------------------------------------------------------------------------------------------
def checkpoint_unet(unet) -> None:
    """Gradient checkpointing of every block of `unet` (a `UNet2DConditionModel`): the fit keeps each
    block's input only and recomputes the block's activations during the backward pass. It works
    whenever gradients flow, here into the text states (and so into D̃), the UNet's own weights frozen:
    non-reentrant checkpointing (diffusers' default) does not need an input that requires grad.
    Sampling runs without gradients and is not recomputed."""
    unet.enable_gradient_checkpointing()
    if not CHECKPOINTS_IN_EVAL_MODE:
        # These diffusers checkpoint in training mode only; Stable Diffusion's UNets have no active
        # dropout (every rate is 0), so training mode changes no output.
        unet.train()


def unet_checkpoints(unet) -> bool:
    """Whether gradient checkpointing is on in `unet`."""
    return bool(getattr(unet, "is_gradient_checkpointing", False))


def lean_attention(model) -> str:
    """Attention that never keeps an (L, L) score matrix: PyTorch's fused scaled-dot-product attention
    (diffusers' default processor where PyTorch has it; flash or memory-efficient kernels on CUDA),
    else sliced attention (one head group at a time) in a model that offers it (a UNet; the VAE's single
    attention layer stays as it is). Returns "sdpa", "sliced" or "unchanged"."""
    if hasattr(F, "scaled_dot_product_attention"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.set_attn_processor(AttnProcessor2_0())
        return "sdpa"
    if hasattr(model, "set_attention_slice"):
        model.set_attention_slice("auto")
        return "sliced"
    return "unchanged"


# --- the VAE --------------------------------------------------------------------------------------------
def half_vae_weights(backbone, device: torch.device) -> bool:
    """Whether low mode stores the VAE's weights in float16: only on a CUDA device with a float32 model (in
    bfloat16 or float16, the CUDA default, the VAE already is 16-bit), and not for SDXL's VAE, which
    overflows in float16 — unless its config says otherwise (`force_upcast` false, as the fp16-fix VAE's
    does). SD 1.x / 2.x VAEs run in float16 in diffusers' own pipelines."""
    overflows = backbone.family == "sdxl" and backbone.vae.config.get("force_upcast", True)
    return torch.device(device).type == "cuda" and backbone.dtype == torch.float32 and not overflows


def lean_vae(backbone, device: torch.device) -> None:
    """VAE slicing (a batch encoded and decoded one image at a time) and tiling (an image larger than the
    VAE's tile, e.g. 512 px for SD 1.5, in overlapping tiles with blended seams; at or below it nothing
    changes), and, where `half_vae_weights`, float16 weights computed in the model's float32. The weights
    are cast layer by layer (diffusers' layerwise casting, 0.32 and later) rather than the VAE run in
    float16, because diffusers' SD pipelines hand the VAE latents in the UNet's dtype."""
    vae = backbone.vae
    vae.enable_slicing()
    vae.enable_tiling()
    if half_vae_weights(backbone, device) and hasattr(vae, "enable_layerwise_casting"):
        vae.enable_layerwise_casting(storage_dtype=torch.float16, compute_dtype=backbone.dtype)


# --- model CPU offload between stages ------------------------------------------------------------------
class _StageHook(ModelHook):
    """accelerate's hook on a module of a unit: before its forward (for the VAE also before `encode` and
    `decode`, diffusers' `apply_forward_hook`) its unit is brought to the device. `execution_device` is
    what diffusers' pipelines read to put their latents on the device (`DiffusionPipeline._execution_device`)."""

    def __init__(self, offload: StageOffload, unit: str):
        self.offload, self.unit = offload, unit
        self.execution_device = offload.device

    def pre_forward(self, module, *args, **kwargs):
        self.offload.enter(self.unit)
        return send_to_device(args, self.execution_device), send_to_device(kwargs, self.execution_device)


class StageOffload:
    """Model CPU offload between the stages of an analogy: only the models of the running stage sit on
    the device, the others on the CPU.

    Units (`units`: name → modules moved together) and the stages they make:
        "text"    text encoder(s), UNet, CLIP text tower — PEZ, the fit, encoding prompts, sampling
        "vision"  CLIP image tower — the image features of A, A′ (and of candidates)
        "vae"     the VAE — latents of A, A′ and B; decoding B′
    Calling a module of a unit (forward, or the VAE's encode/decode) brings its unit to the device and
    sends the others to the CPU — except, while gradients are on, a unit already used with gradients
    since the last call without them: its weights may be in a graph not yet backpropagated (the fit's
    text encoder, UNet and CLIP text tower share one graph per step). The captioner makes room with
    `offload_all` before loading.

    Why not diffinv's own call of diffusers' `enable_model_cpu_offload` (or accelerate's chained
    `cpu_offload_with_hook`): their chain sends the text encoder to the CPU as soon as the UNet is
    called, and the fit's backward pass still needs the text encoder's weights on the device, since
    D̃'s gradient flows through it. The hooks here are accelerate's; the policy is the one above.

    Active on a CUDA device only (`apply_low_memory`); on the CPU offload would move nothing.
    `stages` records each entry's resident units (a benchmark reads it).
    """

    def __init__(self, units: dict[str, list[torch.nn.Module]], device: torch.device):
        self.units, self.device = units, torch.device(device)
        self.resident: set[str] = set()
        # (unit entered, units resident after), the latest 1000 changes (a long bench run makes many)
        self.stages: deque[tuple[str, frozenset[str]]] = deque(maxlen=1000)
        self._with_gradients: set[str] = set()  # units used with gradients since the last call without
        for modules in units.values():
            for module in modules:
                module.to("cpu")

    def hook(self, unit: str, module: torch.nn.Module) -> None:
        """Calling `module` (forward; for diffusers' VAE also encode/decode) enters `unit`."""
        add_hook_to_module(module, _StageHook(self, unit))

    def enter(self, unit: str) -> None:
        """`unit` on the device; every other unit on the CPU unless gradients may still need it."""
        gradients = torch.is_grad_enabled()
        if not gradients:
            self._with_gradients.clear()
        leaving = [other for other in self.resident if other != unit and other not in self._with_gradients]
        for other in leaving:
            self._move(other, onto_device=False)
        if leaving and self.device.type == "cuda":
            torch.cuda.empty_cache()  # the freed weights back to the driver, for what runs next
        if unit not in self.resident:
            self._move(unit, onto_device=True)
        if gradients:
            self._with_gradients.add(unit)
        if not self.stages or self.stages[-1] != (unit, frozenset(self.resident)):
            self.stages.append((unit, frozenset(self.resident)))

    def offload_all(self) -> None:
        """Every unit on the CPU (before a model outside the units, the captioner, loads)."""
        for unit in list(self.resident):
            self._move(unit, onto_device=False)
        self._with_gradients.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _move(self, unit: str, onto_device: bool) -> None:
        for module in self.units[unit]:
            module.to(self.device if onto_device else "cpu")
        if onto_device:
            self.resident.add(unit)
        else:
            self.resident.discard(unit)


def stage_offload(backbone, clip, device: torch.device) -> StageOffload:
    """A `StageOffload` of `backbone`'s and `clip`'s models to `device`, its hooks in place, every model on
    the CPU until used. The backbone and the CLIP then report `device` as theirs (`execution_device`), so
    that what they make is made there."""
    model = clip.model
    encoders = [backbone.text_encoder] + ([backbone.text_encoder_2] if hasattr(backbone, "text_encoder_2") else [])
    offload = StageOffload(
        {
            "text": [*encoders, backbone.unet, model.text_model, model.text_projection],
            "vision": [model.vision_model, model.visual_projection],
            "vae": [backbone.vae],
        },
        device,
    )
    for module in [*encoders, backbone.unet, model.text_model]:
        offload.hook("text", module)
    offload.hook("vision", model.vision_model)
    offload.hook("vae", backbone.vae)
    backbone.offload = clip.offload = offload
    backbone.execution_device = clip.execution_device = offload.device
    return offload


# --- all of it ------------------------------------------------------------------------------------------
def apply_low_memory(backbone, clip, device: torch.device, offload: bool | None = None) -> StageOffload | None:
    """Low mode on a loaded `backbone` and `clip`: the UNet checkpointed, lean attention in the UNet and the
    VAE, the VAE sliced and tiled (float16 weights where `half_vae_weights`), and, on a CUDA `device`, model
    CPU offload between stages (returned; None elsewhere). offload: force it on or off (tests)."""
    device = torch.device(device)
    checkpoint_unet(backbone.unet)
    lean_attention(backbone.unet)
    lean_attention(backbone.vae)
    lean_vae(backbone, device)
    if offload is None:
        offload = device.type == "cuda"
    return stage_offload(backbone, clip, device) if offload else None


def memory_switches(backbone) -> dict[str, bool]:
    """Which low-mode switches are on in `backbone` (for tests and reports)."""
    vae = backbone.vae
    return {
        "unet_checkpointing": unet_checkpoints(backbone.unet),
        "vae_slicing": bool(getattr(vae, "use_slicing", False)),
        "vae_tiling": bool(getattr(vae, "use_tiling", False)),
        "offload": getattr(backbone, "offload", None) is not None,
    }
