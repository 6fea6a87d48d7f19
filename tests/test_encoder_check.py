"""init="auto": the DIFF-token encoder's D̃ where it reproduces the example pairs, else a fit
(`encoder_check`, `DifferenceInversion._fit_or_encode`), on tiny models of the real classes."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config
from diffinv.config import InversionConfig
from diffinv.encoder_check import EncoderCheck, reproduction_ratios
from diffinv.errors import DiffinvError
from diffinv.images import WorkingPair
from diffinv.pipeline import DifferenceInversion
from diffinv.tokens import DiffTokens
from test_diff_encoder import random_encoder

CAPTIONS = (CAPTION_A, CAPTION_A_PRIME)


def auto_di(editor, clip, encoder, **changes) -> DifferenceInversion:
    config = fast_config(sampling_mode="editor", init="auto", steps=3, learning_rate=0.05, **changes)
    return DifferenceInversion(editor, clip, captioner=None, default_config=config, diff_encoder=encoder)


def redraw_as(di, monkeypatch, pick):
    """Make every check's redrawn A `pick(pair)` instead of a draw (a perfect or a blind encoder)."""
    monkeypatch.setattr(di, "_apply", lambda tokens, a, seed, prompt, config, progress, pair: pick(pair))


def test_the_ratios_are_zero_for_a_reproduced_pair_and_one_for_an_unedited_one(clip, images):
    pair = WorkingPair(images["a"], images["a_prime"].resize(images["a"].size))
    assert reproduction_ratios(clip, pair, pair.a_prime) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert reproduction_ratios(clip, pair, pair.a) == pytest.approx((1.0, 1.0), abs=1e-5)
    halfway = Image.blend(pair.a, pair.a_prime, 0.5)
    pixel, _ = reproduction_ratios(clip, pair, halfway)
    assert 0.2 < pixel < 0.3  # a half-made edit leaves a quarter of the squared difference


def test_both_ratios_must_be_within_the_tolerance():
    assert EncoderCheck(0.1, 0.3, tolerance=0.3).accepted
    assert not EncoderCheck(0.1, 0.31, tolerance=0.3).accepted
    assert not EncoderCheck(0.5, 0.0, tolerance=0.3).accepted
    assert "fitted" in EncoderCheck(0.5, 0.0, tolerance=0.3).describe()


def test_auto_is_validated():
    with pytest.raises(DiffinvError, match="encoder_tolerance must lie in"):
        InversionConfig(init="auto", encoder_tolerance=1.5)
    with pytest.raises(DiffinvError, match="does not combine with hard_tokens"):
        InversionConfig(init="auto", hard_tokens=True)
    with pytest.raises(DiffinvError, match="steps must be an integer ≥ 1"):
        InversionConfig(init="auto", steps=0)


def test_auto_without_an_encoder_is_refused_before_the_work(clip, editor, images):
    with pytest.raises(DiffinvError, match="init='auto' needs a DIFF-token encoder"):
        auto_di(editor, clip, None).fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False)


def test_an_encoder_that_reproduces_the_pair_gives_its_tokens_unfitted(
    clip,
    editor,
    images,
    monkeypatch,
    tmp_path,
):
    encoder = random_encoder(clip, editor)
    di = auto_di(editor, clip, encoder)
    expected = di.fit(images["a"], images["a_prime"], di.default_config.replace(init="encoder", steps=0), CAPTIONS)
    redraw_as(di, monkeypatch, lambda pair: pair.a_prime)
    tokens = di.fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False)
    assert torch.equal(tokens.embeddings, expected.embeddings)
    assert tokens.history["loss"] == []  # no step was taken
    assert tokens.config.init == "auto" and tokens.config.steps == 3  # drawn as configured
    assert tokens.encoder_check["accepted"] and tokens.encoder_check["pixel"] == pytest.approx(0, abs=1e-9)
    tokens.save(tmp_path / "d.safetensors")
    assert DiffTokens.load(tmp_path / "d.safetensors").encoder_check == tokens.encoder_check


def test_tasks_the_encoder_does_not_reproduce_are_fitted_from_zeros(clip, editor, images, monkeypatch):
    """fit_many with one task the encoder reproduces and one it leaves unedited: the first gets the
    encoder's D̃, the second exactly the zero-start fit it would get alone with its seed."""
    di = auto_di(editor, clip, random_encoder(clip, editor))
    a, a_prime, b = images["a"], images["a_prime"], images["b"].resize((32, 32))
    zeros = di.default_config.replace(init="zeros")
    alone = di.fit_many([(b, a_prime)], zeros, [CAPTIONS], seeds=[7], progress=False)[0]
    encoded = di.fit(a, a_prime, di.default_config.replace(init="encoder", steps=0), CAPTIONS, seed=3)
    known = a.tobytes()
    redraw_as(di, monkeypatch, lambda pair: pair.a_prime if pair.a.tobytes() == known else pair.a)
    first, second = di.fit_many([(a, a_prime), (b, a_prime)], captions=[CAPTIONS, CAPTIONS], seeds=[3, 7])
    assert first.encoder_check["accepted"] and torch.equal(first.embeddings, encoded.embeddings)
    assert not second.encoder_check["accepted"] and second.encoder_check["pixel"] == pytest.approx(1.0)
    assert torch.equal(second.embeddings, alone.embeddings) and len(second.history["loss"]) == 3


def test_the_check_draws_each_example_a_with_the_pooled_prediction(clip, editor, images, monkeypatch):
    """Several example pairs: every pair's A is redrawn with the one pooled D̃, and the ratios are
    the means over the pairs (one pair reproduced, one not: 0.5 each)."""
    di = auto_di(editor, clip, random_encoder(clip, editor))
    a, a_prime, b = images["a"], images["a_prime"], images["b"].resize((32, 32))
    encoder_only = di.default_config.replace(init="encoder", steps=0)
    pooled = di.fit([(a, a_prime), (b, a_prime)], config=encoder_only, captions=[CAPTIONS, CAPTIONS], progress=False)
    drawn_with = []

    def pick(tokens, image, seed, prompt, config, progress, pair):
        drawn_with.append(tokens.embeddings)
        return pair.a_prime if image.tobytes() == a.tobytes() else pair.a

    monkeypatch.setattr(di, "_apply", pick)
    tokens = di.fit([(a, a_prime), (b, a_prime)], captions=[CAPTIONS, CAPTIONS], progress=False)
    assert len(drawn_with) == 2 and all(torch.equal(d, pooled.embeddings) for d in drawn_with)
    assert tokens.encoder_check["pixel"] == pytest.approx(0.5) and not tokens.encoder_check["accepted"]
