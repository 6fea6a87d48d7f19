"""What the baselines that run on a model of their own share (FLUX.1 Kontext, VisualCloze, Qwen-Image-Edit): loading
their published checkpoint, or another of the same kind, in the dtype its model card gives, and
refusing a model of another kind in one line before any weights load.

Such a method is registered with `model="own"` (`method.Registered`): the bench loads its class's
`default_model`, or the model `--baseline-model NAME=MODEL` names, never the bench's own model.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import torch
from PIL import Image

from ..checks import hub_offline
from ..images import ImageInput, as_rgb
from ..loading import load_or_explain
from .base import PipelineBaseline, require

_Method = TypeVar("_Method", bound="OwnModelBaseline")


def pipeline_class_name(model: str, offline: bool) -> str | None:
    """The pipeline class a model's `model_index.json` names (`_class_name`), read from a local
    directory, the hub cache, or (unless `offline`) the hub; only that small file is read. A model
    that cannot be found is one `DiffinvError` (`loading.load_or_explain`)."""
    from diffusers import DiffusionPipeline

    index = load_or_explain(model, offline, lambda: DiffusionPipeline.load_config(model, local_files_only=offline))
    return index.get("_class_name")


class OwnModelBaseline(PipelineBaseline):
    """A `PipelineBaseline` on a model of its own kind.

    A subclass sets, besides `PipelineBaseline`'s attributes, `model_kind` (the kind of model in
    words, for the message that refuses another: "a FLUX.1 Kontext model") and may change
    `model_card_dtype` (the dtype its checkpoint's model card loads it in; used when none is given).
    Its `__init__` calls `check_pipeline(pipe)` first.
    """

    model_kind: ClassVar[str]
    model_card_dtype: ClassVar[torch.dtype | None] = torch.bfloat16  # None: the project's default

    @classmethod
    def check_pipeline(cls, pipe) -> None:
        """A built pipeline must be a `pipeline_class` one; another kind of model cannot run the method."""
        require(
            isinstance(pipe, cls.pipeline_class),
            f"{cls.name} needs {cls.model_kind} (a {cls.pipeline_class.__name__}); got a {type(pipe).__name__}",
        )

    @classmethod
    def check_model(cls, model: str | None, offline: bool) -> None:
        """`model` (hub id or directory) is of the kind the method runs: its `model_index.json` names
        `pipeline_class`; else one `DiffinvError`. Reads only that file (the bench checks a model
        given with --baseline-model so, before any model loads). None: the published default, which is."""
        if model is None:
            return
        found = pipeline_class_name(model, offline)
        expected = cls.pipeline_class.__name__
        require(
            found == expected,
            f"{cls.name} needs {cls.model_kind} (a {expected}); {model} is a {found or 'pipeline of unknown class'}",
        )

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
        """The method on a model by hub id or local directory (None: `default_model`), loaded as its
        `pipeline_class` on `device` in `dtype` (None: `model_card_dtype`, bfloat16 — on the CPU
        too, where float32 would double the memory of a 12-billion-parameter transformer).

        The model's `model_index.json` is read first: a model whose pipeline class is not
        `pipeline_class` (e.g. a Stable Diffusion model given to FLUX.1 Kontext) is refused in one
        line before its weights load. offline: hub cache and local directories only (default:
        `HF_HUB_OFFLINE`). config: the method's hyperparameters (None: published)."""
        model = cls.default_model if model is None else model
        offline = hub_offline() if offline is None else offline
        cls.check_model(model, offline)
        dtype = cls.model_card_dtype if dtype is None else dtype
        return super().from_pretrained(model, device, dtype, offline, config, **pipeline_kwargs)


def at_size_of(image: Image.Image, b: ImageInput) -> Image.Image:
    """`image` resized (bicubic) to the pixel size of B (any `ImageInput`): B′ as the bench compares it."""
    size = as_rgb(b).size
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
