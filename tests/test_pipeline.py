"""DifferenceInversion: fit → DiffTokens, apply → B′ (size, seeds, modes), hard tokens, prompts
and captions, analogy, and loading a saved model directory."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, fast_config, shape_image
from diffinv.captioners import ClipRetrievalCaptioner
from diffinv.errors import DiffinvError, DiffinvWarning
from diffinv.images import working_size
from diffinv.pez import usable_token_mask
from diffinv.pipeline import DifferenceInversion


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_fit_returns_tokens_with_their_provenance(fitted_tokens, backbone):
    assert fitted_tokens.embeddings.shape == (5, backbone.token_width)
    assert fitted_tokens.embeddings.device.type == "cpu" and not fitted_tokens.embeddings.requires_grad
    assert fitted_tokens.model_id == backbone.model_id
    assert fitted_tokens.vocab_size == backbone.vocabulary.shape[0]
    # prompt_source="caption": the prompts are the given captions
    assert (fitted_tokens.caption_a, fitted_tokens.caption_a_prime) == (CAPTION_A, CAPTION_A_PRIME)
    assert (fitted_tokens.prompt_a, fitted_tokens.prompt_a_prime) == (CAPTION_A, CAPTION_A_PRIME)
    assert fitted_tokens.hard_token_ids is None and fitted_tokens.hard_text == ""
    assert len(fitted_tokens.history["loss"]) == 2


@pytest.mark.parametrize("mode", ["img2img", "noise"])
def test_b_prime_keeps_the_aspect_ratio_of_b(di, backbone, fitted_tokens, images, mode):
    config = fast_config(sampling_mode=mode)
    b = images["b"]  # 60 × 30
    b_prime = di.apply(fitted_tokens, b, prompt=PROMPT_B, config=config, progress=False)
    assert b_prime.mode == "RGB"
    assert b_prime.size == working_size(60, 30, backbone.native_resolution, backbone.size_multiple)
    width, height = b_prime.size
    assert width % backbone.size_multiple == 0 and height % backbone.size_multiple == 0
    assert width / height == pytest.approx(2.0, rel=backbone.size_multiple / height)
    portrait = di.apply(
        fitted_tokens, b.transpose(Image.Transpose.TRANSPOSE), prompt=PROMPT_B, config=config, progress=False
    )  # 30 × 60
    assert portrait.size == b_prime.size[::-1]


def test_resolution_option_sets_the_working_size(di, fitted_tokens, images):
    b_prime = di.apply(fitted_tokens, images["b"], prompt=PROMPT_B, config=fast_config(resolution=64), progress=False)
    assert b_prime.size == (88, 48)  # 64·√2 ≈ 90.5 → 88, 64/√2 ≈ 45.3 → 48 (multiples of 8)


@pytest.mark.parametrize("mode", ["img2img", "noise"])
def test_same_seed_same_image_different_seed_different_image(di, fitted_tokens, images, mode):
    config = fast_config(sampling_mode=mode)
    first = di.apply(fitted_tokens, images["b"], seed=1, prompt=PROMPT_B, config=config, progress=False)
    again = di.apply(fitted_tokens, images["b"], seed=1, prompt=PROMPT_B, config=config, progress=False)
    other = di.apply(fitted_tokens, images["b"], seed=2, prompt=PROMPT_B, config=config, progress=False)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_img2img_starts_from_b_and_noise_mode_does_not(di, fitted_tokens, images):
    other_b = shape_image((60, 30), "blue", "circle", seed=9)

    def draw(mode, b):
        return pixels(
            di.apply(fitted_tokens, b, seed=0, prompt=PROMPT_B, config=fast_config(sampling_mode=mode), progress=False)
        )

    assert not np.array_equal(draw("img2img", images["b"]), draw("img2img", other_b))
    assert np.array_equal(draw("noise", images["b"]), draw("noise", other_b)), "from noise, only B's size matters"


def test_the_diff_tokens_change_b_prime(di, fitted_tokens, images):
    config = fast_config(sampling_mode="noise")
    with_tokens = di.apply(fitted_tokens, images["b"], seed=0, prompt=PROMPT_B, config=config, progress=False)
    negated = dataclasses.replace(fitted_tokens, embeddings=-fitted_tokens.embeddings)
    without = di.apply(negated, images["b"], seed=0, prompt=PROMPT_B, config=config, progress=False)
    assert not np.array_equal(pixels(with_tokens), pixels(without))


def test_hard_tokens_are_vocabulary_rows(di, backbone, images):
    tokens = di.fit(
        images["a"],
        images["a_prime"],
        fast_config(steps=2, hard_tokens=True, n_tokens=3),
        captions=(CAPTION_A, CAPTION_A_PRIME),
        progress=False,
    )
    vocabulary = backbone.vocabulary.detach().float()
    assert tokens.hard_token_ids is not None and len(tokens.hard_token_ids) == 3
    assert torch.equal(tokens.embeddings, vocabulary[tokens.hard_token_ids])
    usable = usable_token_mask(backbone.tokenizer, vocabulary.shape[0], vocabulary.device)
    assert all(usable[i] for i in tokens.hard_token_ids)
    assert tokens.hard_text == backbone.tokenizer.decode(tokens.hard_token_ids)
    # every row of D̃ is some vocabulary row exactly
    for row in tokens.embeddings:
        assert (vocabulary == row).all(dim=1).any()


def test_captioner_is_used_when_captions_are_not_given(di, clip, images, monkeypatch):
    candidates = ["a photo of a red circle", "a photo of a blue circle", "a green tree", "a black cat"]
    calls = []
    captioner = ClipRetrievalCaptioner(clip, candidates)

    def counting(images_):
        calls.append(len(images_))
        return captioner(images_)

    monkeypatch.setattr(di, "captioner", counting)
    with warnings.catch_warnings():  # the random CLIP may caption A and A′ alike; that warning is tested elsewhere
        warnings.simplefilter("ignore", DiffinvWarning)
        pair = di.prepare(images["a"], images["a_prime"], fast_config())
    assert calls == [2]
    assert pair.caption_a in candidates and pair.caption_a_prime in candidates
    assert (pair.prompt_a, pair.prompt_a_prime) == (pair.caption_a, pair.caption_a_prime)
    assert pair.latents.shape[0] == 2
    assert pair.target_delta.norm().item() == pytest.approx(1.0, abs=1e-5)
    # prompt_B from the captioner too, when no prompt is given
    tokens = di.fit(
        images["a"], images["a_prime"], fast_config(steps=1), captions=(CAPTION_A, CAPTION_A_PRIME), progress=False
    )
    calls.clear()
    di.apply(tokens, images["b"], progress=False)
    assert calls == [1]


def test_explicit_prompts_override_the_captions(di, images):
    pair = di.prepare(
        images["a"], images["a_prime"], fast_config(), captions=(CAPTION_A, CAPTION_A_PRIME), prompts=("red", "blue")
    )
    assert (pair.caption_a, pair.caption_a_prime, pair.prompt_a, pair.prompt_a_prime) == (
        CAPTION_A,
        CAPTION_A_PRIME,
        "red",
        "blue",
    )


def test_pez_prompts_when_asked(di, images):
    config = fast_config(prompt_source="pez", pez_steps=2, pez_prompt_len=3)
    pair = di.prepare(images["a"], images["a_prime"], config, captions=(CAPTION_A, CAPTION_A_PRIME), progress=False)
    assert isinstance(pair.prompt_a, str) and isinstance(pair.prompt_a_prime, str)
    assert pair.prompt_a and pair.prompt_a != CAPTION_A


def test_no_captioner_and_no_captions_is_a_clear_error(di, fitted_tokens, images):
    assert di.captioner is None
    with pytest.raises(DiffinvError, match="captions"):
        di.fit(images["a"], images["a_prime"], fast_config(), progress=False)
    with pytest.raises(DiffinvError, match="captions"):
        di.apply(fitted_tokens, images["b"], progress=False)


def test_analogy_returns_b_prime_and_tokens(di, backbone, images):
    b_prime, tokens = di.analogy(
        images["a"],
        images["a_prime"],
        images["b"],
        fast_config(steps=1),
        captions=(CAPTION_A, CAPTION_A_PRIME),
        prompt_b=PROMPT_B,
        progress=False,
    )
    assert b_prime.size == working_size(60, 30, backbone.native_resolution, backbone.size_multiple)
    assert tokens.embeddings.shape == (5, backbone.token_width) and len(tokens.history["loss"]) == 1


ANALOGY_RUNS = {
    "captions-and-candidates": dict(config=dict(candidates=2), prompt_b=PROMPT_B),
    "pez-prompts": dict(config=dict(prompt_source="pez", pez_steps=2), prompt_b=None),
}


@pytest.mark.parametrize("run", ANALOGY_RUNS.values(), ids=ANALOGY_RUNS)
def test_analogy_reads_and_sizes_each_input_once(di, image_files, monkeypatch, run):
    """A, A′ and B are each opened once and brought to their working size once, however many
    steps look at them (PEZ prompts, the CLIP delta, the latents, the draw, the candidates' scores)."""
    opened, fitted = [], []
    real_open, real_fit = Image.open, ImageOps.fit
    monkeypatch.setattr(
        Image, "open", lambda fp, *args, **kwargs: opened.append(str(fp)) or real_open(fp, *args, **kwargs)
    )
    monkeypatch.setattr(
        ImageOps, "fit", lambda image, *args, **kwargs: fitted.append(image.size) or real_fit(image, *args, **kwargs)
    )
    paths = [image_files[name] for name in ("a", "a_prime", "b")]
    config = fast_config(**run["config"])
    captions = (CAPTION_A, CAPTION_A_PRIME)
    di.analogy(*paths, config, seed=1, captions=captions, prompt_b=run["prompt_b"], progress=False)
    assert sorted(opened) == sorted(paths)
    assert len(fitted) == 3


@pytest.mark.parametrize("run", ANALOGY_RUNS.values(), ids=ANALOGY_RUNS)
def test_analogy_is_fit_then_apply(di, images, image_files, run):
    """Reading each input once changes nothing: analogy on paths gives fit and apply's B′ and tokens."""
    config = fast_config(**run["config"])
    captions, prompt_b = (CAPTION_A, CAPTION_A_PRIME), run["prompt_b"]
    paths = [image_files[name] for name in ("a", "a_prime", "b")]
    b_prime, tokens = di.analogy(*paths, config, seed=1, captions=captions, prompt_b=prompt_b, progress=False)
    if prompt_b is None:  # PEZ: prompt_B as apply makes it, from the first draw of a generator seeded alike
        prompt_b = di.describe_b(images["b"], config, seed=1, progress=False)
    fitted = di.fit(images["a"], images["a_prime"], config, captions=captions, seed=1, progress=False)
    reference = (images["a"], images["a_prime"])
    drawn = di.apply(fitted, images["b"], seed=1, prompt=prompt_b, progress=False, reference=reference)
    assert torch.equal(tokens.embeddings, fitted.embeddings) and tokens.history == fitted.history
    assert np.array_equal(pixels(b_prime), pixels(drawn))


def test_image_paths_are_accepted(di, fitted_tokens, image_files):
    b_prime = di.apply(fitted_tokens, image_files["b"], prompt=PROMPT_B, progress=False)
    from_image = di.apply(fitted_tokens, Image.open(image_files["b"]), prompt=PROMPT_B, progress=False)
    assert np.array_equal(pixels(b_prime), pixels(from_image))


def test_from_pretrained_loads_a_saved_directory(tiny_model_dir, images, backbone):
    model_dir, clip_dir = tiny_model_dir
    loaded = DifferenceInversion.from_pretrained(
        model_dir, device="cpu", clip_model=clip_dir, captioner=lambda ims: ["a photo"] * len(ims)
    )
    assert loaded.backbone.model_id == model_dir
    assert loaded.backbone.token_width == 32 and loaded.backbone.dtype == torch.float32
    # the saved model is the same tiny model as the in-memory one
    for (name, ours), (_, theirs) in zip(
        backbone.text_encoder.state_dict().items(), loaded.backbone.text_encoder.state_dict().items()
    ):
        assert torch.equal(ours, theirs), name
    assert loaded.backbone.tokenizer("a red circle").input_ids == backbone.tokenizer("a red circle").input_ids


def test_from_pretrained_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DiffinvError, match="no such model directory"):
        DifferenceInversion.from_pretrained(
            str(tmp_path / "nothing-here"), device="cpu", clip_model=str(tmp_path / "nor-here")
        )


def test_fit_many_batches_same_sized_pairs_and_keeps_the_order(di, images):
    """Pairs of one working size share an optimisation; a pair of another aspect ratio gets its
    own, seeded by its own seed — so it equals a solo `fit` with that seed."""
    square = (images["a"], images["a_prime"])
    wide = (shape_image((64, 32), "red", seed=5), shape_image((64, 32), "blue", seed=6))
    captions = [
        (CAPTION_A, CAPTION_A_PRIME),
        (CAPTION_A, CAPTION_A_PRIME),
        ("a photo of a red square", CAPTION_A_PRIME),
    ]
    config = fast_config(steps=3)
    tokens = di.fit_many([square, wide, square[::-1]], config, captions=captions, seeds=[0, 1, 2], progress=False)
    assert [t.caption_a for t in tokens] == [c[0] for c in captions]
    assert all(t.embeddings.shape == (config.n_tokens, di.backbone.token_width) for t in tokens)
    solo = di.fit(*wide, config, captions=captions[1], seed=1, progress=False)
    assert torch.equal(tokens[1].embeddings, solo.embeddings)
    assert not torch.allclose(tokens[0].embeddings, tokens[2].embeddings)  # A → A′ and A′ → A differ
    with pytest.raises(DiffinvError, match="one seed"):
        di.fit_many([square], config, captions=captions, progress=False)


def test_the_b_context_loss_fits_for_bs_prompt_and_draws_with_it(di, images):
    config = fast_config(steps=2, lambda_clip_b=6.0)
    captions = (CAPTION_A, CAPTION_A_PRIME)
    with pytest.raises(DiffinvError, match="needs its prompt"):
        di.fit(images["a"], images["a_prime"], config, captions=captions, progress=False)
    b_prime, tokens = di.analogy(
        images["a"], images["a_prime"], images["b"], config, captions=captions, prompt_b=PROMPT_B, progress=False
    )
    fitted = di.fit(images["a"], images["a_prime"], config, captions=captions, prompt_b=PROMPT_B, progress=False)
    assert torch.equal(tokens.embeddings, fitted.embeddings)
    other = di.fit(
        images["a"], images["a_prime"], config, captions=captions, prompt_b="a big red circle", progress=False
    )
    assert not torch.equal(other.embeddings, fitted.embeddings)
    drawn = di.apply(fitted, images["b"], prompt=PROMPT_B, config=config, progress=False)
    assert np.array_equal(pixels(b_prime), pixels(drawn))
