"""Analogist and DIA on tiny random pipelines of the real classes: the grid and its mask, the
attention control (installed, effective, restored), DIA's inversions, output sizes and seeds,
the UNet calls they cost, bad input, and loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from PIL import Image

from conftest import shape_image
from diffinv.baselines import (
    Analogist,
    AnalogistAttnProcessor,
    AnalogistConfig,
    Cost,
    Dia,
    DiaConfig,
    DiaCost,
)
from diffinv.baselines.analogist import (
    ADDED_PROMPT,
    NEGATIVE_PROMPT,
    cell_positions,
    clone_self_attention,
    grid_layout,
    make_grid,
    mask_cross_attention,
    transformer_blocks,
)
from diffinv.baselines.dia import random_views, square_padded
from diffinv.errors import DiffinvError
from diffinv.images import working_size
from diffinv.method import METHODS, Method
from diffinv.testing import tiny_inpainting, tiny_pipeline, unet_batches

PROMPT = "a photo of a blue square"
# Step counts a CPU test can afford; everything else as published. The tiny UNet has 4
# transformer blocks (down 16², mid 8², up 16² × 2): control all of them.
FAST_ANALOGIST = AnalogistConfig(steps=10, sac_layers=(0, 4), cam_layers=(0, 4))
FAST_DIA = DiaConfig(steps=2, token_steps=2, views=2, noise_steps=2, lbfgs_iterations=2, sufficient_loss=0.0)
B_SIZE = working_size(60, 30, 32, 8)  # B is 60 × 30; the tiny models' native side is 32


@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def inpaint_pipe(sd_pipe):
    return tiny_inpainting(sd_pipe)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def analogist(inpaint_pipe, **changes) -> Analogist:
    return Analogist(inpaint_pipe, dataclasses.replace(FAST_ANALOGIST, **changes))


def dia(sd_pipe, **changes) -> Dia:
    return Dia(sd_pipe, dataclasses.replace(FAST_DIA, **changes))


def run(method, images, seed=0, **inputs):
    if isinstance(method, Analogist):
        inputs.setdefault("text", PROMPT)
    return method.analogy(images["a"], images["a_prime"], images["b"], seed=seed, progress=False, **inputs)


# --- published settings, costs, the registry --------------------------------------------------------


def test_published_defaults_and_their_costs():
    c = AnalogistConfig()
    assert (c.steps, c.strength, c.guidance_scale, c.eta, c.sac_scale) == (50, 0.98, 15.0, 0.0, 1.3)
    assert (c.sac_layers, c.cam_layers, c.control_steps, c.gutter) == ((3, 11), (3, 11), (0, 50), 2)
    assert (
        c.negative_prompt == NEGATIVE_PROMPT and c.added_prompt == ADDED_PROMPT == "best quality, extremely detailed"
    )
    assert c.cost() == Cost(sample_calls=49, sample_batch=2)  # int(50 × 0.98)
    assert AnalogistConfig(guidance_scale=1.0, strength=1.0).cost() == Cost(sample_calls=50, sample_batch=1)

    d = DiaConfig()
    assert (d.steps, d.token_steps, d.token_lr, d.learned_tokens, d.views) == (10, 10, 0.01, 10, 8)
    assert (d.noise_steps, d.noise_lr, d.lbfgs_iterations, d.sufficient_loss) == (10, 0.1, 20, 0.0008)
    assert (d.crop_scale, d.latent_weight, d.pixel_weight, d.token_weight_decay) == ((0.85, 0.99), 1.0, 1.0, 0.01)
    cost = d.cost()
    assert isinstance(cost, DiaCost) and isinstance(cost, Cost)
    assert (cost.sample_calls, cost.sample_batch, cost.fit_calls, cost.fit_batch) == (10, 2, 30, 8)
    assert (cost.noise_fit_calls, cost.noise_check_calls) == (10 * 20 * 10, 10 * 10)
    assert cost.unet_calls == 10 + 30 + 2000 + 100
    assert cost.latent_passes == 10 * 2 + 3 * 30 * 8 + 3 * 2000 + 100
    assert "2140 UNet calls" in str(cost)
    assert DiaConfig(guidance_scale=1.0).cost().sample_batch == 1  # no guidance: one latent, as the official


def test_both_have_the_shared_call_shape(sd_pipe, inpaint_pipe):
    assert METHODS["analogist"].load() is Analogist and METHODS["dia"].load() is Dia
    for method in (analogist(inpaint_pipe), dia(sd_pipe)):
        assert isinstance(method, Method)
        assert method.cost() == method.config.cost()
    assert Analogist.uses_text and not Dia.uses_text


@pytest.mark.parametrize(
    "make, changes",
    [
        ("analogist", {}),
        ("analogist", dict(strength=0.5)),
        ("analogist", dict(guidance_scale=1.0)),
        ("dia", {}),
        ("dia", dict(guidance_scale=1.0, lbfgs_iterations=3)),
    ],
)
def test_unet_calls_are_what_the_cost_says(sd_pipe, inpaint_pipe, images, make, changes):
    method = analogist(inpaint_pipe, **changes) if make == "analogist" else dia(sd_pipe, **changes)
    with unet_batches(method.pipe.unet) as batches:
        run(method, images)
    cost = method.cost()
    assert len(batches) == cost.unet_calls
    if make == "analogist":
        assert batches == [cost.sample_batch] * cost.sample_calls
    else:
        # three conditioning inversions, then B's noise (a check, then the L-BFGS evaluations, per step), then B′
        noise_calls = cost.noise_fit_calls + cost.noise_check_calls
        assert batches == [cost.fit_batch] * cost.fit_calls + [1] * noise_calls + [cost.sample_batch] * 2


# --- outputs and seeds ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["analogist", "dia"])
def test_b_prime_has_the_working_size_of_b_and_seeds_fix_it(sd_pipe, inpaint_pipe, images, make):
    method = analogist(inpaint_pipe) if make == "analogist" else dia(sd_pipe)
    first, again, other = run(method, images, 0), run(method, images, 0), run(method, images, 1)
    assert first.mode == "RGB" and first.size == B_SIZE == (48, 24)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


# --- Analogist: the grid ----------------------------------------------------------------------------


def test_the_official_layout_at_512():
    layout = grid_layout(512)
    assert (layout.cell, layout.content) == (256, 253)
    assert layout.boxes == {
        "a": (2, 2, 255, 255),
        "a_prime": (257, 2, 510, 255),
        "b": (2, 257, 255, 510),
        "b_prime": (258, 257, 511, 510),  # B's cell copied one cell to the right
    }
    assert layout.mask_box == (256, 256, 512, 512)


def test_the_grid_holds_a_a_prime_b_and_the_mask_is_exactly_the_b_prime_cell(images):
    a, a_prime, b = images["a"], images["a_prime"], images["b"]
    grid, mask, layout = make_grid(a, a_prime, b, 64)
    assert grid.size == mask.size == (64, 64) and grid.mode == "RGB" and mask.mode == "L"
    g = pixels(grid)
    for name, image in (("a", a), ("a_prime", a_prime), ("b", b)):
        left, top, right, bottom = layout.boxes[name]
        squashed = image.resize((layout.content, layout.content), Image.Resampling.BICUBIC)
        assert np.array_equal(g[top:bottom, left:right], pixels(squashed)), name
    cell = layout.cell
    assert np.array_equal(g[cell:, cell:], g[cell:, :cell])  # the fourth cell starts as B's cell
    assert (g[0:2] == 255).all() and (g[:, 0:2] == 255).all()  # white gutters
    m = pixels(mask)
    assert (m[cell:, cell:] == 255).all() and (m[:cell] == 0).all() and (m[:, :cell] == 0).all()


def test_cell_positions_are_row_major_quadrants():
    cells = cell_positions(8, 8)
    assert cells["a"].tolist()[:5] == [0, 1, 2, 3, 8] and cells["a"].tolist()[-3:] == [25, 26, 27]
    assert cells["b_prime"].tolist()[:5] == [36, 37, 38, 39, 44] and cells["b_prime"].tolist()[-1] == 63
    every = torch.cat(list(cells.values()))
    assert sorted(every.tolist()) == list(range(64))  # the four cells tile the map
    for name, (row, col) in {"a": (0, 0), "a_prime": (0, 4), "b": (4, 0), "b_prime": (4, 4)}.items():
        assert cells[name].tolist() == [(row + r) * 8 + col + c for r in range(4) for c in range(4)]


# --- Analogist: the attention control ---------------------------------------------------------------


def test_sac_clones_the_b_to_a_scores_into_b_prime_to_a_prime():
    cells = cell_positions(4, 4)
    scores = torch.randn(3, 16, 16)
    cloned = clone_self_attention(scores, cells, 1.3)
    a, a_prime, b, b_prime = (cells[name] for name in ("a", "a_prime", "b", "b_prime"))
    block = lambda x, rows, cols: x[:, rows[:, None], cols[None, :]]
    torch.testing.assert_close(block(cloned, b_prime, a_prime), 1.3 * block(scores, b, a))
    torch.testing.assert_close(block(cloned, a_prime, b_prime), 1.3 * block(scores, a, b))
    changed = torch.zeros(16, 16, dtype=torch.bool)
    changed[b_prime[:, None], a_prime[None, :]] = True
    changed[a_prime[:, None], b_prime[None, :]] = True
    assert torch.equal(cloned[:, ~changed], scores[:, ~changed])  # nothing else moves


def test_cam_zeroes_text_weights_outside_the_b_prime_cell():
    cells = cell_positions(4, 4)
    weights = torch.rand(2, 16, 5).softmax(-1)
    masked = mask_cross_attention(weights, cells)
    outside = torch.ones(16, dtype=torch.bool)
    outside[cells["b_prime"]] = False
    assert (masked[:, outside] == 0).all()
    assert torch.equal(masked[:, cells["b_prime"]], weights[:, cells["b_prime"]])


def a_block(inpaint_pipe):
    return inpaint_pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0]  # a 16 × 16 map


def test_sac_changes_the_self_attention_of_the_a_prime_and_b_prime_cells_only(inpaint_pipe):
    attn = a_block(inpaint_pipe).attn1
    torch.manual_seed(0)
    hidden = torch.randn(2, 256, attn.to_q.in_features)
    cells = cell_positions(16, 16)
    record = []
    with torch.no_grad():
        plain = AttnProcessor()(attn, hidden)
        cloned = AnalogistAttnProcessor(AttnProcessor(), sac=True, cam=False, sac_scale=1.3, record=record)(
            attn, hidden
        )
        passed = AnalogistAttnProcessor(AttnProcessor(), sac=False, cam=True, sac_scale=1.3)(attn, hidden)
    for name in ("a", "b"):  # their queries' scores are untouched
        torch.testing.assert_close(cloned[:, cells[name]], plain[:, cells[name]], rtol=1e-4, atol=1e-5)
    for name in ("a_prime", "b_prime"):
        assert (cloned[:, cells[name]] - plain[:, cells[name]]).abs().amax() > 1e-3
    assert torch.equal(passed, plain)  # a self-attention layer without SAC is the model's own
    (weights,) = record
    assert weights.shape == (2 * attn.heads, 256, 256)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2 * attn.heads, 256))


def test_cam_leaves_only_the_output_bias_outside_the_b_prime_cell(inpaint_pipe):
    attn = a_block(inpaint_pipe).attn2
    torch.manual_seed(0)
    hidden, text = torch.randn(2, 256, attn.to_q.in_features), torch.randn(2, 77, attn.to_k.in_features)
    cells = cell_positions(16, 16)
    with torch.no_grad():
        plain = AttnProcessor()(attn, hidden, text)
        masked = AnalogistAttnProcessor(AttnProcessor(), sac=False, cam=True, sac_scale=1.3)(attn, hidden, text)
    outside = torch.cat([cells["a"], cells["a_prime"], cells["b"]])
    bias = attn.to_out[0].bias.detach()
    torch.testing.assert_close(masked[:, outside], bias.expand(2, len(outside), -1))
    torch.testing.assert_close(masked[:, cells["b_prime"]], plain[:, cells["b_prime"]], rtol=1e-4, atol=1e-5)


def test_processors_are_installed_during_the_call_and_restored_after(inpaint_pipe, images):
    method = analogist(inpaint_pipe, sac_layers=(1, 3), cam_layers=(3, 4), control_steps=(0, 2))
    unet = inpaint_pipe.unet
    assert method.pipe.unet is unet  # shared with the caller's pipeline
    before = dict(unet.attn_processors)
    seen = []
    handle = unet.register_forward_pre_hook(lambda module, args: seen.append(dict(unet.attn_processors)))
    record = []
    try:
        run(method, images, record=record)
    finally:
        handle.remove()
    assert len(seen) == 9
    for during in seen:
        assert set(during) == set(before)
        assert all(isinstance(p, AnalogistAttnProcessor) and p.original is before[n] for n, p in during.items())
    after = unet.attn_processors
    assert set(after) == set(before) and all(after[name] is before[name] for name in before)
    # blocks in run order: down 16², mid 8², up 16², up 16²; SAC on blocks 1-2, CAM on block 3, steps 0-1
    assert [name.split(".")[0] for name in transformer_blocks(unet)] == [
        "down_blocks",
        "mid_block",
        "up_blocks",
        "up_blocks",
    ]
    installed = seen[0]
    controlled = {name for name, p in installed.items() if p.sac or p.cam}
    assert controlled == {
        "mid_block.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.processor",
    }
    shapes = [tuple(w.shape[1:]) for w in record]
    assert shapes == [(64, 64), (256, 256), (256, 77)] * 2  # three layers × the first two steps


def test_sac_and_cam_change_b_prime_and_without_them_it_is_plain_inpainting(inpaint_pipe, images):
    with_control = run(analogist(inpaint_pipe), images)
    without = analogist(inpaint_pipe, sac=False, cam=False)
    plain = run(without, images)
    assert not np.array_equal(pixels(with_control), pixels(plain))
    assert not np.array_equal(pixels(run(analogist(inpaint_pipe, cam=False), images)), pixels(plain))
    assert not np.array_equal(pixels(run(analogist(inpaint_pipe, sac=False), images)), pixels(plain))
    # with both off the processors pass through: the same as diffusers' pipeline on the grid
    grid, mask, layout = make_grid(images["a"], images["a_prime"], images["b"], 32)
    drawn = without.pipe(
        prompt=f"{PROMPT}, {ADDED_PROMPT}",
        negative_prompt=NEGATIVE_PROMPT,
        image=grid,
        mask_image=mask,
        height=32,
        width=32,
        strength=0.98,
        num_inference_steps=10,
        guidance_scale=15.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    expected = drawn.crop(layout.boxes["b_prime"]).resize(B_SIZE, Image.Resampling.BICUBIC)
    assert np.array_equal(pixels(plain), pixels(expected))


# --- DIA -------------------------------------------------------------------------------------------------


def test_square_padding_and_views():
    image = shape_image((60, 30), "red", "square")
    square, box = square_padded(image, 32)
    assert square.size == (32, 32) and box == (0, 8, 32, 24)
    p = pixels(square)
    assert (p[:5] == 0).all() and (p[27:] == 0).all() and p[12:20].mean() > 100  # black bands, B in the middle
    first = random_views(square, 8, (0.85, 0.99), torch.Generator().manual_seed(0))
    again = random_views(square, 8, (0.85, 0.99), torch.Generator().manual_seed(0))
    assert len(first) == 8 and all(v.size == (32, 32) for v in first)
    assert first[0] is square and np.array_equal(pixels(first[1]), pixels(square)[:, ::-1])
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(first, again))
    assert not np.array_equal(pixels(first[2]), pixels(first[3]))
    assert random_views(square, 1, (0.85, 0.99), torch.Generator()) == [square]


def test_dia_learns_only_the_leading_token_positions(sd_pipe, images):
    method = dia(sd_pipe, token_steps=3, learned_tokens=4, views=2)
    square, _ = square_padded(images["a"], 32)
    start = sd_pipe.text_encoder.get_input_embeddings()(method._empty_ids())[0].detach()
    before = {name: p.detach().clone() for name, p in sd_pipe.unet.named_parameters()}
    result = method.invert_conditioning(square, torch.Generator().manual_seed(0), progress=False)
    assert result.tokens.shape == start.shape and result.states.shape == (1, *start.shape)
    assert len(result.history) == 3
    assert (result.tokens[:4] - start[:4]).abs().amax() > 1e-3  # learned
    decay = (1 - 0.01 * 0.01) ** 3  # AdamW's weight decay still shrinks the frozen rows, as in the official code
    torch.testing.assert_close(result.tokens[4:], start[4:] * decay)
    with torch.no_grad():
        torch.testing.assert_close(result.states, method.encode_tokens(result.tokens))
    assert all(torch.equal(p, before[name]) for name, p in sd_pipe.unet.named_parameters())
    assert all(p.grad is None for p in sd_pipe.unet.parameters())


def test_dia_noise_inversion_reconstructs_b_better(sd_pipe, images):
    method = dia(sd_pipe, noise_steps=3, lbfgs_iterations=4, noise_lr=0.05)
    square, _ = square_padded(images["b"], 32)
    states = method.empty_states()
    result = method.invert_noise(square, states, torch.Generator().manual_seed(0), progress=False)
    assert result.noise.shape == (1, 4, 16, 16) and len(result.history) == 3
    assert result.history[-1] < result.history[0]


def test_dia_draws_c_b_plus_strength_times_the_difference(sd_pipe, images):
    method = dia(sd_pipe)
    generator = torch.Generator().manual_seed(0)
    squares = [square_padded(images[name], 32)[0] for name in ("a", "a_prime", "b")]
    c_a, c_a_prime, c_b = (method.invert_conditioning(s, generator, progress=False) for s in squares)
    x_t = method.invert_noise(squares[2], c_b.states, generator, progress=False)
    plain = pixels(method.draw(c_a, c_a_prime, c_b, x_t, analogy_strength=0.0))
    assert np.array_equal(plain, pixels(method.draw(c_a_prime, c_a, c_b, x_t, analogy_strength=0.0)))
    forward = pixels(method.draw(c_a, c_a_prime, c_b, x_t))
    assert not np.array_equal(forward, plain)
    # c_B + (c_A′ − c_A) with A and A′ swapped is c_B − (c_A′ − c_A)
    assert np.array_equal(
        pixels(method.draw(c_a_prime, c_a, c_b, x_t)),
        pixels(method.draw(c_a, c_a_prime, c_b, x_t, analogy_strength=-1.0)),
    )


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config_class, changes",
    [
        (AnalogistConfig, dict(strength=0.0)),
        (AnalogistConfig, dict(strength=1.5)),
        (AnalogistConfig, dict(strength=0.01)),  # 50 × 0.01 → no denoising step
        (AnalogistConfig, dict(steps=0)),
        (AnalogistConfig, dict(guidance_scale=-1.0)),
        (AnalogistConfig, dict(sac_scale=0.0)),
        (AnalogistConfig, dict(sac_scale=float("nan"))),
        (AnalogistConfig, dict(sac_layers=(5, 3))),
        (AnalogistConfig, dict(cam_layers=(-1, 3))),
        (AnalogistConfig, dict(cam_layers=[3, 11])),
        (AnalogistConfig, dict(control_steps=(0, 0))),
        (AnalogistConfig, dict(sac="yes")),
        (AnalogistConfig, dict(gutter=-1)),
        (AnalogistConfig, dict(resolution=0)),
        (DiaConfig, dict(steps=0)),
        (DiaConfig, dict(views=11)),  # more views than DDIM timesteps
        (DiaConfig, dict(token_lr=0.0)),
        (DiaConfig, dict(noise_lr=-0.1)),
        (DiaConfig, dict(lbfgs_iterations=0)),
        (DiaConfig, dict(crop_scale=(0.9, 0.8))),
        (DiaConfig, dict(latent_weight=0.0, pixel_weight=0.0)),
        (DiaConfig, dict(guidance_scale=-1.0)),
        (DiaConfig, dict(analogy_strength=float("inf"))),
        (DiaConfig, dict(resolution=2.5)),
    ],
)
def test_invalid_hyperparameters_are_refused(config_class, changes):
    with pytest.raises(DiffinvError):
        config_class(**changes)


@pytest.mark.parametrize("make", ["analogist", "dia"])
def test_bad_inputs_are_refused_before_any_work(sd_pipe, inpaint_pipe, images, make):
    build = (lambda **c: analogist(inpaint_pipe, **c)) if make == "analogist" else (lambda **c: dia(sd_pipe, **c))
    method = build()
    a, a_prime, b = images["a"], images["a_prime"], images["b"]
    inputs = {"text": PROMPT} if make == "analogist" else {}
    with unet_batches(method.pipe.unet) as batches:
        for seed in (-1, "1", 2**63):
            with pytest.raises(DiffinvError, match="seed"):
                method.analogy(a, a_prime, b, seed=seed, progress=False, **inputs)
        with pytest.raises(DiffinvError, match="too small"):
            method.analogy(a, a_prime, shape_image((8, 8), "red"), progress=False, **inputs)
        with pytest.raises(DiffinvError, match="no such file"):
            method.analogy(a, "missing.png", b, progress=False, **inputs)
        with pytest.raises(DiffinvError, match="resolution"):
            build(resolution=1000).analogy(a, a_prime, b, progress=False, **inputs)  # > 2 × the native 32
        with pytest.raises(DiffinvError, match="multiple"):  # Analogist: of 16 (four equal cells), DIA: of 8
            build(resolution=40 if make == "analogist" else 36).analogy(a, a_prime, b, progress=False, **inputs)
        if make == "analogist":
            for text in (None, "", "   "):
                with pytest.raises(DiffinvError, match="prompt"):
                    method.analogy(a, a_prime, b, text=text, progress=False)
    assert batches == []


def test_a_model_of_the_wrong_kind_is_refused(sd_pipe, inpaint_pipe):
    with pytest.raises(DiffinvError, match="inpainting"):
        Analogist(sd_pipe)
    with pytest.raises(DiffinvError, match="text-to-image"):
        Dia(inpaint_pipe)
    with pytest.raises(DiffinvError, match="only 4 transformer blocks"):
        Analogist(inpaint_pipe, AnalogistConfig(sac_layers=(4, 11)))


# --- loading ------------------------------------------------------------------------------------------


def test_from_pretrained_loads_saved_directories_and_runs(tmp_path, sd_pipe, inpaint_pipe, images):
    sd_dir, inpaint_dir = tmp_path / "sd", tmp_path / "inpaint"
    sd_pipe.save_pretrained(sd_dir)
    inpaint_pipe.save_pretrained(inpaint_dir)
    common = dict(device="cpu", offline=True)

    loaded = Analogist.from_pretrained(str(inpaint_dir), config=FAST_ANALOGIST, **common)
    assert np.array_equal(pixels(run(loaded, images)), pixels(run(analogist(inpaint_pipe), images)))
    loaded_dia = Dia.from_pretrained(str(sd_dir), dtype="float32", config=FAST_DIA, **common)
    assert run(loaded_dia, images).size == B_SIZE

    with pytest.raises(DiffinvError, match="inpainting"):
        Analogist.from_pretrained(str(sd_dir), **common)  # a text-to-image model
    for method in (Analogist, Dia):
        with pytest.raises(DiffinvError, match="no such model directory"):
            method.from_pretrained(str(tmp_path / "missing"), **common)
