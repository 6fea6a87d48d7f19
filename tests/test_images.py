"""Reading user images (every odd-but-valid kind becomes 8-bit RGB; invalid files give one clear
DiffinvError) and the resize policy: `working_size` and `fit_to`."""

import math

import numpy as np
import pytest
from PIL import Image

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, fast_config
from diffinv.errors import DiffinvError
from diffinv.images import (
    MAX_ASPECT,
    MAX_INPUT_ASPECT,
    MIN_SIDE,
    check_usable,
    fit_to,
    load_image,
    to_rgb,
    working_size,
)


def loaded(path) -> Image.Image:
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.asarray(image).dtype == np.uint8
    return image


# --- odd but valid images ------------------------------------------------------------------
def test_rgba_transparency_becomes_white(tmp_path):
    pixels = np.zeros((6, 8, 4), dtype=np.uint8)
    pixels[..., 0] = 255  # red everywhere …
    pixels[:, 4:, 3] = 255  # … opaque on the right half only
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgba.png")
    image = loaded(tmp_path / "rgba.png")
    assert image.size == (8, 6)
    assert image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((6, 1)) == (255, 0, 0)


def test_half_transparent_pixel_is_composited_on_white():
    image = to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 128)))
    r, g, b = image.getpixel((0, 0))
    assert r == g == b and 120 <= r <= 135


def test_grayscale(tmp_path):
    Image.new("L", (5, 4), 77).save(tmp_path / "gray.png")
    image = loaded(tmp_path / "gray.png")
    assert image.size == (5, 4)
    assert image.getpixel((2, 2)) == (77, 77, 77)


def test_palette_with_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0  # index 0 (red) is transparent
    palette.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    image = loaded(tmp_path / "palette.png")
    assert image.getpixel((0, 0)) == (0, 0, 255)
    assert image.getpixel((4, 4)) == (255, 255, 255), "transparent palette entries become white"


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.full((10, 12), 32768, dtype=np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = loaded(tmp_path / "deep.png")
    assert image.size == (12, 10)
    grey = image.getpixel((5, 5))
    assert grey[0] == grey[1] == grey[2] and abs(grey[0] - 128) <= 1, f"mid-gray 16-bit gave {grey}"
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 0)) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = loaded(tmp_path / "cmyk.jpg")
    assert image.size == (20, 10)
    r, g, b = image.getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60, "CMYK (0, 100%, 100%, 0) is red"


def test_jpeg_named_png(tmp_path):
    Image.new("RGB", (9, 7), (10, 200, 30)).save(tmp_path / "liar.png", format="JPEG")
    image = loaded(tmp_path / "liar.png")
    assert image.size == (9, 7)
    r, g, b = image.getpixel((4, 3))
    assert g > 150 and r < 60 and b < 80


def test_exif_orientation_is_applied(tmp_path):
    picture = Image.new("RGB", (40, 20), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    assert Image.open(tmp_path / "rotated.jpg").size == (40, 20)
    assert loaded(tmp_path / "rotated.jpg").size == (20, 40)


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "dot.png")
    image = loaded(tmp_path / "dot.png")
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    "size, reason",
    [((1, 1), "too small"), ((MIN_SIDE - 1, 64), "too small"), ((2000, 10), "too small"), ((200, 20), "elongated")],
)
def test_tiny_or_thin_images_are_refused(size, reason):
    with pytest.raises(DiffinvError, match=reason):
        check_usable(Image.new("RGB", size), "b.png")


def test_smallest_and_most_elongated_usable_images_pass():
    check_usable(Image.new("RGB", (MIN_SIDE, MIN_SIDE)))
    check_usable(Image.new("RGB", (int(MIN_SIDE * MAX_INPUT_ASPECT), MIN_SIDE)))


def test_the_pipeline_refuses_a_one_pixel_b(tmp_path, di):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(DiffinvError, match="dot.png: 1×1 pixels is too small"):
        di.draw(PROMPT_B, tmp_path / "dot.png", progress=False)


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("RGB", (4000, 4000), (30, 60, 90)).save(path, compress_level=1)
    return path


def test_4000_by_4000_image_loads(huge_png):
    image = loaded(huge_png)
    assert image.size == (4000, 4000)
    assert image.getpixel((3999, 3999)) == (30, 60, 90)


def test_odd_images_go_through_fit_and_apply(tmp_path, di, backbone, huge_png):
    """RGBA A, grayscale A′ of another size, and smallest / CMYK / 4000² B: all usable end to end."""
    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[8:22, 8:22] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.new("L", (50, 40), 90).save(tmp_path / "a_prime.png")
    Image.new("RGB", (MIN_SIDE, MIN_SIDE), (200, 10, 10)).save(tmp_path / "dot.png")
    Image.new("CMYK", (48, 24), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")

    tokens = di.fit(
        tmp_path / "a.png",
        tmp_path / "a_prime.png",
        fast_config(steps=1),
        captions=(CAPTION_A, CAPTION_A_PRIME),
        progress=False,
    )
    assert tokens.embeddings.shape == (5, backbone.token_width)
    assert tokens.embeddings.isfinite().all()

    native = backbone.native_resolution
    for name, source_size in (("dot.png", (MIN_SIDE, MIN_SIDE)), ("cmyk.jpg", (48, 24)), (huge_png, (4000, 4000))):
        b_prime = di.apply(tokens, tmp_path / name, prompt=PROMPT_B, progress=False)
        assert b_prime.mode == "RGB"
        assert b_prime.size == working_size(*source_size, native, backbone.size_multiple)


# --- invalid files ---------------------------------------------------------------------------
def _truncated_png(path):
    full = path.with_name("full.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty"),
        (_truncated_png, "damaged or truncated"),
        (lambda p: p.write_text("this is not a picture\n"), "not an image"),
        (lambda p: p.mkdir(), "directory"),
    ],
    ids=["missing", "empty", "truncated", "text", "directory"],
)
def test_invalid_files_raise_one_line(tmp_path, make, reason):
    path = tmp_path / "input.png"
    make(path)
    with pytest.raises(DiffinvError) as raised:
        load_image(path)
    message = str(raised.value)
    assert reason in message
    assert str(path) in message
    assert "\n" not in message


# --- the resize policy -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "width, height", [(4000, 3000), (640, 480), (60, 30), (30, 60), (1000, 1000), (1, 1), (4000, 4000), (1920, 1080)]
)
@pytest.mark.parametrize("resolution, multiple", [(512, 64), (768, 64), (32, 8)])
def test_working_size_keeps_aspect_area_and_multiple(width, height, resolution, multiple):
    new_width, new_height = working_size(width, height, resolution, multiple)
    assert new_width % multiple == 0 and new_height % multiple == 0
    assert new_width >= multiple and new_height >= multiple
    # aspect ratio kept up to rounding each side to the multiple (at most half a multiple off)
    aspect = width / height
    low = (new_width - multiple / 2) / (new_height + multiple / 2)
    high = (new_width + multiple / 2) / (new_height - multiple / 2)
    assert low <= aspect <= high
    # area about resolution² (each side within half a multiple of the exact value)
    exact_w, exact_h = resolution * math.sqrt(aspect), resolution / math.sqrt(aspect)
    assert abs(new_width - exact_w) <= multiple / 2 + 1e-9
    assert abs(new_height - exact_h) <= multiple / 2 + 1e-9


def test_working_size_upscales_small_and_downscales_large_images():
    assert working_size(1, 1, 512, 64) == (512, 512)
    assert working_size(4000, 4000, 512, 64) == (512, 512)
    assert working_size(4000, 3000, 512, 64) == working_size(400, 300, 512, 64)
    assert working_size(60, 30, 32, 8) == (48, 24)


def test_working_size_clamps_extreme_aspect_ratios():
    wide = working_size(10000, 10, 512, 64)
    tall = working_size(10, 10000, 512, 64)
    assert wide == tall[::-1]
    assert wide == working_size(4000, 1000, 512, 64)
    assert wide[0] / wide[1] == pytest.approx(MAX_ASPECT, rel=0.15)


def test_working_size_never_below_one_multiple():
    assert working_size(4, 1, 8, 64) == (64, 64)


def test_fit_to_centre_crops_then_resizes():
    # 30×10: red | green | blue thirds. A square crop from the centre is all green.
    strip = np.zeros((10, 30, 3), dtype=np.uint8)
    strip[:, :10, 0] = strip[:, 10:20, 1] = strip[:, 20:, 2] = 255
    square = fit_to(Image.fromarray(strip), (16, 16))
    assert square.size == (16, 16)
    middle = np.asarray(square)[2:-2, 2:-2].astype(int)
    assert (middle[..., 1] > 200).all() and (middle[..., 0] < 60).all() and (middle[..., 2] < 60).all()


def test_fit_to_same_aspect_keeps_the_whole_picture():
    strip = np.zeros((10, 20, 3), dtype=np.uint8)
    strip[:, :10, 0] = 255
    strip[:, 10:, 2] = 255
    resized = np.asarray(fit_to(Image.fromarray(strip), (40, 20))).astype(int)
    assert resized.shape == (20, 40, 3)
    assert resized[10, 2, 0] > 200 and resized[10, 37, 2] > 200, "both halves survive: nothing was cropped"
