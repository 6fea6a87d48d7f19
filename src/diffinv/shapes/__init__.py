"""The shapes world: a tiny text-to-image world trained on CPU and bundled as the offline default.

A demonstration and test world, not a photo model: 32×32 pictures of one shape with five
attributes (see `world.py`), with models of the real classes (`CLIPModel`, `AutoencoderKL`,
`UNet2DConditionModel`, `CLIPTokenizer`) trained here from scratch by `diffinv shapes train`.
Its defaults (tuned for speed, see docs/shapes.md) and its captioner (CLIP retrieval among the
world's 240 canonical captions, so PEZ is not needed) live in the model directory's
`diffinv.json`, like any model's (see `diffinv.model_card`).

Modules: `world` (scenes, pictures, captions, instructions, triplets), `descriptor` (the tuned
numbers: training budgets, sampling, the `diffinv.json` values), `train` (the stages and their
driver) over `networks` (the models), `loops` (how each is trained) and `data` (what on),
`classifier` and `evaluate` (the gates and the analogy scores), `examples` (the example triplets);
`model/` holds the bundled weights. Only `diffinv.bench` and the command line import this package.
"""

from __future__ import annotations

from pathlib import Path

from ..config import InversionConfig
from ..model_card import BUNDLED, model_card

MODEL_DIR = BUNDLED["shapes"]


def shapes_config(**changes) -> InversionConfig:
    """The bundled world's default configuration, with `changes`."""
    return model_card("shapes").default_config().replace(**changes)


def load_shapes(device=None, dtype=None, clip_model=None, captioner=None, model_dir: Path | None = None):
    """`DifferenceInversion` on the bundled (or a retrained) shapes world, fully offline."""
    from ..errors import DiffinvError
    from ..pipeline import DifferenceInversion

    model_dir = Path(model_dir or MODEL_DIR)
    if not (model_dir / "unet" / "config.json").exists():
        raise DiffinvError(
            f"the shapes-world weights are missing from {model_dir}; train them with `diffinv shapes train`"
        )
    source = "shapes" if model_dir == MODEL_DIR else str(model_dir)
    return DifferenceInversion.from_pretrained(
        source, device=device, dtype=dtype, clip_model=clip_model, captioner=captioner
    )
