"""Cheap, torch-free checks of a command's arguments and outputs, run before any model loads.

`Outputs` plans every file a command will write, refuses the plan before any work if a file
would overwrite something (without `overwrite`), land on an input, or have a name the writer
cannot handle, and then writes each file under a temporary name and renames it into place, so
that an interrupted run leaves either the finished files or none of them. Every file written gets
the mode a new file gets (`give_new_file_mode`), whatever the writer created it with.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import DiffinvError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TOKEN_SUFFIX = ".safetensors"
DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
MAX_SEED = 2**63 - 1  # the bench adds the triplet index to the seed; torch seeds are 64-bit
# Beyond about twice its native size a UNet draws repeated, broken content, and on a CPU one step
# takes minutes at several GB (measured: 12+ minutes at 4 GB for one analogy).
MAX_RESOLUTION_FACTOR = 2


def check_resolution(resolution: int | None, native: int | None) -> None:
    """Refuse a working resolution above `MAX_RESOLUTION_FACTOR` × the model's native size."""
    if resolution is not None and native is not None and resolution > MAX_RESOLUTION_FACTOR * native:
        raise DiffinvError(
            f"resolution {resolution} is more than {MAX_RESOLUTION_FACTOR}× the model's native {native}; "
            f"use at most {MAX_RESOLUTION_FACTOR * native}"
        )


def hub_offline() -> bool:
    """Whether the user asked for no network (`HF_HUB_OFFLINE=1`, as the hub libraries read it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_device(device: str | None) -> None:
    if device is not None and not DEVICE_PATTERN.match(device):
        raise DiffinvError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps")


def seed(text: str) -> int:
    """argparse type of --seed: an integer in [0, 2⁶³ − 1]."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2^63 - 1], got {text}")
    return value


def new_file_mode() -> int:
    """0o666 & ~umask: the mode `open` gives a new file (0o644 under the usual umask 022)."""
    try:  # Linux: read the umask without changing it (os.umask sets it, for all threads)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def give_new_file_mode(path: str | os.PathLike) -> None:
    """Give the file at `path` the mode of a new file (`new_file_mode`). Writers that create a private
    temporary file and rename it into place (safetensors' `save_file`, `tempfile.mkstemp`) leave 0o600;
    diffinv's outputs are ordinary files. Best effort: a file system without modes keeps its own."""
    with suppress(OSError):
        os.chmod(path, new_file_mode())


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class Outputs:
    """The files one command writes, checked together before any work, written atomically.

    inputs: files the command reads (never written over, whatever `overwrite` says).
    overwrite: allow replacing existing files (`--overwrite`).
    """

    def __init__(self, inputs: list[str | os.PathLike], overwrite: bool = False):
        self.inputs = [Path(p) for p in inputs]
        self.overwrite = overwrite
        self.planned: list[Path] = []

    def add(self, path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
        """Plan `path`; raise `DiffinvError` now if it could not or should not be written."""
        path = Path(path)
        if path.is_dir() or str(path).endswith(os.sep):
            raise DiffinvError(f"{path}: is a directory; give a file name for the {what}")
        if path.suffix.lower() not in suffixes:
            raise DiffinvError(f"{path}: the {what} must end in {' or '.join(suffixes)}")
        for existing in self.inputs:
            if _same_file(path, existing):
                raise DiffinvError(f"{path}: is an input of this command; diffinv never writes over its inputs")
        if any(_same_file(path, other) for other in self.planned):
            raise DiffinvError(f"{path}: two outputs of this command would have that name")
        if path.exists() and not self.overwrite:
            raise DiffinvError(f"{path}: already exists; pass --overwrite to replace it")
        parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
        if not parent.is_dir():
            raise DiffinvError(f"{path}: cannot be created, {parent} is a file")
        if not os.access(parent, os.W_OK):
            raise DiffinvError(f"{path}: cannot be written, no permission in {parent}")
        self.planned.append(path)
        return path

    @contextmanager
    def writing(self) -> Iterator[Callable[[Path, Callable[[Path], None]], None]]:
        """Yields `write(path, save)`: `save(temporary)` writes the file under a temporary name
        beside `path`, which then gets a new file's mode. When the block ends normally every written
        file is renamed into place; on any error or interrupt the temporary files are removed and
        nothing is replaced."""
        staged: list[tuple[Path, Path]] = []

        def write(path: Path, save: Callable[[Path], None]) -> None:
            if path not in self.planned:
                raise RuntimeError(f"{path} was not planned")  # a bug, not a user error
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
            staged.append((temporary, path))
            save(temporary)
            give_new_file_mode(temporary)

        try:
            yield write
        except BaseException:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            raise
        for temporary, path in staged:
            os.replace(temporary, path)
