"""A labelled row of images: A | A′ | B | B′."""

from __future__ import annotations

from PIL import Image, ImageDraw

from .images import MAX_ASPECT


def image_grid(
    images: list[Image.Image], labels: list[str], height: int = 256, label_height: int = 18, gap: int = 4
) -> Image.Image:
    """One row, every image scaled to `height` (aspect kept), each with its label above it.

    Each image is first centre-cropped to the aspect ratios the pipeline works at (`as_seen`), so
    that an input wider than 4:1 is shown as the model saw it, beside a B′ of the same shape."""
    tiles = [_scaled(as_seen(image.convert("RGB")), height) for image in images]
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, height + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, label_height))
        draw.text((x + 4, 3), label, fill="black")
        x += tile.width + gap
    return canvas


def as_seen(image: Image.Image) -> Image.Image:
    """`image` centre-cropped to an aspect ratio within 1:`MAX_ASPECT` … `MAX_ASPECT`:1, the clamp
    of `images.working_size` (the pipeline's crop); images already within it are returned as they are."""
    width, height = image.size
    if width > MAX_ASPECT * height:
        kept = max(1, round(height * MAX_ASPECT))
        left = (width - kept) // 2
        return image.crop((left, 0, left + kept, height))
    if height > MAX_ASPECT * width:
        kept = max(1, round(width * MAX_ASPECT))
        top = (height - kept) // 2
        return image.crop((0, top, width, top + kept))
    return image


def _scaled(image: Image.Image, height: int) -> Image.Image:
    """Scale to `height`; small pictures are enlarged with hard pixels rather than blurred."""
    width = max(1, round(image.width * height / image.height))
    method = Image.Resampling.NEAREST if height >= 2 * image.height else Image.Resampling.BICUBIC
    return image.resize((width, height), method)
