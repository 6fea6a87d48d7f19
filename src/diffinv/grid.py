"""A labelled row of images: A | A′ | B | B′."""

from __future__ import annotations

from PIL import Image, ImageDraw


def image_grid(
    images: list[Image.Image], labels: list[str], height: int = 256, label_height: int = 18, gap: int = 4
) -> Image.Image:
    """One row, every image scaled to `height` (aspect kept), each with its label above it."""
    tiles = [_scaled(image.convert("RGB"), height) for image in images]
    width = sum(tile.width for tile in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, height + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, label_height))
        draw.text((x + 4, 3), label, fill="black")
        x += tile.width + gap
    return canvas


def _scaled(image: Image.Image, height: int) -> Image.Image:
    """Scale to `height`; small pictures are enlarged with hard pixels rather than blurred."""
    width = max(1, round(image.width * height / image.height))
    method = Image.Resampling.NEAREST if height >= 2 * image.height else Image.Resampling.BICUBIC
    return image.resize((width, height), method)
