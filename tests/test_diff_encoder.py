"""The DIFF-token encoder (`diff_encoder`) and init="encoder", on tiny models of the real classes."""

from __future__ import annotations

import pytest
import torch

from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config
from diffinv.config import InversionConfig
from diffinv.diff_encoder import CONFIG_NAME, DiffEncoder, DiffEncoderConfig
from diffinv.errors import DiffinvError
from diffinv.pipeline import DifferenceInversion

CAPTIONS = (CAPTION_A, CAPTION_A_PRIME)


def random_encoder(clip, editor, n_tokens: int = 5) -> DiffEncoder:
    encoder = DiffEncoder(DiffEncoderConfig(clip.joint_width, n_tokens, editor.token_width, hidden=16))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.normal_(0, 0.3)
    return encoder.eval()


def editor_di(editor, clip, encoder=None) -> DifferenceInversion:
    config = fast_config(sampling_mode="editor", init="encoder", steps=0)
    return DifferenceInversion(editor, clip, captioner=None, default_config=config, diff_encoder=encoder)


def test_an_untrained_encoder_gives_the_papers_zero_start(clip, editor):
    encoder = DiffEncoder(DiffEncoderConfig(clip.joint_width, 3, editor.token_width))
    features = torch.nn.functional.normalize(torch.randn(2, clip.joint_width), dim=-1)
    tokens = encoder(features[:1], features[1:])
    assert tokens.shape == (1, 3, editor.token_width) and not tokens.any()


def test_an_encoder_saved_and_loaded_predicts_the_same(clip, editor, tmp_path):
    encoder = random_encoder(clip, editor)
    encoder.save_pretrained(tmp_path)
    loaded = DiffEncoder.from_pretrained(tmp_path)
    features = torch.nn.functional.normalize(torch.randn(4, clip.joint_width), dim=-1)
    torch.testing.assert_close(loaded(features[:2], features[2:]), encoder(features[:2], features[2:]))
    assert not list(tmp_path.glob("*.tmp"))


def test_a_missing_or_broken_encoder_is_refused_clearly(clip, editor, tmp_path):
    with pytest.raises(DiffinvError, match="no DIFF-token encoder"):
        DiffEncoder.from_pretrained(tmp_path)
    random_encoder(clip, editor).save_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text('{"joint_width": 3}')
    with pytest.raises(DiffinvError, match="not a readable DIFF-token encoder"):
        DiffEncoder.from_pretrained(tmp_path)


def test_zero_steps_only_from_the_encoder():
    assert InversionConfig(init="encoder", steps=0).steps == 0
    with pytest.raises(DiffinvError, match="steps must be an integer ≥ 1"):
        InversionConfig(steps=0)
    with pytest.raises(DiffinvError, match="does not combine with hard_tokens"):
        InversionConfig(init="encoder", hard_tokens=True)


def test_with_zero_steps_the_diff_tokens_are_the_encoders_prediction(clip, editor, images):
    encoder = random_encoder(clip, editor)
    tokens = editor_di(editor, clip, encoder).fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False)
    a = images["a"].resize((32, 32))
    features = clip.image_features([a, images["a_prime"].resize(a.size)])
    expected = encoder(features[:1], features[1:])[0]
    torch.testing.assert_close(tokens.embeddings, expected)
    assert tokens.embeddings.abs().sum() > 0


def test_with_zero_steps_nothing_is_encoded_or_optimised(clip, editor, images, monkeypatch):
    """steps = 0: D̃ is the encoder's prediction, so A and A′ never go through the VAE and no
    optimiser is built; the token file holds what a fit of no steps holds (an empty history)."""
    encoder = random_encoder(clip, editor)
    di = editor_di(editor, clip, encoder)
    a, a_prime = di.working_pair(images["a"], images["a_prime"], di.default_config)
    features = clip.image_features([a, a_prime])
    expected = encoder(features[:1], features[1:])[0]
    encodes = []
    real_encode = editor.vae.encode
    monkeypatch.setattr(
        editor.vae, "encode", lambda *args, **kwargs: encodes.append(1) or real_encode(*args, **kwargs)
    )

    def no_optimiser(*args, **kwargs):
        raise AssertionError("an optimiser was built for a fit of no steps")

    monkeypatch.setattr(torch.optim, "AdamW", no_optimiser)
    tokens = di.fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False)
    assert encodes == []
    assert torch.equal(tokens.embeddings, expected.detach().cpu())
    assert tokens.history == {"loss": [], "loss_tc": [], "loss_clip": []}
    assert tokens.effective_alpha == 0.0 and tokens.text_delta_norm is None


def test_the_fit_corrects_the_encoders_prediction(clip, editor, images):
    encoder = random_encoder(clip, editor)
    di = editor_di(editor, clip, encoder)
    start = di.fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False).embeddings
    config = fast_config(sampling_mode="editor", init="encoder", steps=3, learning_rate=0.05)
    fitted = di.fit(images["a"], images["a_prime"], config, captions=CAPTIONS, progress=False).embeddings
    change = (fitted - start).norm()
    assert 0 < change < start.norm()  # the encoder's tokens plus a correction, not a fresh start


def test_init_encoder_without_an_encoder_or_for_another_token_count_fails_before_the_work(clip, editor, images):
    with pytest.raises(DiffinvError, match="has none"):
        editor_di(editor, clip).fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False)
    di = editor_di(editor, clip, random_encoder(clip, editor, n_tokens=3))
    with pytest.raises(DiffinvError, match="use n_tokens=3"):
        di.fit(images["a"], images["a_prime"], captions=CAPTIONS, progress=False)
