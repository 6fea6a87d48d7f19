"""--memory low (`diffinv.memory`): the same DIFF tokens and B′ as the default mode on the tiny models, each
switch on (and actually at work) in low mode only, the offload's stages, the captioner making room and
freed, and an unknown mode refused in one line."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, fast_config, shape_image
from diffinv.captioners import Blip2Captioner
from diffinv.errors import DiffinvError
from diffinv.memory import apply_low_memory, half_vae_weights, lean_vae, memory_switches
from diffinv.pipeline import DifferenceInversion
from diffinv.testing import tiny_backbone, tiny_clip_for, tiny_xl_backbone

CAPTIONS = (CAPTION_A, CAPTION_A_PRIME)


def tiny_di(low: bool, offload: bool = False) -> DifferenceInversion:
    """A fresh tiny model (the same random weights every time), in low mode if `low` (on the CPU; the
    offload between stages forced on with `offload`, as on CUDA)."""
    backbone = tiny_backbone("epsilon")
    clip = tiny_clip_for(backbone.pipe)
    if low:
        apply_low_memory(backbone, clip, torch.device("cpu"), offload=offload)
    return DifferenceInversion(backbone, clip, captioner=None)


# B square at the tiny VAE's tile size: tiling (low mode) changes pictures larger than the tile, at the seams.
SQUARE_B = shape_image((32, 32), "red", "square", seed=3)


def fit_and_draw(di: DifferenceInversion, images):
    tokens = di.fit(images["a"], images["a_prime"], fast_config(), captions=CAPTIONS, progress=False)
    return tokens, di.apply(tokens, SQUARE_B, seed=0, prompt=PROMPT_B, progress=False)


def test_low_mode_gives_the_default_modes_tokens_and_picture(images):
    default_tokens, default_picture = fit_and_draw(tiny_di(low=False), images)
    # Every switch, the offload's hooks included (on the CPU they move nothing, but every call goes through them).
    tokens, picture = fit_and_draw(tiny_di(low=True, offload=True), images)
    torch.testing.assert_close(tokens.embeddings, default_tokens.embeddings, rtol=1e-4, atol=1e-5)
    assert tokens.embeddings.abs().max() > 0  # the fit moved D̃: the comparison is not of zeros
    difference = (torch.tensor(list(picture.getdata())) - torch.tensor(list(default_picture.getdata()))).abs()
    assert picture.size == default_picture.size and difference.max() <= 1  # at most rounding of a level


def test_from_pretrained_low_turns_every_switch_on_and_default_none(tiny_model_dir):
    model_dir, clip_dir = tiny_model_dir
    low = DifferenceInversion.from_pretrained(model_dir, device="cpu", clip_model=clip_dir, memory="low")
    default = DifferenceInversion.from_pretrained(model_dir, device="cpu", clip_model=clip_dir)
    # On the CPU the offload is off (it would move nothing); on CUDA it is on.
    assert memory_switches(low.backbone) == dict(
        unet_checkpointing=True, vae_slicing=True, vae_tiling=True, offload=False
    )
    assert not any(memory_switches(default.backbone).values())
    # BLIP-2 is the captioner of both, loaded only to caption and freed right after.
    assert isinstance(low.captioner, Blip2Captioner) and not low.captioner.loaded and not low.captioner.keep_loaded


def count_calls(module_types, modules) -> tuple[Counter, list]:
    counts: Counter = Counter()
    handles = [
        sub.register_forward_pre_hook(lambda m, args: counts.update([type(m).__name__]))
        for module in modules
        for sub in module.modules()
        if isinstance(sub, module_types)
    ]
    return counts, handles


def test_checkpointing_recomputes_blocks_in_the_fit_only(images):
    """Checkpointed blocks run again in the backward pass of the fit (diffusers gates it on gradients
    being on, not on training mode: the fit's UNet stays in eval mode); sampling, without gradients,
    runs each block once."""
    calls = {}
    for low in (False, True):
        di = tiny_di(low)
        assert not di.backbone.unet.training  # eval mode: checkpointing must work there
        counts, handles = count_calls((ResnetBlock2D, BasicTransformerBlock), [di.backbone.unet])
        tokens = di.fit(images["a"], images["a_prime"], fast_config(steps=1), captions=CAPTIONS, progress=False)
        fitted = counts.copy()
        counts.clear()
        di.apply(tokens, SQUARE_B, seed=0, prompt=PROMPT_B, progress=False)
        calls[low] = (fitted, counts.copy())
        for handle in handles:
            handle.remove()
    (fit_default, draw_default), (fit_low, draw_low) = calls[False], calls[True]
    for block in ("ResnetBlock2D", "BasicTransformerBlock"):
        assert fit_low[block] > fit_default[block] > 0, block  # recomputed during backward
    assert fit_low["BasicTransformerBlock"] == 2 * fit_default["BasicTransformerBlock"]  # all take D̃'s gradient
    assert draw_low == draw_default  # no gradients: nothing recomputed


def test_offload_keeps_only_the_running_stage_on_the_device(images):
    di = tiny_di(low=True, offload=True)
    offload = di.backbone.offload
    assert offload is di.clip.offload and offload.resident == set()  # every model waits on the CPU
    fit_and_draw(di, images)
    entered = [unit for unit, _ in offload.stages]
    assert {"vision", "text", "vae"} <= set(entered)
    # One unit resident at a time: the fit's text encoder, UNet and CLIP text tower are one unit.
    assert all(resident == {unit} for unit, resident in offload.stages), offload.stages
    assert entered[-1] == "vae"  # B′ decoded last

    offload.offload_all()
    assert offload.resident == set()


def test_offload_keeps_a_unit_whose_graph_awaits_its_backward():
    """With gradients on, a unit used with gradients since the last call without stays resident."""
    di = tiny_di(low=True, offload=True)
    offload = di.backbone.offload
    with torch.no_grad():
        offload.enter("vae")
    offload.enter("text")  # gradients on: the VAE, used without them, leaves
    assert offload.resident == {"text"}
    offload.enter("vision")  # gradients on: text's graph may still be pending
    assert offload.resident == {"text", "vision"}
    with torch.no_grad():
        offload.enter("vae")
    assert offload.resident == {"vae"}


def test_half_vae_weights_only_where_the_vae_takes_them():
    sd, xl = tiny_backbone(), tiny_xl_backbone()
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert half_vae_weights(sd, cuda)  # float32 model on CUDA: the VAE's weights in float16
    assert not half_vae_weights(sd, cpu)
    assert not half_vae_weights(xl, cuda)  # SDXL's VAE overflows in float16 (force_upcast)
    xl.vae.register_to_config(force_upcast=False)  # as the fp16-fix VAE says
    assert half_vae_weights(xl, cuda)

    # Where it applies, the weights are stored in float16 and computed in float32: the same picture, nearly.
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = sd.vae.decode(latents).sample
        lean_vae(sd, cuda)  # the device only decides; nothing here runs on CUDA
        half = sd.vae.decode(latents).sample
    assert sd.vae.decoder.conv_in.weight.dtype == torch.float16 and half.dtype == torch.float32
    assert sd.vae.use_slicing and sd.vae.use_tiling
    torch.testing.assert_close(half, full, rtol=0, atol=2e-2)
    assert not half_vae_weights(tiny_backbone().__class__(sd.pipe.to(torch.bfloat16), "bf16"), cuda)


def test_the_captioner_makes_room_before_loading_and_is_freed(monkeypatch):
    events = []

    class FakeModel:
        def generate(self, pixel_values, max_new_tokens):
            return torch.zeros(len(pixel_values), 1, dtype=torch.long)

    class FakeProcessor:
        def __call__(self, images, return_tensors):
            batch = {"pixel_values": torch.zeros(len(images), 3, 4, 4)}
            return type("Batch", (dict,), {"to": lambda self, *args: self})(batch)

        def batch_decode(self, generated, skip_special_tokens):
            return ["a caption"] * len(generated)

    def fake_load(self):
        events.append("load")
        self._processor, self._model = FakeProcessor(), FakeModel()

    monkeypatch.setattr(Blip2Captioner, "_load", fake_load)
    captioner = Blip2Captioner(make_room=lambda: events.append("room"))
    from PIL import Image

    assert captioner([Image.new("RGB", (8, 8))]) == ["a caption"]
    assert events == ["room", "load"] and not captioner.loaded


def test_an_unknown_memory_mode_is_one_line(capsys, tiny_model_dir):
    from diffinv.cli import main

    with pytest.raises(DiffinvError, match="memory must be one of default, low; got 'huge'"):
        DifferenceInversion.from_pretrained(tiny_model_dir[0], device="cpu", memory="huge")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "a.png", "b.png", "-o", "t.safetensors", "--memory", "huge"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--memory" in error and "'huge'" in error


def test_the_memory_flag_reaches_the_loader():
    from diffinv.cli.load import model_options
    from diffinv.cli.parser import build_parser

    args = build_parser().parse_args(["analogy", "a.png", "b.png", "c.png", "-o", "d.png", "--memory", "low"])
    assert model_options(args).memory == "low"
    args = build_parser().parse_args(["analogy", "a.png", "b.png", "c.png", "-o", "d.png"])
    assert model_options(args).memory == "default"
