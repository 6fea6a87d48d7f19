"""The attribute classifier: reads every attribute off a shapes-world picture, and (world v2) where
the shape's centre is.

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
    """Small CNN: (B, 3, 32, 32) in [0, 1] → one logit vector per attribute, and with `centre` the
    offset (dx, dy) of the shape's centre in pixels, (B, 2) under the key "centre".

    layout_threshold: the centre error (pixels) under which two pictures have the same layout,
    chosen from this classifier's own error on true renders when it is trained (None: no centre
    head, a world-v1 classifier).
    """

    def __init__(self, width: int = 32, centre: bool = False, layout_threshold: float | None = None):
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
        self.centre = nn.Linear(128, 2) if centre else None
        self.width = width
        self.layout_threshold = layout_threshold

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.features(pixels)
        outputs = {name: head(hidden) for name, head in self.heads.items()}
        if self.centre is not None:
            outputs["centre"] = self.centre(hidden)
        return outputs

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
        outputs = self(torch.from_numpy(batch).permute(0, 3, 1, 2) / 255.0)
        indices = {name: outputs[name].argmax(dim=-1).tolist() for name in ATTRIBUTES}
        predictions = [{name: ATTRIBUTES[name][indices[name][i]] for name in ATTRIBUTES} for i in range(len(images))]
        if self.centre is not None:
            for prediction, centre in zip(predictions, outputs["centre"].tolist()):
                prediction["centre"] = tuple(centre)
        return predictions

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "classifier.safetensors"))
        settings = {"width": self.width}
        if self.centre is not None:
            settings.update(centre=True, layout_threshold=self.layout_threshold)
        (directory / "classifier.json").write_text(json.dumps(settings))

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
