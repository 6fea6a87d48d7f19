"""The diffusion models Difference Inversion runs on, behind one small interface.

    sd.py                StableDiffusionBackbone: SD 1.x / 2.x, the interface itself
    sdxl.py              StableDiffusionXLBackbone: two text encoders, pooled text, size conditioning
    editor.py            InstructPix2PixBackbone: an instruction editor; B is its image condition
    text_slots.py        the DIFF-token slots in a prompt's token ids, and their embeddings replaced
    shared_attention.py  B′'s self-attention keys and values shared with B's reconstruction

This package is the one place that knows diffusers' pipelines; the samplers the backbones draw
with are in `diffinv.sampling`, the loading (which backbone a model directory asks for) in
`diffinv.loading`.
"""

from .editor import InstructPix2PixBackbone
from .sd import StableDiffusionBackbone, pipeline_from_pretrained
from .sdxl import StableDiffusionXLBackbone, XLTextStates

__all__ = [
    "InstructPix2PixBackbone",
    "StableDiffusionBackbone",
    "StableDiffusionXLBackbone",
    "XLTextStates",
    "pipeline_from_pretrained",
]
