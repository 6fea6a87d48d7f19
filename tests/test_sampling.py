"""`sampling`: classifier-free guidance over stacked rows, the schedule's last timesteps, and what
a backbone's `sample` refuses before any UNet work (drawing itself: test_sampling_options.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

from conftest import PROMPT_B, fast_config
from diffinv import sampling
from diffinv.errors import DiffinvError


def settings(**changes):
    return dataclasses.replace(fast_config(sampling_steps=4).draw_settings(), **changes)


def test_guided_prediction_combines_the_two_branches_of_each_row():
    """Rows [x₁, x₂] under stacked states [u₁, c₁, u₂, c₂]: the UNet sees [x₁, x₁, x₂, x₂], and
    row i comes back as u_i + s·(c_i − u_i)."""
    latents = torch.tensor([1.0, 10.0]).view(2, 1, 1, 1)
    states = torch.tensor([2.0, 3.0, 5.0, 7.0])
    seen = []

    def predict(noisy, timesteps, text_states):  # a "UNet" that scales each input by its row's state
        seen.append((noisy.flatten().tolist(), timesteps.tolist()))
        return noisy * text_states.view(-1, 1, 1, 1)

    t = torch.tensor(500)
    guided = sampling.guided_prediction(predict, DDIMScheduler(), latents, t, states, guidance_scale=4.0)
    assert seen == [([1.0, 1.0, 10.0, 10.0], [500] * 4)]
    assert guided.flatten().tolist() == [1.0 * (2 + 4 * (3 - 2)), 10.0 * (5 + 4 * (7 - 5))]
    unguided = sampling.guided_prediction(predict, DDIMScheduler(), latents, t, states[:2], guidance_scale=1.0)
    assert unguided.flatten().tolist() == [2.0, 30.0]


def test_the_last_timesteps_are_those_img2img_denoises():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    assert torch.equal(sampling.last_timesteps(scheduler, 10, 0.5), scheduler.timesteps[5:])
    assert torch.equal(sampling.last_timesteps(scheduler, 10, 1.0), scheduler.timesteps)
    assert len(sampling.last_timesteps(scheduler, 10, 0.05)) == 0


@pytest.fixture(scope="module")
def drawing(backbone, images):
    """What `sample` takes besides the settings: text states, B and a size."""
    with torch.no_grad():
        states = backbone.encode_plain([PROMPT_B])
    b = images["b"].resize((64, 32))
    return states, b


def no_unet(*args, **kwargs):
    raise AssertionError("the UNet ran before the refusal")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(mode="editor"), "'editor' does not apply to 'tiny-epsilon', a text-to-image model"),
        (dict(mode="img2img", edit_mask=0.5), "DDIM inversion only .mode 'inversion'., not mode 'img2img'"),
        (dict(mode="noise", share_attention=0.5), "not mode 'noise'"),
        (dict(mode="edit-friendly", direct_inversion=True), "not mode 'edit-friendly'"),
    ],
)
def test_a_text_to_image_backbone_refuses_what_it_cannot_draw(backbone, drawing, monkeypatch, changes, message):
    states, b = drawing
    monkeypatch.setattr(backbone.unet, "forward", no_unet)
    with pytest.raises(DiffinvError, match=message):
        backbone.sample(states, b.size, b, settings(**changes), torch.Generator(), False, invert_states=states)


@pytest.mark.parametrize("mode", ["inversion", "edit-friendly"])
def test_an_inversion_needs_b_and_the_states_it_is_inverted_under(backbone, drawing, mode):
    states, b = drawing
    with pytest.raises(DiffinvError, match="needs an image to invert"):
        backbone.sample(states, b.size, None, settings(mode=mode), torch.Generator(), False, invert_states=states)
    with pytest.raises(DiffinvError, match="invert_states"):
        backbone.sample(states, b.size, b, settings(mode=mode), torch.Generator(), False)


def test_img2img_needs_b_and_noise_does_not_read_it(backbone, drawing):
    states, b = drawing
    with pytest.raises(DiffinvError, match="needs the image"):
        backbone.sample(states, b.size, None, settings(mode="img2img"), torch.Generator(), False)
    noise = settings(mode="noise", steps=2)
    with_b = backbone.sample(states, b.size, b, noise, torch.Generator().manual_seed(0), False)
    without = backbone.sample(states, b.size, None, noise, torch.Generator().manual_seed(0), False)
    assert with_b.size == b.size and list(with_b.getdata()) == list(without.getdata())
