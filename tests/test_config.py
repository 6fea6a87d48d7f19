"""InversionConfig: the paper's defaults, validation of every field, JSON round trip."""

import dataclasses
import json

import pytest

from diffinv.config import InversionConfig
from diffinv.errors import DiffinvError


def test_defaults_are_the_papers():
    config = InversionConfig()
    assert config.n_tokens == 5  # Fig. 6
    assert config.alpha == 0.8  # Fig. 7
    assert config.lambda_tc == 0.01
    assert config.lambda_clip == 6.0
    assert config.init == "zeros"  # Algorithm 1: D̃ ← 0
    # Not stated by the paper; VISII's optimiser.
    assert config.learning_rate == 1e-3
    assert config.steps == 1000
    assert config.prompt_source == "pez"
    assert config.use_token_consistency and config.use_clip_loss and not config.hard_tokens


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(n_tokens=0), "n_tokens"),
        (dict(n_tokens=2.5), "n_tokens"),
        (dict(lambda_tc=-1.0), "lambda_tc"),
        (dict(lambda_clip=-6.0), "lambda_clip"),
        (dict(init="ones"), "init"),
        (dict(steps=-1), "steps"),
        (dict(steps=0), "steps"),  # would return B unedited
        (dict(sampling_steps=1, strength=0.8), "sampling_steps × strength"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(clip_loss_space="pixels"), "clip_loss_space"),
        (dict(use_token_consistency=False, use_clip_loss=False), "losses"),
        (dict(prompt_source="blip"), "prompt_source"),
        (dict(pez_prompt_len=0), "pez_prompt_len"),
        (dict(pez_steps=-5), "pez_steps"),
        (dict(pez_lr=0.0), "pez_lr"),
        (dict(resolution=4), "resolution"),
        (dict(resolution=5000), "resolution"),
        (dict(sampling_mode="ddim-inversion"), "sampling_mode"),
        (dict(strength=0.0), "strength"),
        (dict(strength=1.2), "strength"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(sampling_steps=0), "sampling_steps"),
    ],
)
def test_invalid_values_raise_naming_the_field(changes, field):
    with pytest.raises(DiffinvError) as raised:
        InversionConfig(**changes)
    message = str(raised.value)
    assert message.startswith("invalid configuration:")
    assert field in message
    assert "\n" not in message


def test_replace_validates_and_rejects_unknown_options():
    config = InversionConfig()
    changed = config.replace(alpha=0.3, steps=7)
    assert (changed.alpha, changed.steps) == (0.3, 7)
    assert config.alpha == 0.8, "replace must not modify the original"
    with pytest.raises(DiffinvError, match="alpha"):
        config.replace(alpha=2.0)
    with pytest.raises(DiffinvError, match="unknown option"):
        config.replace(alhpa=0.5)


def test_boundary_values_are_valid():
    InversionConfig(alpha=0.0, strength=1.0, steps=1, lambda_tc=0.0, resolution=8)
    InversionConfig(alpha=1.0, use_clip_loss=False)
    InversionConfig(use_token_consistency=False)


def test_json_round_trip_keeps_every_field():
    config = InversionConfig(
        n_tokens=3,
        alpha=0.25,
        init="random",
        steps=12,
        clip_loss_space="token-mean",
        hard_tokens=True,
        prompt_source="caption",
        resolution=96,
        sampling_mode="noise",
        strength=0.5,
        sampling_steps=4,
    )
    text = config.to_json()
    assert json.loads(text)["alpha"] == 0.25
    restored = InversionConfig.from_json(text)
    assert restored == config
    assert dataclasses.asdict(restored) == dataclasses.asdict(config)


def test_from_json_ignores_unknown_keys_but_validates_known_ones():
    values = json.loads(InversionConfig(steps=3).to_json())
    values["option_from_the_future"] = 1
    assert InversionConfig.from_json(json.dumps(values)).steps == 3
    values["alpha"] = 7
    with pytest.raises(DiffinvError, match="alpha"):
        InversionConfig.from_json(json.dumps(values))


def test_the_paper_preset_is_the_papers_method_on_the_models_budget():
    from diffinv.config import BUDGET_FIELDS, METHOD_FIELDS, preset

    assert preset("paper") == InversionConfig()
    assert set(BUDGET_FIELDS) | set(METHOD_FIELDS) == {f.name for f in dataclasses.fields(InversionConfig)}
    model = InversionConfig(steps=50, learning_rate=1e-2, tc_reduction="sum", use_clip_loss=False, edit_strength=2.0)
    paper = preset("paper", model)
    assert (paper.steps, paper.learning_rate) == (50, 1e-2), "the model's budget is kept"
    assert (paper.tc_reduction, paper.use_clip_loss, paper.edit_strength) == ("mean", True, 1.0)
    with pytest.raises(DiffinvError, match="unknown preset"):
        preset("best")


# --- the drawing settings -----------------------------------------------------------------------------------
def test_draw_settings_are_the_drawing_half_of_the_config():
    from diffinv.config import DrawSettings

    config = InversionConfig(
        sampling_mode="inversion",
        strength=0.5,
        guidance_scale=3.0,
        image_guidance_scale=2.0,
        sampling_steps=7,
        share_attention=0.25,
        edit_mask=0.5,
        direct_inversion=True,
        edit_strength=2.0,  # shapes the text states, not the drawing
        candidates=1,
    )
    settings = config.draw_settings()
    assert settings == DrawSettings(
        mode="inversion",
        strength=0.5,
        guidance_scale=3.0,
        image_guidance_scale=2.0,
        steps=7,
        share_attention=0.25,
        edit_mask=0.5,
        direct_inversion=True,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.steps = 3
    assert settings.inversion == "ddim"
    assert InversionConfig(sampling_mode="edit-friendly").draw_settings().inversion == "edit-friendly"
    assert {InversionConfig(sampling_mode=mode).draw_settings().inversion for mode in ("img2img", "noise")} == {None}
    with pytest.raises(DiffinvError, match="sampling mode must be one of"):
        dataclasses.replace(settings, mode="sketch")
