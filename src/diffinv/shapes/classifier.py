"""The attribute classifier: reads every attribute off a shapes-world picture.

Used only to *evaluate* (gates and analogy accuracy), never to train or steer the method.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .world import ATTRIBUTES, Scene


class AttributeClassifier(nn.Module):
    """Small CNN: (B, 3, 32, 32) in [0, 1] → one logit vector per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 16, 128),
            nn.GELU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in ATTRIBUTES.items()})
        self.width = width

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.features(pixels)
        return {name: head(hidden) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: list[Image.Image]) -> list[dict]:
        """Attribute values of each picture (resized to 32² if needed)."""
        self.eval()
        batch = np.stack(
            [
                np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32)
                for image in images
            ]
        )
        logits = self(torch.from_numpy(batch).permute(0, 3, 1, 2) / 255.0)
        indices = {name: value.argmax(dim=-1).tolist() for name, value in logits.items()}
        return [{name: ATTRIBUTES[name][indices[name][i]] for name in ATTRIBUTES} for i in range(len(images))]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "classifier.safetensors"))
        (directory / "classifier.json").write_text(json.dumps({"width": self.width}))

    @classmethod
    def load(cls, directory: Path) -> AttributeClassifier:
        model = cls(**json.loads((directory / "classifier.json").read_text()))
        model.load_state_dict(load_file(str(directory / "classifier.safetensors")))
        return model.eval()


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class indices of each attribute, (B,) per attribute."""
    return {
        name: torch.tensor([values.index(getattr(s, name)) for s in scenes]) for name, values in ATTRIBUTES.items()
    }
