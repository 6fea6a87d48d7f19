"""The paper's baselines and two in-context editors, each a `method.Method`:
B′ = method.analogy(A, A′, B, seed=…[, text=…]).

    base.py             what they share: cost, loading, input sizes, seeds; `TextEditBaseline`,
                        the base of the two that draw B′ from B and a text
    sdedit.py           SDEdit*: img2img from B with a text describing B′ (text given by the user)
    instructpix2pix.py  InstructPix2Pix*: B edited by an instruction in words (text given by the user)
    visii.py            VISII: an InstructPix2Pix instruction learned from (A, A′), applied to B
    analogist.py        Analogist: B′ inpainted into the grid [A A′; B ?] with self-attention cloning
                        and cross-attention masking (text describing B′ given by the user)
    dia.py              DIA: B's inverted conditioning shifted by A′'s minus A's, drawn from B's inverted noise
    kontext.py          FLUX.1 Kontext: the grid [A A′; B ·], its empty cell filled when asked to repeat the edit
    visualcloze.py      VisualCloze: B′ infilled into [A A′; B ?] by visual in-context learning, then upsampled
    own_model.py        what the baselines on a model of their own kind share (Kontext, VisualCloze, Qwen)
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
from .kontext import Kontext, KontextConfig
from .own_model import OwnModelBaseline
from .qwen_edit import QwenEdit, QwenEditConfig
from .sdedit import SDEdit, SDEditConfig
from .visii import Visii, VisiiConfig, VisiiInstruction, VisiiLoss, VisiiPair
from .visualcloze import VisualCloze, VisualClozeConfig

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
    "Kontext",
    "KontextConfig",
    "OwnModelBaseline",
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
    "VisualCloze",
    "VisualClozeConfig",
]
