"""Shared fixtures: tiny random models of the real classes, built in code once per session.

Nothing is downloaded: the hub is switched off for the whole run, and every model comes from
`diffinv.testing` (a 32-wide text encoder, a 2-level UNet on 16² latents, a ×2 VAE, a CLIP
whose text tower is a copy of the text encoder).
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

# The models are tiny: one thread is faster than several, and far faster when another process
# is using the other cores (threads then wait on each other).
torch.set_num_threads(int(os.environ.get("DIFFINV_TEST_THREADS", "1")))

# Captions and prompts made of whole words of `diffinv.testing.WORDS`.
CAPTION_A = "a photo of a red circle"
CAPTION_A_PRIME = "a photo of a blue circle"
PROMPT_B = "a photo of a red square"


def shape_image(size: tuple[int, int], colour: str, shape: str = "circle", seed: int = 0) -> Image.Image:
    """A small RGB picture: one shape on a lightly noisy background (so no two are equal)."""
    width, height = size
    rng = np.random.default_rng(seed)
    background = (235 + rng.integers(0, 20, (height, width, 3))).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=colour)
    return image


def fast_config(**changes):
    """The paper's configuration with the step counts cut to what a CPU test can afford."""
    from diffinv.config import InversionConfig

    values = dict(steps=2, prompt_source="caption", sampling_steps=2)
    values.update(changes)
    return InversionConfig(**values)


@pytest.fixture(scope="session")
def backbone():
    from diffinv.testing import tiny_backbone

    return tiny_backbone("epsilon")


@pytest.fixture(scope="session")
def clip(backbone):
    from diffinv.testing import tiny_clip_for

    return tiny_clip_for(backbone.pipe)


def run_cli(capsys, argv):
    """(exit status, stdout, stderr) of the `diffinv` command line run in process on `argv`."""
    from diffinv.cli import main

    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_args(tiny_model_dir):
    """The flags that point a command at the tiny model directory and its CLIP, on the CPU, quietly."""
    model_dir, clip_dir = tiny_model_dir
    return ["--model", model_dir, "--clip-model", clip_dir, "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def editor(backbone):
    """A tiny InstructPix2Pix editor sharing the tiny text-to-image model's text encoder, VAE and
    tokenizer (one per test module: some modules change its settings)."""
    from diffinv.backbones.editor import InstructPix2PixBackbone
    from diffinv.testing import tiny_instruct_pix2pix

    return InstructPix2PixBackbone(tiny_instruct_pix2pix(backbone.pipe), "tiny-editor")


@pytest.fixture(scope="session")
def di(backbone, clip):
    from diffinv.pipeline import DifferenceInversion

    return DifferenceInversion(backbone, clip, captioner=None)


@pytest.fixture(scope="session")
def images() -> dict[str, Image.Image]:
    """A, A′ (32², differing in colour) and B (60×30, a 2:1 landscape)."""
    return {
        "a": shape_image((32, 32), "red", seed=1),
        "a_prime": shape_image((32, 32), "blue", seed=2),
        "b": shape_image((60, 30), "red", "square", seed=3),
    }


@pytest.fixture(scope="session")
def image_files(tmp_path_factory, images) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, image in images.items():
        paths[name] = str(folder / f"{name}.png")
        image.save(paths[name])
    return paths


@pytest.fixture(scope="session")
def fitted_tokens(di, images):
    """DIFF tokens fitted for two steps on (A, A′) with given captions."""
    return di.fit(images["a"], images["a_prime"], fast_config(), captions=(CAPTION_A, CAPTION_A_PRIME), progress=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> tuple[str, str]:
    """(model_dir, clip_dir): a tiny SD pipeline and its CLIP saved the way users save theirs."""
    from diffinv.testing import tiny_clip_for, tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-model")
    model_dir, clip_dir = root / "sd", root / "clip"
    pipe = tiny_pipeline()
    pipe.save_pretrained(model_dir)
    clip = tiny_clip_for(pipe)
    clip.model.save_pretrained(clip_dir)
    clip.tokenizer.save_pretrained(clip_dir)
    return str(model_dir), str(clip_dir)


def module_parameters(backbone, clip) -> dict[str, torch.Tensor]:
    """Every parameter of UNet, VAE, text encoder and CLIP, by qualified name."""
    named = {}
    for prefix, module in (
        ("unet", backbone.unet),
        ("vae", backbone.vae),
        ("text_encoder", backbone.text_encoder),
        ("clip", clip.model),
    ):
        for name, parameter in module.named_parameters():
            named[f"{prefix}.{name}"] = parameter
    return named


@pytest.fixture(scope="session")
def wide_di():
    """A DifferenceInversion on a tiny model whose text encoder takes 48-wide tokens."""
    from diffinv.backbones.sd import StableDiffusionBackbone
    from diffinv.pipeline import DifferenceInversion
    from diffinv.testing import tiny_clip_for, tiny_pipeline

    pipe = tiny_pipeline(width=48)
    return DifferenceInversion(StableDiffusionBackbone(pipe, "tiny-wide"), tiny_clip_for(pipe))


# --- per-test CPU time, on request ------------------------------------------------------------------
# DIFFINV_TEST_CPU=FILE.json writes, for each test (its setup and teardown included), the CPU seconds
# of this process and of the child processes it waited for, and the wall seconds; and the whole run's
# CPU. On a machine shared with other work, CPU time is the steadier figure (docs/benchmarks.md).
_test_times: dict[str, dict[str, float]] = {}


def _cpu_seconds() -> tuple[float, float]:
    """(this process's, its reaped children's) user + system CPU seconds so far."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not os.environ.get("DIFFINV_TEST_CPU"):
        yield
        return
    import time

    (own, children), wall = _cpu_seconds(), time.perf_counter()
    yield
    (own_after, children_after), wall_after = _cpu_seconds(), time.perf_counter()
    _test_times[item.nodeid] = {
        "cpu_s": round(own_after - own, 3),
        "children_cpu_s": round(children_after - children, 3),
        "wall_s": round(wall_after - wall, 3),
    }


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("DIFFINV_TEST_CPU")
    if path:
        import json
        from pathlib import Path

        own, children = _cpu_seconds()
        run = {"cpu_s": round(own, 2), "children_cpu_s": round(children, 2), "tests": _test_times}
        Path(path).write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
