"""Before/after image pairs on disk, for training a DIFF-token encoder (`diffinv encoder train --data DIR`).

Two layouts, told apart by what DIR holds:

Pair folders (any of .png .jpg .jpeg .webp)::

    DIR/<pair>/before.png  after.png  [captions.txt]

`captions.txt` holds optional `key: value` lines, `before: …` and `after: …` (the prompts of a
text-to-image model's loss; a pair without them is captioned by the model's captioner). Folders
without `before` or `after` images are refused by name; other files and folders are not read.

InstructPix2Pix (the released `clip-filtered-dataset` / `random-sample-dataset`, as
`instructpix2pix_pairs` reads it; the bench's InstructPix2Pix triplets come from the same function)::

    DIR/<pair dir>/prompt.json   {"input": caption before, "edit": …, "output": caption after}
    DIR/<pair dir>/<seed>_0.jpg  before     <seed>_1.jpg  after   (one or more seeds)

Torch-free: the command checks the data before any model loads. Images are read when they are used
(`load_pair_images`), a file's problem named in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DiffinvError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LAYOUTS = ("folders", "instructpix2pix")


@dataclass(frozen=True)
class ImagePair:
    """One (before, after) pair: its id, its two image files and their captions (None: not given)."""

    id: str
    before: Path
    after: Path
    caption_before: str | None = None
    caption_after: str | None = None


def find_pairs(root: str | Path) -> tuple[str, list[ImagePair]]:
    """(layout, the pairs of `root` in a stable order), the layout told by what `root` holds; every
    image's header is read, so a missing, empty or unreadable file is refused now, by name."""
    root = Path(root)
    if not root.is_dir():
        raise DiffinvError(f"{root}: no such directory (the pairs' data: see `diffinv encoder train --help`)")
    if any(root.glob("*/prompt.json")):
        layout, pairs = "instructpix2pix", instructpix2pix_image_pairs(root)
    elif any(root.glob("*/before.*")):
        layout, pairs = "folders", folder_pairs(root)
    else:
        raise DiffinvError(
            f"{root}: no pairs found; expected pair folders (<pair>/before.png, <pair>/after.png) or a copy of "
            "the InstructPix2Pix data (<dir>/prompt.json, <seed>_0.jpg, <seed>_1.jpg)"
        )
    for pair in pairs:
        for path in (pair.before, pair.after):
            _check_header(path)
    return layout, pairs


def folder_pairs(root: Path) -> list[ImagePair]:
    """Every pair folder of `root` (any sub-directory with a `before` or `after` image), in name order."""
    pairs = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        before, after = find_image(directory, "before"), find_image(directory, "after")
        if before is None and after is None:
            continue  # not a pair folder
        if before is None or after is None:
            missing = "before" if before is None else "after"
            raise DiffinvError(
                f"{directory}: a pair folder without its '{missing}' image ({', '.join(IMAGE_SUFFIXES)})"
            )
        captions = read_captions(directory / "captions.txt")
        pairs.append(ImagePair(directory.name, before, after, captions.get("before"), captions.get("after")))
    if not pairs:
        raise DiffinvError(f"{root}: no pair folders with before and after images")
    return pairs


def instructpix2pix_image_pairs(root: Path) -> list[ImagePair]:
    """The pairs of a local InstructPix2Pix copy (`instructpix2pix_pairs`), captioned
    by their prompt.json's "input" and "output"; a before image without its after is refused."""
    found = instructpix2pix_pairs(root)
    paired = {pair["before"] for pair in found}
    for before in sorted(root.glob("*/*_0.*")):
        if before.suffix.lower() in IMAGE_SUFFIXES and before not in paired:
            raise DiffinvError(f"{before}: a 'before' image without its 'after' ({before.stem[:-2]}_1.*)")
    inputs: dict[Path, str | None] = {}
    pairs = []
    for pair in found:
        directory = pair["before"].parent
        if directory not in inputs:  # prompt.json was read and checked by instructpix2pix_pairs
            inputs[directory] = json.loads((directory / "prompt.json").read_text(encoding="utf-8")).get("input")
        pairs.append(ImagePair(pair["id"], pair["before"], pair["after"], inputs[directory], pair.get("output")))
    return pairs


def load_pair_image(path: Path, size: int) -> Image.Image:
    """The image at `path` as RGB, centre-cropped to a square and resized to `size`² (bicubic)."""
    from .images import fit_to, load_image

    return fit_to(load_image(path), (size, size))


def _check_header(path: Path) -> None:
    """Refuse an empty or unreadable image now, reading only its header."""
    try:
        if path.stat().st_size == 0:
            raise DiffinvError(f"{path}: the file is empty")
        with Image.open(path) as image:
            image.size  # noqa: B018 (the header is what is checked)
    except UnidentifiedImageError:
        raise DiffinvError(f"{path}: not an image Pillow can read") from None
    except OSError as error:
        raise DiffinvError(f"{path}: cannot be read ({error.strerror or error})") from None


def find_image(directory: Path, stem: str) -> Path | None:
    """`directory/stem` with the first of IMAGE_SUFFIXES that exists, or None."""
    for suffix in IMAGE_SUFFIXES:
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    return None


def read_captions(path: Path) -> dict[str, str]:
    """The `key: value` lines of a captions.txt ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DiffinvError(f"{path}: cannot be read as UTF-8 text ({error})") from None
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def instructpix2pix_pairs(root: str | Path) -> list[dict]:
    """Every (before, after, instruction) pair of a local InstructPix2Pix copy, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise DiffinvError(f"{root}: no such directory (expected a local copy of the InstructPix2Pix data)")
    pairs = []
    for prompt_file in sorted(root.glob("*/prompt.json")):
        directory = prompt_file.parent
        try:
            prompt = json.loads(prompt_file.read_text(encoding="utf-8"))
            instruction, output = prompt["edit"], prompt.get("output")
        except (ValueError, KeyError, TypeError):
            raise DiffinvError(f'{prompt_file}: not an InstructPix2Pix prompt.json (needs an "edit" field)') from None
        for before in sorted(directory.glob("*_0.*")):
            seed = before.name[: -len("_0" + before.suffix)]
            after = find_image(directory, f"{seed}_1")
            if before.suffix.lower() in IMAGE_SUFFIXES and after:
                pairs.append(
                    {
                        "id": f"{directory.name}-{seed}",
                        "before": before,
                        "after": after,
                        "instruction": instruction,
                        "output": output,
                    }
                )
    if not pairs:
        raise DiffinvError(
            f"{root}: no InstructPix2Pix pairs found (<dir>/prompt.json with <seed>_0 / <seed>_1 images)"
        )
    return pairs
