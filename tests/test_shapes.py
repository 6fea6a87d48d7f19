"""The shapes world: scenes, captions, ground-truth triplets, and the bundled model."""

import random

import numpy as np
import pytest

from diffinv.shapes import MODEL_DIR
from diffinv.shapes.world import (
    ATTRIBUTES,
    FAMILIES,
    all_scenes,
    canonical_caption,
    caption_variants,
    make_triplet,
    random_scene,
    render,
    triplets,
    vocabulary_words,
)
from diffinv.word_tokenizer import word_tokenizer

bundled = pytest.mark.skipif(
    not (MODEL_DIR / "unet" / "config.json").exists(), reason="shapes-world weights not bundled"
)


def test_every_combination_of_attributes_is_a_scene():
    scenes = all_scenes()
    assert len(scenes) == np.prod([len(v) for v in ATTRIBUTES.values()])
    assert len({canonical_caption(s) for s in scenes}) == len(scenes)


def test_render_is_deterministic_and_attributes_show():
    scene = random_scene(random.Random(3))
    assert np.array_equal(np.asarray(render(scene)), np.asarray(render(scene)))
    picture = np.asarray(render(scene.with_("dot", False)), dtype=int)
    dotted = np.asarray(render(scene.with_("dot", True)), dtype=int)
    assert picture.shape == (32, 32, 3)
    assert np.abs(picture - dotted).sum() > 0  # the dot changes pixels
    other = "black" if scene.background != "black" else "white"
    assert np.abs(picture - np.asarray(render(scene.with_("background", other)), dtype=int)).mean() > 20


def test_render_is_anti_aliased():
    values = {tuple(p) for p in np.asarray(render(all_scenes()[0])).reshape(-1, 3)}
    assert len(values) > 2  # edge pixels mix shape and background


@pytest.mark.parametrize("scene", all_scenes()[::37])
def test_caption_variants_name_every_attribute(scene):
    for text in caption_variants(scene):
        assert scene.shape in text and scene.colour in text and scene.background in text
        assert ("dot" in text) == scene.dot
    assert caption_variants(scene)[0] == canonical_caption(scene)
    assert len(set(caption_variants(scene))) == len(caption_variants(scene)) > 5


def test_world_words_are_single_tokens():
    tokenizer = word_tokenizer(vocabulary_words(), max_length=32)
    for word in vocabulary_words():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_triplets_have_the_right_ground_truth(family):
    rng = random.Random(family)
    for _ in range(20):
        t = make_triplet(family, rng)
        assert getattr(t.a, family) != getattr(t.a_prime, family)
        assert getattr(t.b, family) == getattr(t.a, family)  # B shares A's source value
        assert getattr(t.b_prime, family) == getattr(t.a_prime, family)
        for other in ATTRIBUTES:
            if other != family:
                assert getattr(t.a_prime, other) == getattr(t.a, other)
                assert getattr(t.b_prime, other) == getattr(t.b, other)
        assert (t.b.dx, t.b.dy) == (t.b_prime.dx, t.b_prime.dy)
        assert any(getattr(t.b, k) != getattr(t.a, k) for k in ATTRIBUTES if k != family)


def test_triplets_are_seeded():
    assert triplets(10, seed=5) == triplets(10, seed=5)
    assert triplets(10, seed=5) != triplets(10, seed=6)
    assert [t.family for t in triplets(10)] == list(FAMILIES) * 2


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown family"):
        make_triplet("texture", random.Random(0))


@bundled
def test_bundled_world_loads_offline_and_runs_an_analogy():
    from diffinv import DifferenceInversion

    di = DifferenceInversion.from_pretrained("shapes", device="cpu")
    t = triplets(1, seed=0)[0]
    tokens = di.fit(render(t.a), render(t.a_prime), di.default_config.replace(steps=3), progress=False)
    assert tokens.model_id == "shapes"
    assert tokens.caption_a in {canonical_caption(s) for s in all_scenes()}  # CLIP retrieval
    b_prime = di.apply(tokens, render(t.b), progress=False)
    assert b_prime.size == (32, 32)


def test_score_separates_edit_from_preservation():
    from diffinv.shapes.evaluate import score

    t = make_triplet("colour", random.Random(1))
    truth = t.b_prime.attributes
    assert score(truth, t) == {"edit": 1.0, "preserved": 1.0, "correct": 1.0}
    assert score(t.b.attributes, t) == {"edit": 0.0, "preserved": 1.0, "correct": 0.0}  # copy-B
    wrong_size = dict(truth, size="small" if truth["size"] == "large" else "large")
    assert score(wrong_size, t) == {"edit": 1.0, "preserved": 0.0, "correct": 0.0}


@bundled
def test_bundle_stays_small_and_holds_no_training_leftovers():
    sizes = {
        path.relative_to(MODEL_DIR).as_posix(): path.stat().st_size for path in MODEL_DIR.rglob("*") if path.is_file()
    }
    assert max(sizes.values()) <= 20_000_000, max(sizes, key=sizes.get)
    assert sum(sizes.values()) <= 45_000_000
    assert not [name for name in sizes if name.endswith(("-partial.safetensors", ".lock"))]


@bundled
def test_bundled_editor_and_inpainting_model_load_offline_by_their_diffusers_classes():
    import json

    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionInstructPix2PixPipeline

    bench = json.loads((MODEL_DIR / "diffinv.json").read_text())["bench"]
    for role, pipeline_class, in_channels in (
        ("editor", StableDiffusionInstructPix2PixPipeline, 8),  # noisy latent + B's latent
        ("inpainting", StableDiffusionInpaintPipeline, 9),  # noisy latent + mask + masked picture's latent
    ):
        pipeline = pipeline_class.from_pretrained(MODEL_DIR / bench[role], local_files_only=True)
        assert pipeline.unet.config.in_channels == in_channels, role


@bundled
@pytest.mark.slow
def test_bundled_world_passes_its_gates():
    from diffinv.shapes.evaluate import check

    gates = check()
    assert all(gate.passed for gate in gates), [(g.name, g.value) for g in gates]
