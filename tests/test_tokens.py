"""DiffTokens: safetensors round trip, refusal of files that are not DIFF tokens, and the width
check against a text encoder."""

import json
import os
import re
import stat
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import CAPTION_A, PROMPT_B, fast_config
from diffinv.errors import DiffinvError, DiffinvWarning
from diffinv.inversion import MIN_TEXT_DELTA_NORM
from diffinv.tokens import FORMAT, DiffTokens
from test_checks import UMASKS, umask


def made_up_tokens(width=32, **changes) -> DiffTokens:
    values = dict(
        embeddings=torch.randn(3, width, generator=torch.Generator().manual_seed(0)),
        model_id="tiny-epsilon",
        vocab_size=667,
        config=fast_config(n_tokens=3, alpha=0.4, hard_tokens=True),
        prompt_a="a red circle",
        prompt_a_prime="a blue circle",
        caption_a="a photo of a red circle",
        caption_a_prime="a photo of a blue circle — ünïcödé",
        hard_token_ids=[5, 17, 300],
        hard_text="red blue circle",
        history={"loss": [1.5, 1.25], "loss_tc": [0.5, 0.25], "loss_clip": [0.1, 0.05]},
        text_delta_norm=0.1234567890123,
        effective_alpha=0.4,
    )
    values.update(changes)
    return DiffTokens(**values)


def assert_same(loaded: DiffTokens, original: DiffTokens):
    assert loaded.embeddings.dtype == torch.float32
    assert torch.equal(loaded.embeddings, original.embeddings.float())
    assert loaded.config == original.config
    for name in (
        "model_id",
        "vocab_size",
        "prompt_a",
        "prompt_a_prime",
        "caption_a",
        "caption_a_prime",
        "hard_token_ids",
        "hard_text",
        "history",
        "text_delta_norm",
        "effective_alpha",
    ):
        assert getattr(loaded, name) == getattr(original, name), name


def test_round_trip_keeps_everything(tmp_path):
    tokens = made_up_tokens()
    path = tmp_path / "nested" / "tokens.safetensors"
    tokens.save(path)
    loaded = DiffTokens.load(path)
    assert_same(loaded, tokens)
    assert (loaded.n_tokens, loaded.token_width) == (3, 32)


@pytest.mark.skipif(os.name != "posix", reason="file modes and umasks are POSIX's")
@pytest.mark.parametrize("mask", list(UMASKS), ids=lambda mask: f"umask-{mask:03o}")
def test_saved_file_has_a_new_files_mode(tmp_path, mask):
    """safetensors writes a private 0o600 temporary file and renames it; a token file is an ordinary one."""
    path = tmp_path / "tokens.safetensors"
    with umask(mask):
        made_up_tokens().save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == UMASKS[mask]


def test_round_trip_without_hard_tokens(tmp_path):
    tokens = made_up_tokens(hard_token_ids=None, hard_text="", history={})
    tokens.save(tmp_path / "soft.safetensors")
    loaded = DiffTokens.load(tmp_path / "soft.safetensors")
    assert loaded.hard_token_ids is None and loaded.hard_text == "" and loaded.history == {}


def test_round_trip_of_fitted_tokens(tmp_path, fitted_tokens):
    fitted_tokens.save(tmp_path / "fitted.safetensors")
    loaded = DiffTokens.load(tmp_path / "fitted.safetensors")
    assert_same(loaded, fitted_tokens)
    assert len(loaded.history["loss"]) == fitted_tokens.config.steps


def test_file_layout(tmp_path):
    made_up_tokens().save(tmp_path / "t.safetensors")
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as handle:
        assert list(handle.keys()) == ["diff_tokens"]
        metadata = handle.metadata()
    assert metadata["format"] == FORMAT
    assert (metadata["token_width"], metadata["n_tokens"], metadata["alpha"]) == ("32", "3", "0.4")
    assert json.loads(metadata["hard_token_ids"]) == [5, 17, 300]


def test_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "tokens.safetensors"
    path.write_text("definitely not a tensor file")
    with pytest.raises(DiffinvError, match="not a safetensors DIFF-token file") as raised:
        DiffTokens.load(path)
    assert "\n" not in str(raised.value)


def test_other_safetensors_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(DiffinvError, match="not DIFF tokens"):
        DiffTokens.load(path)


def test_damaged_metadata_is_refused(tmp_path):
    path = tmp_path / "damaged.safetensors"
    save_file({"diff_tokens": torch.zeros(2, 32)}, str(path), metadata={"format": FORMAT, "config": "{}"})
    with pytest.raises(DiffinvError, match="damaged DIFF-token metadata"):
        DiffTokens.load(path)


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["missing", "directory"])
def test_missing_or_directory_is_refused(tmp_path, make):
    path = tmp_path / "tokens.safetensors"
    make(path)
    with pytest.raises(DiffinvError, match=re.escape(str(path))):
        DiffTokens.load(path)


def test_check_fits_refuses_another_width():
    tokens = made_up_tokens(width=32)
    with pytest.raises(DiffinvError) as raised:
        tokens.check_fits("tiny-wide", 48, 667)
    message = str(raised.value)
    assert "32" in message and "48" in message and "fit them again" in message
    assert "\n" not in message


def test_check_fits_warns_for_another_model_of_the_same_width():
    tokens = made_up_tokens()
    with pytest.warns(DiffinvWarning, match="other-model"):
        tokens.check_fits("other-model", 32, 667)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens.check_fits("tiny-epsilon", 32, 667)


def test_apply_to_a_wider_text_encoder_is_refused(wide_di, images):
    tokens = made_up_tokens(width=32)
    with pytest.raises(DiffinvError, match="48"):
        wide_di.apply(tokens, images["b"], prompt=PROMPT_B, progress=False)


def test_apply_of_a_loaded_file_to_a_wider_text_encoder_is_refused(tmp_path, wide_di, images, fitted_tokens):
    fitted_tokens.save(tmp_path / "narrow.safetensors")
    with pytest.raises(DiffinvError, match="32 wide"):
        wide_di.apply(DiffTokens.load(tmp_path / "narrow.safetensors"), images["b"], prompt=PROMPT_B, progress=False)


def test_text_delta_norm_and_effective_alpha_are_in_the_metadata(tmp_path):
    made_up_tokens().save(tmp_path / "t.safetensors")
    made_up_tokens(text_delta_norm=None, effective_alpha=None).save(tmp_path / "unknown.safetensors")
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert float(metadata["text_delta_norm"]) == 0.1234567890123 and float(metadata["effective_alpha"]) == 0.4
    loaded = DiffTokens.load(tmp_path / "unknown.safetensors")
    assert loaded.text_delta_norm is None and loaded.effective_alpha is None


def test_files_written_before_the_text_delta_fields_still_load(tmp_path):
    path = tmp_path / "old.safetensors"
    made_up_tokens().save(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    old = {key: value for key, value in metadata.items() if key not in ("text_delta_norm", "effective_alpha")}
    save_file({"diff_tokens": made_up_tokens().embeddings}, str(path), metadata=old)
    loaded = DiffTokens.load(path)
    assert loaded.text_delta_norm is None and loaded.effective_alpha is None
    assert loaded.caption_a_prime == made_up_tokens().caption_a_prime


def test_fitted_tokens_record_the_text_delta(fitted_tokens):
    assert fitted_tokens.effective_alpha == fitted_tokens.config.alpha == 0.8
    assert fitted_tokens.text_delta_norm > MIN_TEXT_DELTA_NORM


def test_identical_captions_are_recorded_as_image_delta_only(tmp_path, di, images):
    """Same caption for A and A′: a warning naming it, and α recorded as effectively 0."""
    with pytest.warns(DiffinvWarning, match=re.escape(repr(CAPTION_A)) + ".*image delta alone"):
        tokens = di.fit(
            images["a"], images["a_prime"], fast_config(steps=1), captions=(CAPTION_A, CAPTION_A), progress=False
        )
    assert tokens.text_delta_norm == 0.0 and tokens.effective_alpha == 0.0 and tokens.config.alpha == 0.8
    tokens.save(tmp_path / "same.safetensors")
    loaded = DiffTokens.load(tmp_path / "same.safetensors")
    assert loaded.text_delta_norm == 0.0 and loaded.effective_alpha == 0.0


def test_without_the_clip_loss_no_text_delta_is_needed_and_nothing_warns(di, images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens = di.fit(
            images["a"],
            images["a_prime"],
            fast_config(steps=1, use_clip_loss=False),
            captions=("", ""),
            progress=False,
        )
    assert tokens.text_delta_norm is None and tokens.effective_alpha == 0.0
