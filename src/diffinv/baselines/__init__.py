"""The paper's baselines behind one call shape: B′ = method.analogy(A, A′, B, seed=…, **inputs).

    sdedit.py           SDEdit*: img2img from B with a text describing B′ (text given by the user)
    instructpix2pix.py  InstructPix2Pix*: B edited by an instruction in words (text given by the user)
    visii.py            VISII: an InstructPix2Pix instruction learned from (A, A′), applied to B
    analogist.py        Analogist: B′ inpainted into the grid [A A′; B ?] with self-attention cloning
                        and cross-attention masking (text describing B′ given by the user)
    dia.py              DIA: B's inverted conditioning shifted by A′'s minus A's, drawn from B's inverted noise

Each class loads with `from_pretrained(model, device, dtype, offline)` or wraps a built
pipeline, sizes its inputs as Difference Inversion does, and draws with a seeded CPU generator.
`Config().cost()` says how much UNet work one triplet takes, before any model is loaded.
"""

from .analogist import Analogist, AnalogistAttnProcessor, AnalogistConfig
from .base import Baseline, Cost
from .dia import Dia, DiaConditioning, DiaConfig, DiaCost, DiaNoise
from .instructpix2pix import InstructPix2Pix, InstructPix2PixConfig
from .sdedit import SDEdit, SDEditConfig
from .visii import Visii, VisiiConfig, VisiiInstruction, VisiiLoss, VisiiPair

BASELINES = {
    "sdedit": SDEdit,
    "instructpix2pix": InstructPix2Pix,
    "visii": Visii,
    "dia": Dia,
    "analogist": Analogist,
}

__all__ = [
    "BASELINES",
    "Analogist",
    "AnalogistAttnProcessor",
    "AnalogistConfig",
    "Baseline",
    "Cost",
    "Dia",
    "DiaConditioning",
    "DiaConfig",
    "DiaCost",
    "DiaNoise",
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
