"""benchmarks/gpu_speed.py: its tiny CPU run, and the published configurations it builds from.

The full-size models are never given memory here: their configurations are checked by value, and
built on PyTorch's meta device (shapes without storage, well under a second) to count parameters.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"


@pytest.fixture(scope="module")
def gpu_speed():
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


ANALOGY_PHASES = {"pez_a_a_prime", "clip_deltas_vae_latents", "fit", "pez_b", "sampling", "pez_total", "total"}


def check_analogy_figures(model: dict) -> None:
    """What both model sizes report: floor against a real step, the analogy phase by phase and at
    the paper's counts, memory (None on the CPU)."""
    assert model["resolution"] == 64 and model["latents"] == [2, 4, 8, 8]
    assert positive(model["floor_s"]) and positive(model["step_s"])
    assert positive(model["step_over_floor"])
    assert model["step_over_floor"] == pytest.approx(model["step_s"] / model["floor_s"])
    assert len(model["floor_runs_s"]) == len(model["step_runs_s"]) == 2
    assert set(model["analogy_s"]) == ANALOGY_PHASES and all(positive(v) for v in model["analogy_s"].values())
    assert model["analogy_s"]["total"] > model["analogy_s"]["fit"]
    paper = model["paper_defaults_estimate_s"]
    assert set(paper) == {"pez", "clip_deltas_vae_latents", "fit", "sampling", "total"}
    assert all(positive(v) for v in paper.values())
    assert paper["fit"] == pytest.approx(model["step_s"] * 1000)  # N = 1000 steps at the measured step time
    assert model["analogy_counts"]["unet_calls_sampling"] == 1  # img2img: int(2 × 0.8)
    assert model["memory_gib"]["weights"] is None and model["memory_gib"]["peak_overall"] is None  # CPU
    assert set(model["memory_gib"]["peak"]) == {"pez_deltas_latents", "floor_and_fit", "pez_b", "sampling"}
    assert model["clip_text_tower_matches"] is True
    low = model["low_memory"]  # the analogy again in --memory low: no offload and no GPU figures on the CPU
    assert low["offload"] is False and low["peak_overall"] is None and low["resident_after_loading"] is None
    assert set(low["peak"]) == {"pez_deltas_latents", "fit", "sampling"}
    assert positive(low["step_s"]) and positive(low["sampling_s"])
    assert low["step_over_default"] == pytest.approx(low["step_s"] / model["step_s"])
    assert all(isinstance(v, int) and v > 0 for v in model["parameters"].values())


def test_tiny_cpu_run_reports_every_figure(gpu_speed, tmp_path, capsys):
    out = tmp_path / "speed.json"
    report = gpu_speed.run(
        ["--tiny", "--device", "cpu", "--dtype", "float32", "--steps", "2", "--pez-steps", "2"]
        + ["--sampling-steps", "2", "--repeats", "2", "--models", "sd21,sdxl", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == report
    assert report["tiny"] and "not a speed figure" in report["note"]
    assert (report["device"], report["dtype"], report["steps"], report["repeats"]) == ("cpu", "float32", 2, 2)

    sd = report["models"]["sd21"]
    check_analogy_figures(sd)
    assert (sd["backbone"], sd["family"], sd["token_width"], sd["encoder_widths"]) == (
        "StableDiffusionBackbone",
        "sd",
        32,
        None,
    )
    assert list(sd["parameters"]) == ["unet", "text_encoder", "vae", "clip"]

    xl = report["models"]["sdxl"]
    check_analogy_figures(xl)
    assert (xl["backbone"], xl["family"], xl["token_width"], xl["encoder_widths"]) == (
        "StableDiffusionXLBackbone",
        "sdxl",
        48,
        [16, 32],
    )
    assert list(xl["parameters"]) == ["unet", "text_encoder", "text_encoder_2", "vae", "clip"]

    printed = capsys.readouterr().out
    assert "### SD 2.1 size (64 px" in printed and "### SDXL size (64 px" in printed
    sdxl_table = printed.split("### SDXL size")[1]
    for row in ("| **step / floor** |", "| one analogy at the defaults (", "| fit (2 steps) |", "| drawing B′ ("):
        assert printed.count(row) == 2 and row in sdxl_table, row
    assert "`StableDiffusionXLBackbone` (DIFF tokens 48 wide = 16 + 32)" in sdxl_table
    assert "text encoder 2" in sdxl_table and "awaits" not in printed
    assert "not a speed figure" in printed
    assert printed.count("**--memory low** (model CPU offload off (not CUDA))") == 2  # both model sizes


def test_tiny_sdxl_is_the_real_backbone_with_its_clip(gpu_speed):
    from diffinv.backbones.sdxl import StableDiffusionXLBackbone, XLTextStates
    from diffinv.config import InversionConfig
    from diffinv.inversion import check_compatible

    backbone, clip = gpu_speed.build_sdxl(True, torch.device("cpu"), torch.float32)
    assert isinstance(backbone, StableDiffusionXLBackbone) and backbone.family == "sdxl"
    assert backbone.encoder_widths == (16, 32) and backbone.clip_dims == slice(16, None)
    assert backbone.native_resolution == 64
    assert backbone.tokenizer_2.pad_token == "!" and backbone.tokenizer.pad_token == "<|endoftext|>"
    assert backbone.vae.config.scaling_factor == 0.13025 and backbone.vae.config.force_upcast
    check_compatible(backbone, clip, InversionConfig())  # raises if the CLIP's text tower is not encoder 2
    # The bigG CLIP's text tower and projection are encoder 2's, weight for weight.
    encoder_2 = backbone.text_encoder_2
    for ours, theirs in (
        (clip.model.text_model, encoder_2.text_model),
        (clip.model.text_projection, encoder_2.text_projection),
    ):
        mine, other = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == other.keys() and all(torch.equal(mine[k], other[k]) for k in mine)

    # The floor's leaf: both fields of SDXL's text states cut from the graph and taking a gradient.
    states = XLTextStates(torch.ones(2, 3, 48) * torch.ones(1, requires_grad=True), torch.zeros(2, 32))
    leaf = gpu_speed.leaf(states)
    assert isinstance(leaf, XLTextStates)
    assert all(t.is_leaf and t.requires_grad for t in (leaf.hidden, leaf.pooled))


def test_full_size_sdxl_builds_on_meta(gpu_speed):
    """The full-size SDXL pipeline, backbone and bigG CLIP as the script builds them, shapes only:
    the CLIP's text tower takes encoder 2's weights strictly (one configuration)."""
    backbone, clip = gpu_speed.build_sdxl(False, torch.device("meta"), torch.bfloat16)
    assert backbone.encoder_widths == (768, 1280) and backbone.token_width == 2048
    assert backbone.native_resolution == 1024 and backbone.vocab_size == 49408
    assert clip.vocabulary.shape == backbone.clip_vocabulary.shape == (49408, 1280)
    assert clip.model.config.projection_dim == backbone.text_encoder_2.config.projection_dim == 1280
    assert sum(p.numel() for p in clip.model.parameters()) == PUBLISHED_PARAMETERS["sdxl_clip_vit_bigg"]


def test_arguments_are_checked(gpu_speed):
    for bad in (["--models", "sd3"], ["--sampling-steps", "1"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            gpu_speed.parse_args(bad)
    assert gpu_speed.parse_args(["--models", "sdxl"]).models == ["sdxl"]


def test_sd21_configs_have_the_published_sizes(gpu_speed):
    unet, text, vae = (gpu_speed.load_config(n) for n in ("sd21_unet", "sd21_text_encoder", "sd21_vae"))
    clip = gpu_speed.load_config("sd21_clip_vit_h")
    text_config = CLIPTextConfig(**text)
    clip_config = CLIPConfig(**clip)
    scheduler = DDIMScheduler.from_config(gpu_speed.load_config("sd21_scheduler"))

    assert unet["cross_attention_dim"] == text_config.hidden_size == clip_config.text_config.hidden_size == 1024
    assert clip_config.projection_dim == 1024  # token width = joint width: both CLIP-loss spaces are defined
    assert unet["attention_head_dim"] == [5, 10, 20, 20] and unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["use_linear_projection"] and unet["upcast_attention"]
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == 768
    assert scheduler.config.prediction_type == "v_prediction"
    assert (text_config.num_hidden_layers, text_config.num_attention_heads) == (23, 16)
    assert (text_config.hidden_act, text_config.intermediate_size, text_config.vocab_size) == ("gelu", 4096, 49408)
    assert clip_config.text_config.num_hidden_layers == text_config.num_hidden_layers + 1  # SD 2: penultimate
    vision = clip_config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1280, 32, 16)
    assert (vision.patch_size, vision.image_size, vision.intermediate_size) == (14, 224, 5120)
    assert vae["scaling_factor"] == 0.18215 and vae["latent_channels"] == unet["in_channels"] == 4


def test_sdxl_configs_have_the_published_sizes(gpu_speed):
    unet = gpu_speed.load_config("sdxl_unet")
    text_1 = CLIPTextConfig(**gpu_speed.load_config("sdxl_text_encoder"))
    text_2 = CLIPTextConfig(**gpu_speed.load_config("sdxl_text_encoder_2"))
    scheduler = EulerDiscreteScheduler.from_config(gpu_speed.load_config("sdxl_scheduler"))

    assert unet["cross_attention_dim"] == text_1.hidden_size + text_2.hidden_size == 768 + 1280 == 2048
    assert unet["addition_embed_type"] == "text_time"
    # pooled text embedding of encoder 2 + six size/crop conditions of addition_time_embed_dim each
    assert unet["projection_class_embeddings_input_dim"] == text_2.projection_dim + 6 * unet["addition_time_embed_dim"]
    assert unet["projection_class_embeddings_input_dim"] == 2816
    assert unet["sample_size"] * 8 == 1024
    assert unet["attention_head_dim"] == [5, 10, 20] and unet["transformer_layers_per_block"] == [1, 2, 10]
    assert unet["down_block_types"][0] == "DownBlock2D"  # no attention at the highest resolution
    assert (text_1.num_hidden_layers, text_1.num_attention_heads, text_1.hidden_act) == (12, 12, "quick_gelu")
    assert (text_2.num_hidden_layers, text_2.num_attention_heads, text_2.hidden_act) == (32, 20, "gelu")
    assert text_2.projection_dim == 1280 and text_1.vocab_size == text_2.vocab_size == 49408
    assert scheduler.config.prediction_type == "epsilon"

    vae, sd_vae = gpu_speed.load_config("sdxl_vae"), gpu_speed.load_config("sd21_vae")
    assert vae["scaling_factor"] == 0.13025 and vae["force_upcast"] is True and vae["sample_size"] == 1024
    same = ("scaling_factor", "force_upcast", "sample_size")  # otherwise SD's VAE architecture
    assert {k: v for k, v in vae.items() if k not in same} == {k: v for k, v in sd_vae.items() if k not in same}

    clip = gpu_speed.load_config("sdxl_clip_vit_bigg")
    # ViT-bigG's text tower is SDXL's encoder 2: one configuration, so its weights can be copied in.
    assert clip["text_config"] == gpu_speed.load_config("sdxl_text_encoder_2")
    clip_config = CLIPConfig(**clip)
    assert clip_config.projection_dim == text_2.projection_dim == 1280
    vision = clip_config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1664, 48, 16)
    assert vision.hidden_size // vision.num_attention_heads == 104  # open_clip head_width
    assert (vision.patch_size, vision.image_size, vision.intermediate_size) == (14, 224, 8192)  # mlp_ratio 4.9231
    assert vision.hidden_act == clip_config.text_config.hidden_act == "gelu"


PUBLISHED_PARAMETERS = {
    # counts of the diffusers / transformers models; see benchmarks/configs/README.md for the published sizes
    "sd21_unet": 865_910_724,
    "sd21_text_encoder": 340_387_840,
    "sd21_vae": 83_653_863,
    "sd21_clip_vit_h": 986_109_441,
    "sdxl_unet": 2_567_463_684,
    "sdxl_text_encoder": 123_060_480,
    "sdxl_text_encoder_2": 694_659_840,
    "sdxl_vae": 83_653_863,
    "sdxl_clip_vit_bigg": 2_539_567_105,
}


def test_full_size_configs_build_the_real_classes(gpu_speed):
    build = {
        "sd21_unet": UNet2DConditionModel.from_config,
        "sd21_vae": AutoencoderKL.from_config,
        "sdxl_vae": AutoencoderKL.from_config,
        "sdxl_unet": UNet2DConditionModel.from_config,
        "sd21_text_encoder": lambda c: CLIPTextModel(CLIPTextConfig(**c)),
        "sdxl_text_encoder": lambda c: CLIPTextModel(CLIPTextConfig(**c)),
        "sdxl_text_encoder_2": lambda c: CLIPTextModelWithProjection(CLIPTextConfig(**c)),
        "sd21_clip_vit_h": lambda c: CLIPModel(CLIPConfig(**c)),
        "sdxl_clip_vit_bigg": lambda c: CLIPModel(CLIPConfig(**c)),
    }
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        for name, make in build.items():
            model = make(gpu_speed.load_config(name))
            assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name], name


def test_every_config_names_its_source():
    for path in sorted(SCRIPT.parent.joinpath("configs").glob("*.json")):
        values = json.loads(path.read_text())
        assert values["_source"] and values["_class_name"], path.name


def test_clip_sized_tokenizer(gpu_speed):
    tokenizer = gpu_speed.clip_sized_tokenizer(49408)
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)  # as CLIP's
    assert isinstance(tokenizer.decode([320, 20000, 49405]), str)
