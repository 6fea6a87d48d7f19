"""The paper's baselines behind one call shape: B′ = method.analogy(A, A′, B, seed=…, **inputs).

    sdedit.py           SDEdit*: img2img from B with a text describing B′ (text given by the user)
    instructpix2pix.py  InstructPix2Pix*: B edited by an instruction in words (text given by the user)
    visii.py            VISII: an InstructPix2Pix instruction learned from (A, A′), applied to B

Each class loads with `from_pretrained(model, device, dtype, offline)` or wraps a built
pipeline, sizes its inputs as Difference Inversion does, and draws with a seeded CPU generator.
`Config().cost()` says how much UNet work one triplet takes, before any model is loaded.
"""

from .base import Baseline, Cost
from .instructpix2pix import InstructPix2Pix, InstructPix2PixConfig
from .sdedit import SDEdit, SDEditConfig
from .visii import Visii, VisiiConfig, VisiiInstruction, VisiiLoss, VisiiPair

BASELINES = {"sdedit": SDEdit, "instructpix2pix": InstructPix2Pix, "visii": Visii}

__all__ = [
    "BASELINES",
    "Baseline",
    "Cost",
    "InstructPix2Pix",
    "InstructPix2PixConfig",
    "SDEdit",
    "SDEditConfig",
    "Visii",
    "VisiiConfig",
    "VisiiInstruction",
    "VisiiLoss",
    "VisiiPair",
]
