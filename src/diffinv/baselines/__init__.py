"""The paper's baselines, each a `method.Method`: B′ = method.analogy(A, A′, B, seed=…[, text=…]).

    base.py             what they share: cost, loading, input sizes, seeds; `TextEditBaseline`,
                        the base of the two that draw B′ from B and a text
    sdedit.py           SDEdit*: img2img from B with a text describing B′ (text given by the user)
    instructpix2pix.py  InstructPix2Pix*: B edited by an instruction in words (text given by the user)
    visii.py            VISII: an InstructPix2Pix instruction learned from (A, A′), applied to B
    analogist.py        Analogist: B′ inpainted into the grid [A A′; B ?] with self-attention cloning
                        and cross-attention masking (text describing B′ given by the user)
    dia.py              DIA: B's inverted conditioning shifted by A′'s minus A's, drawn from B's inverted noise
    qwen_edit.py        Qwen-Image-Edit-2509 shown [A, A′, B] and told to apply the change (not in the paper)

Each class loads with `from_pretrained(model, device, dtype, offline)` or wraps a built
pipeline, sizes its inputs as Difference Inversion does, and draws with a seeded CPU generator.
A text-using one declares which words it needs (`needs_text`) and takes them as `text=`.
`Config().cost()` says how much UNet work one triplet takes, before any model is loaded. Their
names (`sdedit`, `instructpix2pix`, …) are in the one registry of methods, `method.METHODS`.
"""

from .analogist import Analogist, AnalogistAttnProcessor, AnalogistConfig
from .base import Cost, PipelineBaseline, TextEditBaseline
from .dia import Dia, DiaConditioning, DiaConfig, DiaCost, DiaNoise
from .instructpix2pix import InstructPix2Pix, InstructPix2PixConfig
from .qwen_edit import QwenEdit, QwenEditConfig
from .sdedit import SDEdit, SDEditConfig
from .visii import Visii, VisiiConfig, VisiiInstruction, VisiiLoss, VisiiPair

__all__ = [
    "Analogist",
    "AnalogistAttnProcessor",
    "AnalogistConfig",
    "Cost",
    "Dia",
    "DiaConditioning",
    "DiaConfig",
    "DiaCost",
    "DiaNoise",
    "InstructPix2Pix",
    "InstructPix2PixConfig",
    "PipelineBaseline",
    "QwenEdit",
    "QwenEditConfig",
    "SDEdit",
    "SDEditConfig",
    "TextEditBaseline",
    "Visii",
    "VisiiConfig",
    "VisiiInstruction",
    "VisiiLoss",
    "VisiiPair",
]
