"""The baselines (SDEdit*, InstructPix2Pix*, VISII) on tiny random pipelines of the real classes:
output sizes and seeds, the UNet calls they cost, VISII's learning, bad input, and loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
)

from conftest import shape_image
from diffinv.baselines import (
    Cost,
    InstructPix2Pix,
    InstructPix2PixConfig,
    SDEdit,
    SDEditConfig,
    Visii,
    VisiiConfig,
    VisiiInstruction,
)
from diffinv.baselines.base import working_image
from diffinv.errors import DiffinvError
from diffinv.images import fit_to, working_size
from diffinv.method import METHODS, Method
from diffinv.pez import invert_prompt
from diffinv.testing import tiny_clip_for, tiny_instruct_pix2pix, tiny_pipeline, unet_batches

# Step counts a CPU test can afford; everything else as published.
FAST_SDEDIT = SDEditConfig(steps=10)
FAST_IP2P = InstructPix2PixConfig(steps=4)
FAST_VISII = VisiiConfig(steps=3, pez_steps=3, pez_prompt_len=4, sample_steps=3)
PROMPT = "a photo of a blue square"
INSTRUCTION = "make it blue"
INIT_PROMPT = "a blue circle"


@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def ip2p_pipe(sd_pipe):
    return tiny_instruct_pix2pix(sd_pipe)


@pytest.fixture(scope="module")
def clip(sd_pipe):
    return tiny_clip_for(sd_pipe)  # its text tower is a copy of the (shared) text encoder


MINE = ("sdedit", "instructpix2pix", "visii")  # the baselines of this file (Analogist, DIA: test_baselines_analogy)


def make(method: str, sd_pipe, ip2p_pipe, clip, **changes):
    """(baseline, its method inputs) with the fast config plus `changes`."""
    if method == "sdedit":
        return SDEdit(sd_pipe, dataclasses.replace(FAST_SDEDIT, **changes)), {"text": PROMPT}
    if method == "instructpix2pix":
        return InstructPix2Pix(ip2p_pipe, dataclasses.replace(FAST_IP2P, **changes)), {"text": INSTRUCTION}
    if method == "visii":
        return Visii(ip2p_pipe, clip, config=dataclasses.replace(FAST_VISII, **changes)), {}
    raise ValueError(f"not a baseline of this file: {method}")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def parameters(*modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": p for i, m in enumerate(modules) for name, p in m.named_parameters()}


# --- the shared call shape and the costs ----------------------------------------------------------


def test_published_defaults_and_their_costs():
    sdedit, ip2p, visii = SDEditConfig(), InstructPix2PixConfig(), VisiiConfig()
    assert (sdedit.strength, sdedit.steps, sdedit.guidance_scale, sdedit.eta) == (0.8, 50, 7.5, 0.0)
    assert sdedit.cost() == Cost(sample_calls=40, sample_batch=2)
    assert (ip2p.steps, ip2p.guidance_scale, ip2p.image_guidance_scale) == (100, 7.5, 1.2)
    assert ip2p.cost() == Cost(sample_calls=100, sample_batch=3)
    assert (visii.steps, visii.learning_rate, visii.lambda_mse, visii.lambda_clip) == (1000, 1e-3, 4.0, 0.1)
    assert (visii.sample_steps, visii.guidance_scale, visii.image_guidance_scale) == (20, 8.0, 1.5)
    assert (visii.pez_prompt_len, visii.pez_steps, visii.pez_lr, visii.pez_weight_decay) == (10, 3000, 0.1, 0.1)
    cost = visii.cost()
    assert (cost.fit_calls, cost.fit_batch, cost.sample_calls, cost.sample_batch) == (1000, 3, 20, 3)
    assert cost.unet_calls == 1020 and cost.latent_passes == 20 * 3 + 3 * 1000 * 3
    assert "PEZ" in str(cost)
    assert SDEditConfig(guidance_scale=1.0).cost().sample_batch == 1  # no guidance, no unconditional branch


def test_every_baseline_has_the_shared_call_shape(sd_pipe, ip2p_pipe, clip):
    for name in MINE:
        method, _ = make(name, sd_pipe, ip2p_pipe, clip)
        assert isinstance(method, Method) and isinstance(method, METHODS[name].load())
        assert method.cost() == method.config.cost() and isinstance(method.config, method.config_class)
    assert [make(n, sd_pipe, ip2p_pipe, clip)[0].uses_text for n in MINE] == [True, True, False]
    assert [make(n, sd_pipe, ip2p_pipe, clip)[0].needs_text for n in MINE] == ["b_prime", "instruction", None]


@pytest.mark.parametrize(
    "method, changes",
    [
        ("sdedit", dict(strength=0.5)),
        ("sdedit", dict(strength=0.3)),  # 10 × 0.3 = 3.0000000000000004 → 3
        ("sdedit", dict(strength=0.57, steps=100)),  # 56.99999999999999 → 56, as diffusers counts
        ("sdedit", dict(guidance_scale=1.0)),
        ("instructpix2pix", {}),
        ("visii", {}),
        ("visii", dict(train_guidance_scale=1.0, image_guidance_scale=0.5)),
    ],
)
def test_unet_calls_are_what_the_cost_says(sd_pipe, ip2p_pipe, clip, images, method, changes):
    baseline, inputs = make(method, sd_pipe, ip2p_pipe, clip, **changes)
    if method == "visii":
        inputs = {"prompt": INIT_PROMPT}  # PEZ costs no UNet call
    with unet_batches(baseline.pipe.unet) as batches:
        baseline.analogy(images["a"], images["a_prime"], images["b"], progress=False, **inputs)
    cost = baseline.cost()
    assert len(batches) == cost.unet_calls
    assert batches == [cost.fit_batch] * cost.fit_calls + [cost.sample_batch] * cost.sample_calls


# --- outputs and seeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", MINE)
def test_b_prime_has_the_working_size_of_b_and_seeds_fix_it(sd_pipe, ip2p_pipe, clip, images, method):
    baseline, inputs = make(method, sd_pipe, ip2p_pipe, clip)
    draw = lambda seed: baseline.analogy(
        images["a"], images["a_prime"], images["b"], seed=seed, progress=False, **inputs
    )
    first, again, other = draw(0), draw(0), draw(1)
    assert first.mode == "RGB"
    assert first.size == working_size(60, 30, 32, 8) == (48, 24)  # B is 60 × 30; the tiny UNet's native side is 32
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_the_callers_pipeline_keeps_its_scheduler(sd_pipe, ip2p_pipe, clip):
    sdedit, ip2p, visii = (make(n, sd_pipe, ip2p_pipe, clip)[0] for n in MINE)
    assert isinstance(sd_pipe.scheduler, DDIMScheduler) and isinstance(ip2p_pipe.scheduler, DDIMScheduler)
    assert isinstance(sdedit.pipe.scheduler, DDIMScheduler)
    assert isinstance(ip2p.pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert isinstance(visii.pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert ip2p.pipe.unet is ip2p_pipe.unet and visii.pipe.text_encoder is ip2p_pipe.text_encoder


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_class, changes",
    [
        (SDEditConfig, dict(strength=0.0)),
        (SDEditConfig, dict(strength=1.5)),
        (SDEditConfig, dict(strength="0.5")),
        (SDEditConfig, dict(strength=0.01)),  # 50 × 0.01 → no denoising step at all
        (SDEditConfig, dict(steps=0)),
        (SDEditConfig, dict(guidance_scale=-1.0)),
        (SDEditConfig, dict(eta=2.0)),
        (SDEditConfig, dict(resolution=0)),
        (InstructPix2PixConfig, dict(steps=2.5)),
        (InstructPix2PixConfig, dict(image_guidance_scale=-1.0)),
        (InstructPix2PixConfig, dict(guidance_scale=float("nan"))),
        (VisiiConfig, dict(steps=0)),
        (VisiiConfig, dict(learning_rate=0.0)),
        (VisiiConfig, dict(lambda_clip=-0.1)),
        (VisiiConfig, dict(clip_similarity_cap=2.0)),
        (VisiiConfig, dict(keep="first")),
        (VisiiConfig, dict(learn="words")),
        (VisiiConfig, dict(pez_prompt_len=0)),
        (VisiiConfig, dict(sample_steps=0)),
        (VisiiConfig, dict(gradient_scale=0.0)),
    ],
)
def test_invalid_hyperparameters_are_refused(config_class, changes):
    with pytest.raises(DiffinvError):
        config_class(**changes)


@pytest.mark.parametrize("method", MINE)
def test_bad_inputs_are_refused_with_one_message(sd_pipe, ip2p_pipe, clip, images, method):
    baseline, inputs = make(method, sd_pipe, ip2p_pipe, clip)
    too_large, _ = make(method, sd_pipe, ip2p_pipe, clip, resolution=1000)  # > 2 × the native 32
    a, a_prime, b = images["a"], images["a_prime"], images["b"]
    with unet_batches(baseline.pipe.unet) as batches:  # all refused before any work (VISII: before its fit)
        for seed in (-1, "1", 2**63):
            with pytest.raises(DiffinvError, match="seed"):
                baseline.analogy(a, a_prime, b, seed=seed, progress=False, **inputs)
        with pytest.raises(DiffinvError, match="too small"):
            baseline.analogy(a, a_prime, shape_image((8, 8), "red"), progress=False, **inputs)
        with pytest.raises(DiffinvError, match="no such file"):
            baseline.analogy(a, "missing.png", b, progress=False, **inputs)
        with pytest.raises(DiffinvError, match="resolution"):
            too_large.analogy(a, a_prime, b, progress=False, **inputs)
    assert batches == []


def test_text_baselines_need_their_text(sd_pipe, ip2p_pipe, clip, images):
    a, a_prime, b = images["a"], images["a_prime"], images["b"]
    sdedit, ip2p = make("sdedit", sd_pipe, ip2p_pipe, clip)[0], make("instructpix2pix", sd_pipe, ip2p_pipe, clip)[0]
    for text in (None, "", "   "):
        with pytest.raises(DiffinvError, match="prompt"):
            sdedit.analogy(a, a_prime, b, text=text, progress=False)
        with pytest.raises(DiffinvError, match="instruction"):
            ip2p.analogy(a, a_prime, b, text=text, progress=False)


def test_a_model_of_the_wrong_kind_is_refused(sd_pipe, ip2p_pipe, clip):
    with pytest.raises(DiffinvError, match="text-to-image"):
        SDEdit(ip2p_pipe)
    with pytest.raises(DiffinvError, match="InstructPix2Pix"):
        InstructPix2Pix(sd_pipe)
    with pytest.raises(DiffinvError, match="InstructPix2Pix"):
        Visii(sd_pipe, clip)
    wide_clip = tiny_clip_for(tiny_pipeline(width=48))
    with pytest.raises(DiffinvError, match="text projection"):
        Visii(ip2p_pipe, wide_clip)


# --- VISII's learning ----------------------------------------------------------------------------


@pytest.mark.parametrize("learn", ["states", "tokens"])
def test_visii_starts_from_the_pez_prompt_of_a_prime(sd_pipe, ip2p_pipe, clip, images, learn):
    visii = Visii(ip2p_pipe, clip, config=dataclasses.replace(FAST_VISII, learn=learn))
    pair = visii.prepare(images["a"], images["a_prime"], seed=3, progress=False)

    a = working_image(images["a"], ip2p_pipe, None)
    expected = invert_prompt(
        clip, [fit_to(images["a_prime"], a.size)], 4, 3, 0.1, 0.1, torch.Generator().manual_seed(3)
    )
    assert pair.prompt == expected.strip()
    tokenizer, encoder = ip2p_pipe.tokenizer, ip2p_pipe.text_encoder
    words = tokenizer(pair.prompt, add_special_tokens=False).input_ids
    assert pair.ids[0, pair.slot_mask[0]].tolist() == words and pair.slot_mask[0, 1 : 1 + len(words)].all()
    plain = tokenizer(pair.prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        plain_states = encoder(plain.input_ids).last_hidden_state
        start = visii.states(pair, pair.initial)
    if learn == "tokens":
        assert torch.equal(pair.initial, encoder.get_input_embeddings().weight[words].float())
    else:
        assert torch.allclose(pair.initial, plain_states[0, 1 : 1 + len(words)])
    torch.testing.assert_close(start, plain_states)  # the instruction starts as the PEZ prompt, exactly


@pytest.mark.parametrize("learn", ["states", "tokens"])
def test_visii_learns_only_the_instruction(sd_pipe, ip2p_pipe, clip, images, learn):
    visii = Visii(ip2p_pipe, clip, config=dataclasses.replace(FAST_VISII, learn=learn, learning_rate=1e-2))
    frozen = parameters(ip2p_pipe.unet, ip2p_pipe.vae, ip2p_pipe.text_encoder, clip.model)
    before = {name: p.detach().clone() for name, p in frozen.items()}
    pair = visii.prepare(images["a"], images["a_prime"], prompt=INIT_PROMPT)
    instruction = visii.fit(images["a"], images["a_prime"], prompt=INIT_PROMPT, progress=False)

    assert all(p.grad is None and not p.requires_grad for p in frozen.values())
    assert all(torch.equal(p, before[name]) for name, p in frozen.items())
    k = len(instruction.token_ids)
    assert instruction.learned.shape == pair.initial.shape == (k, 32)
    assert not torch.allclose(instruction.learned, pair.initial)
    # only the prompt's positions change: <bos> and everything from <eos> on stay as encoded
    torch.testing.assert_close(instruction.states[:, 0], pair.prompt_states[:, 0])
    if learn == "states":
        torch.testing.assert_close(instruction.states[:, 1 + k :], pair.prompt_states[:, 1 + k :])


def test_visii_loss_decreases_and_the_best_step_is_kept(ip2p_pipe, clip, images):
    config = dataclasses.replace(FAST_VISII, steps=25, learning_rate=3e-2, keep="last")
    visii = Visii(ip2p_pipe, clip, config=config)
    a, a_prime = images["a"], images["a_prime"]
    pair = visii.prepare(a, a_prime, prompt=INIT_PROMPT)
    generator = torch.Generator().manual_seed(7)
    draws = [(t, torch.randn(pair.target_latents.shape, generator=generator)) for t in range(50, 1000, 100)]
    objective = lambda learned: (
        sum(float(visii.loss(pair, learned, t, noise).total) for t, noise in draws) / len(draws)
    )

    last = visii.fit(a, a_prime, prompt=INIT_PROMPT, progress=False)
    with torch.no_grad():
        assert objective(last.learned) < objective(pair.initial) - 0.05
    assert last.kept_step == config.steps - 1 and len(last.history["loss"]) == config.steps

    # keep="best" over the first 10 of those steps (the learning rate is constant and the draws come in
    # the same order, so a shorter run is the same run's beginning)
    best = Visii(ip2p_pipe, clip, config=dataclasses.replace(config, keep="best", steps=10)).fit(
        a, a_prime, prompt=INIT_PROMPT, progress=False
    )
    mse = best.history["mse"]
    assert mse == last.history["mse"][:10]  # same seed, same run
    assert best.kept_step == max(i for i, value in enumerate(mse) if value == min(mse))


def test_visii_clip_loss_turns_the_instruction_towards_the_edit_direction(ip2p_pipe, clip, images):
    config = dataclasses.replace(FAST_VISII, steps=10, learning_rate=0.3, lambda_mse=0.0, lambda_clip=1.0)
    instruction = Visii(ip2p_pipe, clip, config=config).fit(
        images["a"], images["a_prime"], prompt=INIT_PROMPT, progress=False
    )
    similarity = instruction.history["clip_similarity"]
    assert len(similarity) == 10 and similarity[-1] > similarity[0] + 0.05
    assert all(later > earlier for earlier, later in zip(similarity, similarity[1:]))
    no_clip = Visii(ip2p_pipe, clip, config=dataclasses.replace(config, clip_loss=False)).prepare(
        images["a"], images["a_prime"], prompt=INIT_PROMPT
    )
    assert no_clip.direction is None


def test_visii_refuses_an_instruction_of_another_model(ip2p_pipe, clip, images):
    visii = Visii(ip2p_pipe, clip, config=FAST_VISII)
    foreign = VisiiInstruction("x", [1], torch.zeros(1, 48), torch.zeros(1, 77, 48), "states", 0)
    with pytest.raises(DiffinvError, match="another model"):
        visii.apply(foreign, images["b"], progress=False)


# --- loading -------------------------------------------------------------------------------------


def test_from_pretrained_loads_saved_directories_and_runs(tmp_path, sd_pipe, ip2p_pipe, clip, images):
    sd_dir, ip2p_dir, clip_dir = tmp_path / "sd", tmp_path / "ip2p", tmp_path / "clip"
    sd_pipe.save_pretrained(sd_dir)
    ip2p_pipe.save_pretrained(ip2p_dir)
    clip.model.save_pretrained(clip_dir)
    clip.tokenizer.save_pretrained(clip_dir)
    a, a_prime, b = images["a"], images["a_prime"], images["b"]
    common = dict(device="cpu", offline=True)

    loaded = SDEdit.from_pretrained(str(sd_dir), config=FAST_SDEDIT, **common)
    assert np.array_equal(
        pixels(loaded.analogy(a, a_prime, b, text=PROMPT, progress=False)),
        pixels(SDEdit(sd_pipe, FAST_SDEDIT).analogy(a, a_prime, b, text=PROMPT, progress=False)),
    )
    ip2p = InstructPix2Pix.from_pretrained(str(ip2p_dir), dtype="float32", config=FAST_IP2P, **common)
    assert ip2p.analogy(a, a_prime, b, text=INSTRUCTION, progress=False).size == (48, 24)
    visii = Visii.from_pretrained(
        str(ip2p_dir), config=FAST_VISII, clip_model=str(clip_dir), pez_clip_model=None, **common
    )
    assert visii.pez_clip is visii.clip
    assert visii.analogy(a, a_prime, b, progress=False).size == (48, 24)

    with pytest.raises(DiffinvError, match="InstructPix2Pix"):
        InstructPix2Pix.from_pretrained(str(sd_dir), **common)  # a text-to-image model
    with pytest.raises(DiffinvError, match="no such model directory"):
        SDEdit.from_pretrained(str(tmp_path / "missing"), **common)
    with pytest.raises(DiffinvError, match="no such model directory"):
        Visii.from_pretrained(str(tmp_path / "missing"), **common)
    with pytest.raises(DiffinvError, match="no default CLIP"):
        Visii.from_pretrained(str(ip2p_dir), **common)  # a 32-wide encoder has no published CLIP
