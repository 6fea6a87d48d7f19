"""Does the DIFF-token encoder know this edit? A check on the example pairs themselves.

With `init="auto"` (beyond the paper) D̃ is the encoder's prediction where drawing each example's
A with it reproduces that example's A′, and a per-pair fit from zeros otherwise. An encoder
trained on some edits predicts them well and, on an edit it never learned, tokens that draw A back
nearly unedited (docs/results.md §10); the fit treats every edit as new but carries some of A′'s
content over into B′. The check needs no ground truth beyond the pairs the user gave: how much of
the A → A′ difference is left between A′ and A redrawn with the encoder's D̃, measured in pixels
and in CLIP's image space (a partial edit, e.g. one of two changed attributes, fails one or both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .clip_space import ClipSpace
from .images import WorkingPair


@dataclass(frozen=True)
class EncoderCheck:
    """The encoder's D̃ redrawn on the example pairs, and whether it is used.

    pixel: mean over the pairs of ‖Â′ − A′‖² / ‖A − A′‖² (pixels in [0, 1]), Â′ = A drawn with
        the encoder's D̃: 0 when A′ is reproduced, about 1 when A comes back unedited.
    clip: the same in CLIP's image space, (1 − cos(E(Â′), E(A′))) / (1 − cos(E(A), E(A′))).
    tolerance: `InversionConfig.encoder_tolerance`; the encoder's D̃ is used when both ratios are
        at most this.
    """

    pixel: float
    clip: float
    tolerance: float

    @property
    def accepted(self) -> bool:
        return self.pixel <= self.tolerance and self.clip <= self.tolerance

    @classmethod
    def from_dict(cls, record: dict) -> EncoderCheck:
        """The check as `as_dict` wrote it (a token file's `encoder_check`)."""
        return cls(pixel=float(record["pixel"]), clip=float(record["clip"]), tolerance=float(record["tolerance"]))

    def as_dict(self) -> dict:
        return {"pixel": self.pixel, "clip": self.clip, "tolerance": self.tolerance, "accepted": self.accepted}

    def describe(self) -> str:
        left = f"{self.pixel:.2f} of A → A′ left in pixels, {self.clip:.2f} in CLIP's image space"
        left += f"; tolerance {self.tolerance}"
        if self.accepted:
            return f"D̃ from the DIFF-token encoder, whose tokens redraw A as A′ ({left})"
        return f"D̃ fitted: the DIFF-token encoder's tokens do not redraw A as A′ ({left})"


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _ratio(left: float, whole: float) -> float:
    """left / whole; a pair with no difference at all is reproduced by anything that adds none."""
    if whole <= 1e-12:
        return 0.0 if left <= 1e-12 else float("inf")
    return left / whole


def reproduction_ratios(clip: ClipSpace, pair: WorkingPair, redrawn: Image.Image) -> tuple[float, float]:
    """(pixel, clip): how much of the difference A → A′ is left between A′ and `redrawn` (A drawn
    with some D̃), as fractions of the whole difference (see `EncoderCheck`). `redrawn` has A's size."""
    a, a_prime, drawn = _pixels(pair.a), _pixels(pair.a_prime), _pixels(redrawn)
    pixel = _ratio(float(((drawn - a_prime) ** 2).mean()), float(((a - a_prime) ** 2).mean()))
    with torch.no_grad():
        features = clip.image_features([pair.a, pair.a_prime, redrawn]).float()  # (3, D)
    to_target = 1 - F.cosine_similarity(features[2], features[1], dim=0).item()
    whole = 1 - F.cosine_similarity(features[0], features[1], dim=0).item()
    return pixel, _ratio(max(to_target, 0.0), max(whole, 0.0))


def check_pairs(
    clip: ClipSpace, pairs: list[WorkingPair], redrawn: list[Image.Image], tolerance: float
) -> EncoderCheck:
    """The check over a task's example pairs: each ratio is the mean over the pairs."""
    ratios = [reproduction_ratios(clip, pair, image) for pair, image in zip(pairs, redrawn)]
    return EncoderCheck(
        pixel=float(np.mean([r[0] for r in ratios])), clip=float(np.mean([r[1] for r in ratios])), tolerance=tolerance
    )
