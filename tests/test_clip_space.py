"""CLIP's joint space: slerp (eq. 5) against hand-computed values, deltas, step ② of Algorithm 1,
and the differentiable slot features the text-tower CLIP loss and PEZ rest on."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import CAPTION_A, CAPTION_A_PRIME
from diffinv.clip_space import default_clip_for, delta, slerp
from diffinv.errors import DiffinvError, DiffinvWarning
from diffinv.inversion import MIN_TEXT_DELTA_NORM, interpolated_delta


def angle_between(u: torch.Tensor, v: torch.Tensor) -> float:
    cosine = F.cosine_similarity(u.float().reshape(1, -1), v.float().reshape(1, -1)).item()
    return math.acos(max(-1.0, min(1.0, cosine)))


def unit(*values) -> torch.Tensor:
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def closed_form(u: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    theta = math.acos(float(u @ v))
    return (math.sin((1 - alpha) * theta) * u + math.sin(alpha * theta) * v) / math.sin(theta)


def test_orthogonal_unit_vectors_at_half():
    u, v = unit(1, 0, 0), unit(0, 1, 0)
    expected = (u + v) / math.sqrt(2)
    assert torch.allclose(slerp(u, v, 0.5), expected, atol=1e-6)


def test_sixty_degrees_at_a_quarter_matches_closed_form():
    u = unit(1, 0, 0)
    v = unit(math.cos(math.pi / 3), math.sin(math.pi / 3), 0)
    result = slerp(u, v, 0.25)
    assert torch.allclose(result, closed_form(u, v, 0.25), atol=1e-6)
    # on the great circle, a quarter of the way: 15° from u
    assert torch.allclose(result, unit(math.cos(math.pi / 12), math.sin(math.pi / 12), 0), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.8, 0.9])
def test_random_directions_match_closed_form_and_angle_splits(alpha):
    generator = torch.Generator().manual_seed(int(alpha * 100))
    u = F.normalize(torch.randn(32, generator=generator), dim=0)
    v = F.normalize(torch.randn(32, generator=generator), dim=0)
    result = slerp(u, v, alpha)
    assert torch.allclose(result, closed_form(u, v, alpha), atol=1e-5)
    theta = angle_between(u, v)
    assert angle_between(u, result) == pytest.approx(alpha * theta, abs=1e-3)
    assert angle_between(result, v) == pytest.approx((1 - alpha) * theta, abs=1e-3)


def test_endpoints_are_the_normalised_deltas():
    image_delta = torch.tensor([3.0, 0.0, 4.0, 0.0])
    text_delta = torch.tensor([0.0, -2.0, 1.0, 7.0])
    assert torch.allclose(slerp(image_delta, text_delta, 0.0), image_delta / 5.0, atol=1e-6)
    assert torch.allclose(slerp(image_delta, text_delta, 1.0), F.normalize(text_delta, dim=0), atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0])
def test_result_is_unit_norm_whatever_the_input_lengths(alpha):
    generator = torch.Generator().manual_seed(3)
    result = slerp(17.0 * torch.randn(64, generator=generator), 0.01 * torch.randn(64, generator=generator), alpha)
    assert result.norm().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_parallel_inputs_fall_back_without_nan(alpha):
    u = torch.tensor([0.6, 0.8, 0.0])
    for v in (2.5 * u, u + 1e-8 * torch.tensor([0.0, 0.0, 1.0])):
        result = slerp(u, v, alpha)
        assert torch.isfinite(result).all()
        assert torch.allclose(result, u, atol=1e-5)


def test_delta_is_after_minus_before_flattened():
    before, after = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.5, 1.0, 3.0]])
    assert torch.equal(delta(before, after), torch.tensor([0.5, -1.0, 0.0]))


def test_default_clip_for_known_and_unknown_widths():
    assert default_clip_for(768) == "openai/clip-vit-large-patch14"
    assert "ViT-H-14" in default_clip_for(1024)
    with pytest.raises(DiffinvError, match="--clip-model"):
        default_clip_for(32)


def test_features_are_normalised(clip, images):
    image = clip.image_features([images["a"], images["b"]])
    text = clip.text_features([CAPTION_A, CAPTION_A_PRIME, ""])
    assert image.shape == (2, clip.joint_width) and text.shape == (3, clip.joint_width)
    assert torch.allclose(image.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(text[0], text[1]), "different captions, different features"


def test_interpolated_delta_endpoints(clip, images):
    a, a_prime = images["a"], images["a_prime"]
    image = clip.image_features([a, a_prime])
    text = clip.text_features([CAPTION_A, CAPTION_A_PRIME])
    image_direction = F.normalize(image[1] - image[0], dim=0)
    text_direction = F.normalize(text[1] - text[0], dim=0)
    text_norm = (text[1] - text[0]).norm().item()
    at_zero = interpolated_delta(clip, a, a_prime, CAPTION_A, CAPTION_A_PRIME, 0.0)
    assert torch.allclose(at_zero.target_delta, image_direction, atol=1e-5)
    assert at_zero.text_delta_norm is None and at_zero.effective_alpha == 0.0, "α = 0 needs no text delta"
    at_one = interpolated_delta(clip, a, a_prime, CAPTION_A, CAPTION_A_PRIME, 1.0)
    assert torch.allclose(at_one.target_delta, text_direction, atol=1e-5)
    middle = interpolated_delta(clip, a, a_prime, CAPTION_A, CAPTION_A_PRIME, 0.8)
    assert torch.allclose(middle.target_delta, closed_form(image_direction, text_direction, 0.8), atol=1e-4)
    assert middle.text_delta_norm == pytest.approx(text_norm, rel=1e-5) and middle.effective_alpha == 0.8
    assert text_norm > 5 * MIN_TEXT_DELTA_NORM, "one word apart is far above the threshold, even in a random CLIP"


def test_identical_captions_fall_back_to_the_image_delta_with_a_warning(clip, images):
    a, a_prime = images["a"], images["a_prime"]
    image = clip.image_features([a, a_prime])
    with pytest.warns(DiffinvWarning, match=r"'a photo of a red circle'.*image delta alone.*α = 0\.8"):
        result = interpolated_delta(clip, a, a_prime, CAPTION_A, CAPTION_A, 0.8)
    assert torch.allclose(result.target_delta, F.normalize(image[1] - image[0], dim=0), atol=1e-5)
    assert result.text_delta_norm == 0.0 and result.effective_alpha == 0.0


@pytest.mark.parametrize("norm, degenerate", [(1e-4, True), (0.5 * MIN_TEXT_DELTA_NORM, True), (0.1, False)])
def test_a_near_zero_text_delta_gets_no_weight(clip, images, monkeypatch, norm, degenerate):
    """Normalising a text delta of rounding-noise size would give noise full weight α in D_inter."""
    a, a_prime = images["a"], images["a_prime"]
    image = clip.image_features([a, a_prime])
    image_direction = F.normalize(image[1] - image[0], dim=0)
    base = F.normalize(torch.randn(clip.joint_width, generator=torch.Generator().manual_seed(0)), dim=0)
    step = F.normalize(torch.randn(clip.joint_width, generator=torch.Generator().manual_seed(1)), dim=0)
    monkeypatch.setattr(clip, "text_features", lambda texts: torch.stack([base, base + norm * step]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = interpolated_delta(clip, a, a_prime, "a cat", "a cat.", 0.8)
    assert result.text_delta_norm == pytest.approx(norm, rel=1e-4)
    assert [str(w.message).count("'a cat.'") for w in caught] == ([1] if degenerate else [])
    if degenerate:
        assert result.effective_alpha == 0.0
        assert torch.allclose(result.target_delta, image_direction, atol=1e-5)
    else:
        assert result.effective_alpha == 0.8
        assert torch.allclose(result.target_delta, closed_form(image_direction, step, 0.8), atol=1e-4)


def test_slot_features_equal_text_features_for_real_tokens_and_are_differentiable(clip):
    ids = clip.tokenizer(CAPTION_A, add_special_tokens=False).input_ids
    rows = clip.vocabulary[ids].detach().clone().unsqueeze(0).requires_grad_(True)
    features = clip.slot_features(rows)
    # "<bos> e_1 … e_k <eos>" with e_i the caption's own embeddings is the caption itself
    assert torch.allclose(features, clip.text_features([CAPTION_A]), atol=1e-5)
    features.sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    assert clip.vocabulary.grad is None


def test_slerp_of_opposite_directions_returns_the_nearer_endpoint():
    u = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(slerp(u, -u, 0.3), u)
    assert torch.allclose(slerp(u, -u, 0.7), -u)
    assert torch.isclose(slerp(u, -u, 0.5).norm(), torch.tensor(1.0))
