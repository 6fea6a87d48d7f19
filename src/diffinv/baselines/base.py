"""What every baseline shares: its cost, loading, input sizes and seeds, and the text-edit base of SDEdit
and InstructPix2Pix. Their call shape is `method.Method`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from diffusers import DDIMScheduler
from PIL import Image

from ..backbones.sd import pipeline_from_pretrained
from ..checks import MAX_SEED, check_resolution, hub_offline
from ..errors import DiffinvError
from ..images import ImageInput, as_rgb, fit_to, working_size
from ..loading import load_or_explain, resolve_device_dtype


@dataclass(frozen=True)
class Cost:
    """What one A : A′ :: B triplet costs a method in UNet work, known before any model loads.

    A forward hook on the UNet counts `unet_calls`. Each call carries a batch of latents (2 for
    classifier-free guidance, 3 for InstructPix2Pix's text-and-image guidance, 1 without), and
    calls made while learning from (A, A′) are each followed by a backward pass, which costs
    about two forward passes.

        sample_calls, sample_batch: drawing B′.
        fit_calls, fit_batch: learning from (A, A′) (0 for methods that learn nothing).
        other: work that is not the UNet's, in words (e.g. a PEZ prompt inversion).
    """

    sample_calls: int
    sample_batch: int
    fit_calls: int = 0
    fit_batch: int = 0
    other: str = ""

    @property
    def unet_calls(self) -> int:
        """UNet forward calls per triplet (what a forward hook counts)."""
        return self.sample_calls + self.fit_calls

    @property
    def latent_passes(self) -> int:
        """Latent-sized UNet passes per triplet, a backward pass counted as two forward ones:
        a device-independent measure to compare methods by."""
        return self.sample_calls * self.sample_batch + 3 * self.fit_calls * self.fit_batch

    def __str__(self) -> str:
        parts = [f"{self.sample_calls} UNet calls × {self.sample_batch} latents to draw B′"]
        if self.fit_calls:
            parts.append(f"{self.fit_calls} calls × {self.fit_batch} latents with a backward pass to learn")
        text = "; ".join(parts) + f" ≈ {self.latent_passes} latent passes"
        return f"{text}; plus {self.other}" if self.other else text


def require(condition: bool, message: str) -> None:
    """Raise `DiffinvError(message)` unless `condition` holds (for config checks)."""
    if not condition:
        raise DiffinvError(message)


def number(value) -> bool:
    """Whether `value` is a finite int or float (not a bool), so that range checks can follow."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_ints(config, *names: str) -> None:
    """Each field `names` of `config` is a positive integer."""
    for name in names:
        value = getattr(config, name)
        require(positive_int(value), f"{name} must be a positive integer, got {value!r}")


def check_positive(config, *names: str) -> None:
    """Each field `names` of `config` is a finite number > 0."""
    for name in names:
        require(number(getattr(config, name)) and getattr(config, name) > 0, f"{name} must be > 0")


def check_non_negative(config, *names: str) -> None:
    """Each field `names` of `config` is a finite number ≥ 0."""
    for name in names:
        require(number(getattr(config, name)) and getattr(config, name) >= 0, f"{name} must be ≥ 0")


def check_guidance(value, name: str = "guidance_scale") -> None:
    """A guidance scale is a finite number ≥ 0 (≤ 1: no guidance)."""
    require(number(value) and value >= 0, f"{name} must be ≥ 0, got {value!r}")


def check_resolution_option(resolution) -> None:
    require(
        resolution is None or positive_int(resolution),
        f"resolution must be a positive integer or None, got {resolution!r}",
    )


def check_seed(seed: int) -> None:
    require(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED,
        f"seed must be an integer in [0, 2^63 - 1], got {seed!r}",
    )


def check_text(text, what: str) -> str:
    """`text` stripped, or a `DiffinvError` naming `what` is missing."""
    require(isinstance(text, str) and text.strip() != "", f"{what} must be a non-empty text, got {text!r}")
    return text.strip()


def check_images(*images: ImageInput) -> None:
    """Each input loads as a usable RGB image (`images.as_rgb`), or one `DiffinvError` says why;
    for the inputs a method does not look at, so that every method refuses the same triplets."""
    for image in images:
        as_rgb(image)


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator: noise is drawn on the CPU, so one seed gives one image on any device."""
    check_seed(seed)
    return torch.Generator().manual_seed(seed)


def pipeline_edit(
    pipe, b: ImageInput, resolution: int | None, *, seed: int, progress: bool, desc: str, **call
) -> Image.Image:
    """B′ = `pipe(image=B, generator=…, **call).images[0]`, for the methods that hand B to a
    diffusers pipeline: the noise from a CPU generator seeded with `seed` (the seed is checked
    first), B (any `ImageInput`) as RGB at its working size for `pipe` (`working_image`), the
    progress bar named `desc`. B′ comes out at B's working size."""
    generator = cpu_generator(seed)
    b = working_image(b, pipe, resolution)
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc=desc)
    return pipe(image=b, generator=generator, **call).images[0]


def load_pipeline(pipeline_class, model: str, device, dtype, offline: bool | None, **pipeline_kwargs):
    """`pipeline_class.from_pretrained(model)` on `device` in `dtype` (defaults as
    `loading.resolve_device_dtype`); a missing model is one `DiffinvError`. offline: hub cache
    and local directories only (default: the `HF_HUB_OFFLINE` environment variable)."""
    offline = hub_offline() if offline is None else offline
    device, dtype = resolve_device_dtype(device, dtype)
    return load_or_explain(
        model,
        offline,
        lambda: pipeline_from_pretrained(pipeline_class, model, dtype, local_files_only=offline, **pipeline_kwargs).to(
            device
        ),
    )


def check_unet_channels(pipe, expected: int, method: str) -> None:
    """InstructPix2Pix's UNet takes the noisy latent and the image latent (8 channels), a
    text-to-image UNet only the noisy one (4): a model of the other kind cannot run `method`."""
    channels = pipe.unet.config.in_channels
    kind = "InstructPix2Pix" if expected == 2 * pipe.vae.config.latent_channels else "text-to-image Stable Diffusion"
    require(
        channels == expected,
        f"{method} needs a {kind} model (a UNet with {expected} input channels); this one has {channels}",
    )


def freeze(pipe) -> None:
    """`pipe`'s UNet, VAE and text encoder without gradients and in eval mode, for the methods
    that learn something through the frozen model."""
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()


def loss_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict for `latents` (N, C, h, w) noised with `noise` (same
    shape) at `timesteps` (N,) or (1,): v for a v-prediction `scheduler`, else the noise ε."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def native_resolution(pipe) -> int:
    """The side the UNet was trained at, in pixels (512 for SD 1.5 and InstructPix2Pix)."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def size_multiple(pipe) -> int:
    """Sides must be multiples of this: VAE factor × UNet downsampling, and of 8 (as
    `StableDiffusionBackbone.size_multiple`)."""
    return math.lcm(pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1), 8)


def square_side(pipe, resolution: int | None) -> int:
    """The side of the square a method works at: `resolution`, or the model's native size,
    checked against the native size (`checks.check_resolution`)."""
    side = resolution or native_resolution(pipe)
    check_resolution(side, native_resolution(pipe))
    return side


def working_image(image: ImageInput, pipe, resolution: int | None) -> Image.Image:
    """`image` as RGB at the project's working size for `pipe`: aspect ratio kept, area about
    `resolution`² (None: the model's native size), sides multiples of the UNet's stride — what
    `DifferenceInversion` does with its inputs, so that all methods see the same pixels."""
    image = as_rgb(image)
    native = native_resolution(pipe)
    check_resolution(resolution, native)
    return fit_to(image, working_size(image.width, image.height, resolution or native, size_multiple(pipe)))


def _rebuilt(pipeline_class, pipe, **components):
    """A `pipeline_class` pipeline of `pipe`'s modules, `components` replacing some of them."""
    components = {**pipe.components, **components}
    return pipeline_class(**components, requires_safety_checker=getattr(pipe.config, "requires_safety_checker", False))


def with_scheduler(pipe, scheduler):
    """A pipeline of `pipe`'s class sharing its modules, with another scheduler (the caller's
    pipeline is left as it was)."""
    return _rebuilt(type(pipe), pipe, scheduler=scheduler)


def with_ddim(pipe, pipeline_class):
    """A `pipeline_class` pipeline sharing `pipe`'s modules (`pipe` may be another pipeline of
    the same modules, e.g. a `StableDiffusionPipeline`), with a DDIM scheduler on `pipe`'s noise
    schedule; the caller's pipeline is left as it was."""
    if not isinstance(pipe, pipeline_class):
        pipe = _rebuilt(pipeline_class, pipe)
    return with_scheduler(pipe, DDIMScheduler.from_config(pipe.scheduler.config))


class Img2ImgSettings:
    """For the config dataclasses of diffusers img2img-style DDIM runs (SDEdit, Analogist), whose
    fields include steps, strength, guidance_scale and eta: their checks, the denoising steps
    the pipeline runs and the cost."""

    def check_img2img(self) -> None:
        """steps a positive integer, strength in (0, 1] leaving at least one denoising step,
        guidance ≥ 0, η in [0, 1]."""
        steps, strength = self.steps, self.strength
        require(positive_int(steps), f"steps must be a positive integer, got {steps!r}")
        require(number(strength) and 0 < strength <= 1, f"strength must lie in (0, 1], got {strength!r}")
        require(
            self.denoising_steps >= 1,
            f"strength {strength} × {steps} steps runs no denoising step; raise one of them",
        )
        check_guidance(self.guidance_scale)
        require(number(self.eta) and 0 <= self.eta <= 1, f"eta must lie in [0, 1], got {self.eta!r}")

    @property
    def denoising_steps(self) -> int:
        """The steps the pipeline runs: the last int(steps × strength) of the schedule, as diffusers
        counts them."""
        return min(int(self.steps * self.strength), self.steps)

    def cost(self) -> Cost:
        """denoising_steps UNet calls of 2 latents with classifier-free guidance (> 1), else 1."""
        return Cost(sample_calls=self.denoising_steps, sample_batch=2 if self.guidance_scale > 1 else 1)


_Method = TypeVar("_Method", bound="PipelineBaseline")


class PipelineBaseline:
    """What the baselines built on one diffusers pipeline share: loading that pipeline by hub id
    or local directory, being built by the method registry, and the cost of their config.

    A subclass is a `method.Method`: it sets `name`, `needs_text` and `uses_text`, and
    `analogy(a, a_prime, b, *, seed, progress[, text])`. It also sets `pipeline_class` (the
    diffusers class its model loads as), `default_model` and `config_class` (its frozen config
    dataclass), takes `(pipe, config)` in `__init__` (one that needs more, as VISII its CLIPs,
    overrides `from_pretrained`), and keeps its hyperparameters in `self.config`, whose `cost()`
    says what one triplet costs.
    """

    needs_text: ClassVar[str | None] = None
    pipeline_class: ClassVar[type]
    default_model: ClassVar[str]
    config_class: ClassVar[type]

    @classmethod
    def build(cls, models, config):
        """The method with `config` on the model `models` (`method.Models`) gives it: how the
        method registry builds a baseline (in the bench: the model card's, --baseline-model's, or
        the bench's own pipeline)."""
        return models.load(cls, config)

    @classmethod
    def from_pretrained(
        cls: type[_Method],
        model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        offline: bool | None = None,
        config=None,
        **pipeline_kwargs,
    ) -> _Method:
        """The method on a model by hub id or local directory (None: the class's
        `default_model`), loaded as its `pipeline_class` on `device` in `dtype` (defaults as
        `loading.resolve_device_dtype`). offline: hub cache and local directories only
        (default: `HF_HUB_OFFLINE`). config: the method's hyperparameters (None: published).
        pipeline_kwargs go to diffusers' `from_pretrained` (e.g. `variant`)."""
        model = cls.default_model if model is None else model
        pipe = load_pipeline(cls.pipeline_class, model, device, dtype, offline, **pipeline_kwargs)
        return cls(pipe, config)

    def cost(self) -> Cost:
        """What one A : A′ :: B triplet costs this method (its config's `cost()`)."""
        return self.config.cost()


class TextEditBaseline(PipelineBaseline):
    """What SDEdit* and InstructPix2Pix* share: B′ drawn by their pipeline from B and a text given by
    the user (a description of B′, an instruction); A and A′ are not looked at.

    A subclass sets `needs_text`, `text_role` (what the text is, for the message refusing a
    missing one) and `pipeline_arguments()` (its config as the pipeline's call arguments besides
    the prompt); `name` names the progress bar.
    """

    uses_text = True
    text_role: ClassVar[str]

    def pipeline_arguments(self) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def edit(self, b: ImageInput, text: str, *, seed: int = 0, progress: bool = True) -> Image.Image:
        """B′ from B (any `ImageInput`) and the text: an RGB image at B's working size."""
        text = check_text(text, self.text_role)
        return pipeline_edit(
            self.pipe,
            b,
            self.config.resolution,
            seed=seed,
            progress=progress,
            desc=self.name,
            prompt=text,
            **self.pipeline_arguments(),
        )

    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
        text: str | None = None,
    ) -> Image.Image:
        """B′ for A : A′ :: B : B′: A and A′ are only checked to be usable images; `text` carries
        the change."""
        check_images(a, a_prime)
        return self.edit(b, text, seed=seed, progress=progress)
