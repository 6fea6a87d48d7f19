"""The BLIP-2 captioner: loaded on first use, freed after each call unless kept, and a model
that cannot be found is one clear error naming the ways around it."""

import pytest
import torch
from PIL import Image

from diffinv.captioners import Blip2Captioner
from diffinv.errors import DiffinvError


class FakeBatch(dict):
    def to(self, *args):
        return self


class FakeProcessor:
    def __call__(self, images, return_tensors):
        return FakeBatch(pixel_values=torch.zeros(len(images), 3, 4, 4))

    def batch_decode(self, generated, skip_special_tokens):
        return [f" caption {int(row[0])} " for row in generated]


class FakeModel:
    def generate(self, pixel_values, max_new_tokens):
        return torch.arange(len(pixel_values)).unsqueeze(1)


@pytest.fixture
def loads(monkeypatch):
    """Counts the loads of a Blip2Captioner whose weights are fakes."""
    count = []

    def fake_load(self):
        count.append(1)
        self._processor, self._model = FakeProcessor(), FakeModel()

    monkeypatch.setattr(Blip2Captioner, "_load", fake_load)
    return count


def test_blip2_is_freed_after_captioning(loads):
    captioner = Blip2Captioner()
    assert captioner([Image.new("RGB", (8, 8))] * 2) == ["caption 0", "caption 1"]
    assert captioner._model is None and captioner._processor is None
    captioner([Image.new("RGB", (8, 8))])
    assert len(loads) == 2, "loaded again on the next call"


def test_blip2_kept_loaded_when_asked(loads):
    captioner = Blip2Captioner(keep_loaded=True)
    captioner([Image.new("RGB", (8, 8))])
    captioner([Image.new("RGB", (8, 8))])
    assert len(loads) == 1 and captioner._model is not None


def test_a_blip2_that_cannot_be_found_says_how_to_do_without_it(tmp_path):
    captioner = Blip2Captioner(str(tmp_path / "no-blip2"), local_files_only=True)
    with pytest.raises(DiffinvError, match="--caption-a.*--captions-from"):
        captioner([Image.new("RGB", (8, 8))])
