"""Reading user images and choosing the working size.

Policy, documented in the README:
- Any image Pillow can read is accepted. EXIF orientation is applied; transparency is composited
  on white; grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB.
- Usable inputs (`check_usable`): each side at least `MIN_SIDE` pixels and an aspect ratio within
  1:`MAX_INPUT_ASPECT` … `MAX_INPUT_ASPECT`:1. Smaller or thinner pictures hold too little to
  redraw; they are refused with one clear message rather than turned into garbage.
- Working size: the aspect ratio is kept (clamped to 1:4 … 4:1 by a centre crop) and the image is
  resized so that its area is about `resolution`², each side a multiple of the UNet's stride.
  Small images are upscaled, large ones downscaled.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DiffinvError

MAX_ASPECT = 4.0  # working images: wider ones are centre-cropped to this
MIN_SIDE = 16  # pixels: inputs with a shorter side are refused
MAX_INPUT_ASPECT = 8.0  # inputs beyond it are refused (a crop to 4:1 would keep less than half)

# What every public function taking a picture accepts: a PIL image, or a path to one.
ImageInput = Image.Image | str | os.PathLike


class WorkingPair(NamedTuple):
    """A and A′ as RGB images at A's working size (`DifferenceInversion.working_pair`): read and
    sized once, and taken as they are wherever the pair is passed on."""

    a: Image.Image
    a_prime: Image.Image


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open `path` as an 8-bit RGB image or raise `DiffinvError` saying why not."""
    path = Path(path)
    if not path.exists():
        raise DiffinvError(f"{path}: no such file")
    if path.is_dir():
        raise DiffinvError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise DiffinvError(f"{path}: the file is empty")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except UnidentifiedImageError:
        raise DiffinvError(f"{path}: not an image Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise DiffinvError(f"{path}: image too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DiffinvError(f"{path}: the image is damaged or truncated ({error})") from None


def check_usable(image: Image.Image, name: str = "image") -> Image.Image:
    """`image`, or a `DiffinvError` if it is too small or too thin to work with (see the policy)."""
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise DiffinvError(f"{name}: {width}×{height} pixels is too small; each side must be at least {MIN_SIDE}")
    if max(width, height) > MAX_INPUT_ASPECT * min(width, height):
        raise DiffinvError(
            f"{name}: {width}×{height} pixels is too elongated (more than {MAX_INPUT_ASPECT:g}:1); crop it first"
        )
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of any Pillow image (see the module's policy)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def as_rgb(image: ImageInput) -> Image.Image:
    """A PIL image converted to RGB, or a path loaded as one (each is read once here); too small or
    too thin ones are refused (`check_usable`)."""
    if isinstance(image, Image.Image):
        return check_usable(to_rgb(image))
    return check_usable(load_image(image), str(image))


def working_size(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the aspect ratio of the input (clamped to `MAX_ASPECT`), an area of
    about `resolution`², and both sides positive multiples of `multiple`."""
    aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
    new_width = resolution * math.sqrt(aspect)
    new_height = resolution / math.sqrt(aspect)
    snap = lambda side: max(multiple, int(round(side / multiple)) * multiple)
    return snap(new_width), snap(new_height)


def fit_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop `image` to the aspect ratio of `size`, then resize it to `size` (bicubic)."""
    return ImageOps.fit(image, size, method=Image.Resampling.BICUBIC)


def centre_crops(images: list[Image.Image], resize: int, crop: int) -> np.ndarray:
    """(B, crop, crop, 3) float32 in [0, 1]: each image's shorter side resized to `resize` (at
    least `crop`, bicubic), then its centre `crop`² — the evaluation transform of CLIP and DINOv2."""
    out = []
    for image in images:
        scale = max(resize, crop) / min(image.size)
        resized = image.convert("RGB").resize(
            (max(crop, round(image.width * scale)), max(crop, round(image.height * scale))), Image.Resampling.BICUBIC
        )
        left, top = (resized.width - crop) // 2, (resized.height - crop) // 2
        out.append(np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0)
    return np.stack(out)
