"""The shapes world: a tiny text-to-image world trained on CPU and bundled as the offline default.

A demonstration and test world, not a photo model: 32×32 pictures of one shape with five
attributes (see `world.py`), with models of the real classes (`CLIPModel`, `AutoencoderKL`,
`UNet2DConditionModel`, `CLIPTokenizer`) trained here from scratch by `diffinv shapes train`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import InversionConfig

MODEL_DIR = Path(__file__).parent / "model"

# Defaults for this world, where steps and sizes are tuned for speed (see docs/shapes.md):
# captions come from exact CLIP retrieval, so PEZ is not needed.
SHAPES_CONFIG = dict(
    prompt_source="caption", steps=50, learning_rate=1e-2, sampling_steps=20, guidance_scale=4.0, strength=0.8
)


def shapes_config(**changes) -> InversionConfig:
    return InversionConfig(**{**SHAPES_CONFIG, **changes})


def load_shapes(device=None, dtype=None, clip_model=None, captioner=None, model_dir: Path | None = None):
    """`DifferenceInversion` on the bundled shapes world, fully offline (everything loads from
    the package's own directory; no hub lookup). The captioner is CLIP retrieval over the
    world's canonical captions."""
    from ..backbone import StableDiffusionBackbone
    from ..captioners import ClipRetrievalCaptioner
    from ..clip_space import ClipSpace
    from ..errors import DiffinvError
    from ..pipeline import DifferenceInversion, resolve_device_dtype
    from .world import all_scenes, canonical_caption

    model_dir = Path(model_dir or MODEL_DIR)
    if not (model_dir / "unet" / "config.json").exists():
        raise DiffinvError(
            f"the shapes-world weights are missing from {model_dir}; train them with `diffinv shapes train`"
        )
    device, dtype = resolve_device_dtype(device, dtype)
    backbone = StableDiffusionBackbone.from_pretrained(str(model_dir), device, dtype)
    backbone.model_id = "shapes"
    clip = ClipSpace.from_pretrained(clip_model or str(model_dir / "clip"), device, dtype)
    captioner = captioner or ClipRetrievalCaptioner(clip, [canonical_caption(s) for s in all_scenes()])
    return DifferenceInversion(backbone, clip, captioner, default_config=shapes_config())
