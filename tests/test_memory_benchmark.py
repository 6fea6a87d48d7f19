"""benchmarks/memory.py: its live-tensor counter on allocations of known size, its arguments, and its tiny
run (slow: a smoke run of every stage in both modes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"


@pytest.fixture(scope="module")
def memory_script():
    spec = importlib.util.spec_from_file_location("memory_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_live_bytes_counts_new_storages_until_freed(memory_script):
    before = torch.ones(1000)  # made before counting: never counted, nor its views
    with memory_script.LiveBytes() as counter:
        doubled = before * 2  # 4000 bytes
        view = doubled.view(10, 100)  # a view: nothing new
        doubled.add_(1)  # in place: nothing new
        _ = before[:10]  # a view of an older tensor: nothing new
        scratch = torch.empty(2000)  # 8000 bytes, then freed
        assert counter.live == 12000
        del scratch
        assert counter.live == 4000
    assert counter.peak == 12000 and view.shape == (10, 100)


def test_live_bytes_sees_saved_activations_freed_by_the_backward(memory_script):
    leaf = torch.ones(1000, requires_grad=True)
    with memory_script.LiveBytes() as counter:
        loss = leaf.exp().exp().sum()  # two exps' results saved for the backward: 8000 bytes
        saved = counter.live
        loss.backward()
        del loss
    assert saved >= 8000
    assert counter.live <= 4000 + 8  # after the backward: the leaf's gradient (and a scalar) stay
    assert counter.peak >= saved


def test_arguments_are_checked(memory_script):
    for bad in (["--models", "sd3"], ["--modes", "tiny"], ["--stages", "pez"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            memory_script.parse_args(bad)
    args = memory_script.parse_args(["--models", "sd15,sdxl", "--stages", "fit_step"])
    assert args.models == ["sd15", "sdxl"] and args.stages == ["fit_step"] and args.modes == ["default", "low"]


def test_sd15_configs_have_the_published_sizes(memory_script):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    load = memory_script.gpu_speed.load_config
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load("sd15_unet"))
        text = CLIPTextModel(CLIPTextConfig(**load("sd15_text_encoder")))
        clip = CLIPModel(CLIPConfig(**load("sd15_clip_vit_l")))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, text, clip)]
    assert counts == [859_520_964, 123_060_480, 427_616_513]  # "860M UNet"; CLIP ViT-L/14's 428 M
    assert load("sd15_clip_vit_l")["text_config"] == {  # the CLIP's text tower is SD 1.5's text encoder
        key: value for key, value in load("sd15_text_encoder").items() if key != "_class_name"
    } | {"projection_dim": 768}
    assert unet.config.sample_size * 8 == 512 and unet.config.cross_attention_dim == 768


@pytest.mark.slow
def test_tiny_run_reports_every_stage(memory_script, tmp_path):
    report = memory_script.run(
        ["--tiny", "--models", "sd15,sdxl", "--max-ram-gb", "0", "--json", str(tmp_path / "m.json")]
    )
    for model in report["models"].values():
        for mode in ("default", "low"):
            stages = model[mode]
            assert set(stages) == set(memory_script.STAGES)
            for stage in memory_script.MEASURED:
                assert stages[stage]["activations_gib"] > 0 and stages[stage]["seconds"] > 0
        # Low mode keeps one unit resident per stage; the default mode all of them.
        assert all(len(row["resident"]) == 1 for row in model["low"].values())
        assert model["low"]["fit_step"]["weights_gib"] < model["default"]["fit_step"]["weights_gib"]
