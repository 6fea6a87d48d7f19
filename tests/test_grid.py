"""The grid A | A′ | B | B′: each picture shown as the model saw it (cropped to 1:4 … 4:1)."""

from __future__ import annotations

import pytest
from PIL import Image

from diffinv.grid import as_seen, image_grid
from diffinv.images import MAX_ASPECT, fit_to, working_size

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
LABEL, GAP = 18, 4  # image_grid's defaults


def banded(width: int, height: int) -> Image.Image:
    """Blue, with a red first quarter and a green last quarter along the longer side."""
    image = Image.new("RGB", (width, height), BLUE)
    if width >= height:
        image.paste(RED, (0, 0, width // 4, height))
        image.paste(GREEN, (width - width // 4, 0, width, height))
    else:
        image.paste(RED, (0, 0, width, height // 4))
        image.paste(GREEN, (0, height - height // 4, width, height))
    return image


def colours(image: Image.Image) -> set[tuple[int, int, int]]:
    return {colour for _, colour in image.getcolors()}


@pytest.mark.parametrize("size", [(256, 32), (32, 256)])
def test_an_8_to_1_b_is_shown_cropped_to_4_to_1_beside_its_b_prime(size):
    """The report: for an 8:1 B the grid showed the uncropped B beside a 4:1 B′."""
    square = Image.new("RGB", (32, 32), "white")
    b = banded(*size)
    b_prime = fit_to(b, working_size(*size, 32, 8))  # as the pipeline crops B (4:1 here)
    assert max(b_prime.size) == MAX_ASPECT * min(b_prime.size)
    grid = image_grid([square, square, b, b_prime], ["A", "A'", "B", "B'"], height=64)
    b_width = b_prime_width = 64 * b_prime.width // b_prime.height
    assert grid.size == (64 + GAP + 64 + GAP + b_width + GAP + b_prime_width, LABEL + 64)
    left = 2 * (64 + GAP)
    b_tile = grid.crop((left, LABEL, left + b_width, LABEL + 64))
    assert colours(b_tile) == {BLUE}  # the centre: the red and green ends were cropped off, as in B′


def test_as_seen_crops_only_beyond_4_to_1():
    for size in [(32, 32), (128, 32), (32, 128), (100, 30), (17, 16)]:
        image = banded(*size)
        assert as_seen(image) is image
    wide = as_seen(banded(400, 20))
    assert wide.size == (80, 20) and colours(wide) == {BLUE}
    tall = as_seen(banded(20, 330))
    assert tall.size == (20, 80) and colours(tall) == {BLUE}


def test_grid_of_pictures_within_the_clamp_is_unchanged():
    """Tiles within 1:4 … 4:1 keep their whole picture (every colour band), scaled to the height."""
    images = [banded(64, 32), banded(32, 64), banded(128, 32)]
    grid = image_grid(images, ["A", "A'", "B"], height=32)
    assert grid.size == (64 + 16 + 128 + 2 * GAP, LABEL + 32)
    assert colours(grid.crop((0, LABEL, 64, grid.height))) == {RED, BLUE, GREEN}
