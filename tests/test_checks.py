"""`checks.Outputs`: every file it writes gets the mode a new file gets (0o666 & ~umask), whatever
mode the writer created it with — safetensors and `tempfile.mkstemp` make private 0o600 files."""

import os
import stat
import tempfile
from contextlib import contextmanager

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffinv.checks import Outputs, new_file_mode

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes and umasks are POSIX's")

# umask → the mode of a new file under it
UMASKS = {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}


@contextmanager
def umask(mask: int):
    """Run the block under `mask` (the process's umask), then put the old one back."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def private_file(path):
    """Writes as `tempfile.mkstemp` does: a 0o600 file, renamed into place."""
    handle, name = tempfile.mkstemp(dir=os.path.dirname(path))
    os.write(handle, b"data")
    os.close(handle)
    os.replace(name, path)


WRITERS = {
    "mkstemp": private_file,
    "safetensors": lambda path: save_file({"x": torch.zeros(2)}, str(path)),
    "image": lambda path: Image.new("RGB", (4, 4)).save(path),
}


@pytest.mark.parametrize("mask", list(UMASKS), ids=lambda mask: f"umask-{mask:03o}")
def test_new_file_mode_is_what_open_gives(tmp_path, mask):
    with umask(mask):
        assert new_file_mode() == UMASKS[mask]
        (tmp_path / "opened").write_bytes(b"")
        assert mode(tmp_path / "opened") == UMASKS[mask]
        assert new_file_mode() == UMASKS[mask], "reading the umask leaves it as it was"


@pytest.mark.parametrize("mask", list(UMASKS), ids=lambda mask: f"umask-{mask:03o}")
def test_outputs_get_a_new_files_mode_whatever_their_writer_gave(tmp_path, mask):
    outputs = Outputs([])
    paths = {
        name: outputs.add(tmp_path / "out" / f"{name}{suffix}", (suffix,), name)
        for name, suffix in [("mkstemp", ".bin"), ("safetensors", ".safetensors"), ("image", ".png")]
    }
    with umask(mask), outputs.writing() as write:
        for name, path in paths.items():
            write(path, WRITERS[name])
    for name, path in paths.items():
        assert mode(path) == UMASKS[mask], name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "image.png",
        "mkstemp.bin",
        "safetensors.safetensors",
    ]
