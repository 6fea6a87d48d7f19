"""Every hyperparameter of Difference Inversion in one place.

Values stated in the paper (Kim, Kim & Kim, CVPR 2025) are marked *paper*. Values the paper
does not state are marked with where they come from; each of them is an option, not a hidden
constant. `DrawSettings` is the drawing half of `InversionConfig`, the one object a backbone draws with.

Longer than this project's usual 400 lines on purpose: `InversionConfig`'s docstring is the one
place that documents every hyperparameter (about 150 lines), and splitting it would scatter that.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import DiffinvError

INITS = ("zeros", "random", "encoder", "auto")
TC_REDUCTIONS = ("mean", "sum")
CLIP_LOSS_SPACES = ("text-tower", "token-mean", "in-context")
PROMPT_SOURCES = ("pez", "caption")
SAMPLING_MODES = ("img2img", "noise", "inversion", "edit-friendly", "editor")
TEXT_TO_IMAGE_MODES = tuple(mode for mode in SAMPLING_MODES if mode != "editor")  # "editor": an editor's only one
# the sampling modes that draw from an inversion of B, and the backbone's inversion each uses
INVERSION_MODES = {"inversion": "ddim", "edit-friendly": "edit-friendly"}


@dataclass
class InversionConfig:
    """Hyperparameters of fitting DIFF tokens (Algorithm 1) and of drawing B′ with them.

    Fitting
        n_tokens: number of DIFF tokens n. *paper* 5 (Fig. 6).
        alpha: slerp ratio between image delta (α = 0) and text delta (α = 1). *paper* 0.8 (Fig. 7).
        lambda_tc: weight of the token consistency loss. *paper* 0.01.
        lambda_clip: weight of the CLIP (delta) loss. *paper* 6.
        init: "zeros" (*paper*) or "random" (the ablation of Fig. 5; N(0, σ²) with σ the std of
            the vocabulary embeddings), or "encoder" (beyond the paper):
            the prediction of a DIFF-token encoder trained for the model (`diff_encoder`; the
            paper's Sec. 6 future work), to which the fit adds a correction that starts at zero
            and decays towards zero; or "auto" (beyond the paper): the encoder's prediction, with
            no fit, where drawing each example's A with it reproduces that example's A′ (see
            `encoder_tolerance`), and otherwise a fit of `steps` steps from zeros
            (`encoder_check`; chosen by measurement for the shapes editor, docs/results.md §10).
        encoder_tolerance: with init="auto", how much of the A → A′ difference the encoder's D̃
            may leave between A′ and A drawn with it, as a fraction of the whole difference, in
            pixels and in CLIP's image space alike, for it to be used. 0.3 by measurement
            (development seeds 1–2, docs/results.md §10).
        steps: optimisation steps N. Not stated; VISII's 1000. 0 is allowed with init="encoder":
            D̃ is then the encoder's prediction as it is.
        learning_rate: AdamW learning rate. Not stated; VISII's 1e-3.
        weight_decay: AdamW weight decay. Not stated; torch's AdamW default 1e-2.
        clip_loss_space: how the CLIP loss compares D̃ (token embeddings) with the interpolated
            delta (CLIP joint space), which the paper leaves open.
            "text-tower": encode "<bos> D̃ <eos>" with the CLIP text tower and its projection
            (as VISII does for its instruction); works for every backbone.
            "token-mean": cosine between the mean of the DIFF token embeddings and the delta;
            only defined where token width equals the joint width (SD 1.x / 2.x with their CLIP).
            "in-context" (beyond the paper): the change D̃ makes to CLIP's text feature of a
            prompt, {prompt_A, +D̃} − prompt_A along D_inter and {prompt_A′, −D̃} − prompt_A′
            along −D_inter (see `inversion.clip_loss`).
            Default text-tower by measurement: token-mean learned nothing usable in the shapes
            world (docs/results.md §4).
        hard_tokens: project D̃ onto the nearest vocabulary embeddings in every forward pass
            (PEZ's straight-through trick), so that the result is a sequence of real words.
            Default off by measurement: −29 points of edit success in the shapes world (measured
            with the old all-zero start). With hard tokens, init="zeros" starts D̃ at n random usable
            vocabulary rows drawn with the seed, since a zero vector has no nearest token (see
            `inversion.init_diff_tokens`).
        lambda_clip_b: weight of the CLIP loss taken in prompt_B's context (beyond the paper):
            CLIP-text({prompt_B, +D̃}) − CLIP-text(prompt_B) along D_inter, beside the other
            CLIP loss (`inversion.clip_loss_on_b`). The tokens are then fitted for one B (`analogy`
            or the bench; `fit` needs prompt_b). 0: off. Not in the paper; an option of this
            project (docs/results.md §7).
        use_token_consistency: ablation switch for L_tc (Fig. 5).
        use_clip_loss: ablation switch for L_clip.
        tc_reduction: L_tc = mse_before + mse_after (*paper* eqs. 7–9: each branch's MSE, the
            squared error averaged over the latent's elements, "mean", as diffusers' training
            scripts average too), or each branch's squared error summed over the latent ("sum",
            beyond the paper: ×256 in the shapes world, ×16,384 for SD 1.5 at 512 px; part of the
            `in-context` preset, docs/results.md §6).

    Prompts
        prompt_source: "pez" (*paper*: PEZ hard-prompt inversion for prompt_A, prompt_A′ and
            prompt_B) or "caption" (the captions themselves; faster, a slight drop per the paper).
        pez_prompt_len, pez_steps, pez_lr, pez_weight_decay: PEZ's published defaults for
            Stable Diffusion (16 tokens, 3000 steps, AdamW lr 0.1, weight decay 0.1).

    Resolution
        resolution: side of the square whose area images are resized to (aspect ratio kept,
            sides rounded to the UNet's multiple). None: the UNet's native size
            (512 for SD 1.5, 768 for SD 2.1).

    Drawing B′ (not stated in the paper)
        sampling_mode: "img2img" (SDEdit from B at `strength`), "noise" (text-to-image from
            pure noise with the full prompt) or "inversion" (deterministic DDIM inversion of B to
            the timestep `strength` selects, conditioned on {prompt_B, 0} — the slots zeroed, so
            that inversion and denoising differ by exactly the DIFF tokens — at guidance 1, then
            DDIM denoising from there with {prompt_B, s·D̃} and the usual guidance; no noise is
            drawn, so the seed does not matter). Default img2img, since the paper requires B′ to
            keep as much of B as possible and it runs fewer steps; in the shapes world the
            modes and strengths 0.6–1.0 score the same (docs/results.md §4). "inversion": not
            stated in the paper; default chosen by measurement, docs/results.md.
            "edit-friendly": edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024)
            of B under {prompt_B, 0} — noisy latents of B drawn independently at each timestep
            (seeded) and the residuals that take the DDPM step (η = 1) under {prompt_B, 0} exactly
            from one to the next — then the same steps with {prompt_B, s·D̃}, adding those
            residuals back: B is reproduced exactly when D̃ = 0, and the DIFF tokens change only
            what they must. Not stated in the paper; an option of this project (docs/results.md).
        strength: img2img strength; 1.0 is equivalent to starting from noise. In the inversion
            modes, B is inverted through the last int(sampling_steps × strength) steps of the
            schedule, as img2img denoises them.
            "editor": the mode of an instruction-editing model (InstructPix2Pix; see
            `backbones.editor`), and its only one: B is the editor's image condition and B′ is
            drawn from noise with the instruction {"", s·D̃} (Euler-ancestral, `strength` unused).
            Not in the paper; an option of this project (docs/results.md §7).
        guidance_scale: classifier-free guidance; Stable Diffusion's usual 7.5. In "editor"
            mode, InstructPix2Pix's text guidance s_T.
        image_guidance_scale: InstructPix2Pix's image guidance s_I ("editor" mode only); the
            official editor's 1.2.
        sampling_steps: denoising steps of the scheduler; 50.
        edit_strength: s in {prompt_B, s·D̃}: the DIFF token embeddings are scaled by s before
            encoding (0: no edit; > 1 pushes the difference harder). Not stated in the paper;
            default chosen by measurement, docs/results.md.
        negative_diff: classifier-free guidance's unconditional branch is {prompt_B, −s·D̃}
            instead of the empty prompt, so guidance steers away from the "before" side and
            keeps prompt_B's content on both branches. No effect at guidance_scale ≤ 1 (no
            unconditional branch) nor in `draw` (no D̃). Not stated in the paper; default chosen
            by measurement, docs/results.md.
        diff_guidance: classifier-free guidance on D̃ alone: the unconditional branch is
            {prompt_B, 0}, the condition B is inverted under, so guidance scales only what the
            DIFF tokens add, and with D̃ = 0 B′ is B's reconstruction at any guidance scale
            (negative-prompt inversion, Miyake et al. 2023, with prompt_B as the negative prompt).
            Excludes negative_diff; no effect at guidance_scale ≤ 1 nor in `draw`. Not stated in
            the paper; an option of this project (docs/results.md).
        candidates: draw k B′ with seeds seed … seed + k − 1 and keep the one with the best CLIP
            directional score cos(E(A′) − E(A), E(B′) − E(B)) in the pipeline's CLIP image space
            (needs A and A′: `apply(..., reference=(a, a_prime))`); costs k draws. Not allowed
            with "inversion" (deterministic: every candidate would be the same). Not stated in
            the paper; default chosen by measurement, docs/results.md.
        share_attention: with sampling_mode "inversion", the fraction of the denoising steps
            (the first ones) in which B′'s self-attention probabilities are those of B's
            reconstruction from the same inversion, denoised beside it under {prompt_B, 0}
            (prompt-to-prompt / plug-and-play self-attention injection, `backbones/shared_attention.py`):
            B′ is drawn on B's layout. 0: off. Those steps cost twice the batch. Not stated in
            the paper; an option of this project (docs/results.md).
        edit_mask: with sampling_mode "inversion", a DiffEdit-style mask (Couairon et al., ICLR
            2023): along B's inversion the UNet also predicts under {prompt_B, s·D̃}; where the
            two predictions differ by at least `edit_mask` × their largest difference (mean over
            latent channels) B′ is drawn, and everywhere else each denoising step is put back on
            B's inversion path, so B′ equals B's reconstruction there. 0: off. Doubles the
            inversion's batch. Not stated in the paper; an option of this project (docs/results.md).
        direct_inversion: with sampling_mode "inversion", Direct Inversion (Ju et al., ICLR 2024):
            B's reconstruction under {prompt_B, 0} is denoised beside B′ with the same guidance,
            and after every step its gap to B's inversion path is added to B′ (and the
            reconstruction put back on the path), so the drift that guidance and the inversion's
            approximation cause is taken out of B′; with D̃ = 0, B′ is B. Doubles the denoising
            batch. Not stated in the paper; an option of this project (docs/results.md §7).
    """

    n_tokens: int = 5
    alpha: float = 0.8
    lambda_tc: float = 0.01
    lambda_clip: float = 6.0
    init: str = "zeros"
    encoder_tolerance: float = 0.3
    steps: int = 1000
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    clip_loss_space: str = "text-tower"
    hard_tokens: bool = False
    lambda_clip_b: float = 0.0
    use_token_consistency: bool = True
    use_clip_loss: bool = True
    tc_reduction: str = "mean"

    prompt_source: str = "pez"
    pez_prompt_len: int = 16
    pez_steps: int = 3000
    pez_lr: float = 0.1
    pez_weight_decay: float = 0.1

    resolution: int | None = None

    sampling_mode: str = "img2img"
    strength: float = 0.8
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.2
    sampling_steps: int = 50
    edit_strength: float = 1.0
    negative_diff: bool = False
    diff_guidance: bool = False
    candidates: int = 1
    share_attention: float = 0.0
    edit_mask: float = 0.0
    direct_inversion: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `DiffinvError` naming the first invalid field."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise DiffinvError(f"invalid configuration: {message}")

        def number(value) -> bool:  # an int or a float, not a bool (True would pass as 1)
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        def finite_non_negative(name: str) -> None:
            value = getattr(self, name)
            need(
                number(value) and math.isfinite(value) and value >= 0,
                f"{name} must be a finite number ≥ 0, got {value!r}",
            )

        need(
            isinstance(self.n_tokens, int) and self.n_tokens >= 1,
            f"n_tokens must be an integer ≥ 1, got {self.n_tokens!r}",
        )
        need(0.0 <= self.alpha <= 1.0, f"alpha must lie in [0, 1], got {self.alpha!r}")
        need(self.lambda_tc >= 0 and self.lambda_clip >= 0, "lambda_tc and lambda_clip must be ≥ 0")
        finite_non_negative("lambda_clip_b")
        need(self.init in INITS, f"init must be one of {INITS}, got {self.init!r}")
        # Zero steps would leave D̃ at its start (zeros): B′ would be B redrawn, silently unedited.
        # From the encoder's prediction, zero steps use that prediction as it is.
        fewest_steps = 0 if self.init == "encoder" else 1
        need(
            isinstance(self.steps, int) and self.steps >= fewest_steps,
            f"steps must be an integer ≥ {fewest_steps}, got {self.steps!r}"
            + ("" if fewest_steps == 0 else " (0 only with init='encoder')"),
        )
        need(
            not (self.init in ("encoder", "auto") and self.hard_tokens),
            f"init={self.init!r} predicts soft tokens; it does not combine with hard_tokens",
        )
        need(
            number(self.encoder_tolerance) and 0 <= self.encoder_tolerance <= 1,
            f"encoder_tolerance must lie in [0, 1], got {self.encoder_tolerance!r}",
        )
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate!r}")
        need(self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay!r}")
        need(
            self.clip_loss_space in CLIP_LOSS_SPACES,
            f"clip_loss_space must be one of {CLIP_LOSS_SPACES}, got {self.clip_loss_space!r}",
        )
        need(self.use_token_consistency or self.use_clip_loss, "at least one of the two losses must be on")
        need(
            self.tc_reduction in TC_REDUCTIONS,
            f"tc_reduction must be one of {TC_REDUCTIONS}, got {self.tc_reduction!r}",
        )
        need(
            self.prompt_source in PROMPT_SOURCES,
            f"prompt_source must be one of {PROMPT_SOURCES}, got {self.prompt_source!r}",
        )
        need(
            isinstance(self.pez_prompt_len, int) and self.pez_prompt_len >= 1, "pez_prompt_len must be an integer ≥ 1"
        )
        need(isinstance(self.pez_steps, int) and self.pez_steps >= 0, "pez_steps must be an integer ≥ 0")
        need(self.pez_lr > 0 and self.pez_weight_decay >= 0, "pez_lr must be > 0 and pez_weight_decay ≥ 0")
        need(
            self.resolution is None or (isinstance(self.resolution, int) and 8 <= self.resolution <= 4096),
            f"resolution must be None or an integer in [8, 4096], got {self.resolution!r}",
        )
        need(
            self.sampling_mode in SAMPLING_MODES,
            f"sampling_mode must be one of {SAMPLING_MODES}, got {self.sampling_mode!r}",
        )
        need(0.0 < self.strength <= 1.0, f"strength must lie in (0, 1], got {self.strength!r}")
        need(self.guidance_scale >= 0, f"guidance_scale must be ≥ 0, got {self.guidance_scale!r}")
        finite_non_negative("image_guidance_scale")
        need(
            isinstance(self.sampling_steps, int) and self.sampling_steps >= 1, "sampling_steps must be an integer ≥ 1"
        )
        # img2img denoises only the last int(steps × strength) of the schedule; zero fails deep in diffusers.
        need(
            self.sampling_mode in ("noise", "editor") or int(self.sampling_steps * self.strength) >= 1,
            f"{self.sampling_mode} runs int(sampling_steps × strength) = int({self.sampling_steps} × {self.strength}) "
            "= 0 denoising steps; raise sampling_steps or strength",
        )
        finite_non_negative("edit_strength")
        need(isinstance(self.negative_diff, bool), f"negative_diff must be true or false, got {self.negative_diff!r}")
        need(isinstance(self.diff_guidance, bool), f"diff_guidance must be true or false, got {self.diff_guidance!r}")
        need(
            not (self.negative_diff and self.diff_guidance),
            "negative_diff and diff_guidance each set guidance's unconditional branch ({prompt_B, −s·D̃} or "
            "{prompt_B, 0}); choose one",
        )
        need(
            isinstance(self.candidates, int) and not isinstance(self.candidates, bool) and self.candidates >= 1,
            f"candidates must be an integer ≥ 1, got {self.candidates!r}",
        )
        need(
            self.candidates == 1 or self.sampling_mode != "inversion",
            f"candidates = {self.candidates} with sampling_mode 'inversion': inversion draws no noise, so every "
            "candidate would be the same image; use candidates = 1 or another mode",
        )
        need(
            number(self.share_attention) and 0 <= self.share_attention <= 1,
            f"share_attention must lie in [0, 1], got {self.share_attention!r}",
        )
        need(
            self.share_attention == 0 or self.sampling_mode == "inversion",
            f"share_attention = {self.share_attention} needs sampling_mode 'inversion' (B's reconstruction from "
            f"its DDIM inversion is what B′ shares attention with), not {self.sampling_mode!r}",
        )
        need(
            number(self.edit_mask) and 0 <= self.edit_mask < 1,
            f"edit_mask must lie in [0, 1), got {self.edit_mask!r}",
        )
        need(
            self.edit_mask == 0 or self.sampling_mode == "inversion",
            f"edit_mask = {self.edit_mask} needs sampling_mode 'inversion' (outside the mask B′ follows B's DDIM "
            f"inversion path), not {self.sampling_mode!r}",
        )
        need(
            isinstance(self.direct_inversion, bool),
            f"direct_inversion must be true or false, got {self.direct_inversion!r}",
        )
        need(
            not self.direct_inversion or self.sampling_mode == "inversion",
            f"direct_inversion needs sampling_mode 'inversion' (it corrects B′ by B's DDIM inversion path), "
            f"not {self.sampling_mode!r}",
        )

    def draw_settings(self) -> DrawSettings:
        """The fields a backbone draws B′ with, as one object (see `DrawSettings`)."""
        return DrawSettings(
            mode=self.sampling_mode,
            strength=self.strength,
            guidance_scale=self.guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
            steps=self.sampling_steps,
            share_attention=self.share_attention,
            edit_mask=self.edit_mask,
            direct_inversion=self.direct_inversion,
        )

    def needs_pair_captions(self, editor: bool, prompts_given: bool = False) -> bool:
        """Whether fitting reads captions of A and A′ (step ①; the captioner's when none are given):
        the text half of the CLIP loss's delta (α > 0), or the prompts of A and A′ with prompt_source
        "caption" where a loss reads prompts (not an instruction editor's L_tc alone; not when the
        prompts are given). No fit (steps = 0) reads any. editor: the model is an instruction editor."""
        if self.steps == 0:
            return False
        if self.use_clip_loss and self.alpha > 0:
            return True
        prompts_read = not editor or (self.use_clip_loss and self.clip_loss_space == "in-context")
        return prompts_read and not prompts_given and self.prompt_source == "caption"

    def needs_b_caption(self, editor: bool) -> bool:
        """Whether B is captioned when no prompt_B is given: a text-to-image model draws B′ from B's
        caption with prompt_source "caption"; an instruction editor's instruction is the DIFF tokens
        alone, and it describes B only to fit for it (`lambda_clip_b` > 0)."""
        if editor:
            return self.lambda_clip_b > 0 and self.steps > 0 and self.prompt_source == "caption"
        return self.prompt_source == "caption"

    def drawn_on(self, model_default: InversionConfig, editor: bool) -> InversionConfig:
        """This config as a model of the other kind draws it: tokens fitted on an instruction editor
        and applied to a text-to-image model (or back) take that model's drawing settings
        (`DRAWING_FIELDS` of `model_default`), since the other kind's mean nothing there; unchanged
        when the kinds agree. editor: whether the drawing model is an instruction editor."""
        if editor == (self.sampling_mode == "editor"):
            return self
        return self.replace(**{name: getattr(model_default, name) for name in DRAWING_FIELDS})

    def replace(self, **changes: Any) -> InversionConfig:
        """A copy with `changes` applied (and validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise DiffinvError(f"invalid configuration: unknown option(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InversionConfig:
        """Inverse of `to_json`; options unknown to this version are ignored."""
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class DrawSettings:
    """How a backbone draws one B′ (`sample` of each class in `backbones`): the drawing half of
    `InversionConfig`, made by `InversionConfig.draw_settings()`, which has validated the values.
    Each field means what the `InversionConfig` field of the name in brackets means.

    mode (sampling_mode): "img2img", "noise", "inversion" (DDIM), "edit-friendly" (DDPM) or
        "editor" (an instruction editor's only mode); a backbone refuses a mode it cannot draw in.
    strength: how far B is noised ("img2img") or inverted (the inversion modes). Not part of an
        editor's drawing: it denoises from pure noise with B as its image condition, so it does
        not read `strength`, whatever its value.
    guidance_scale: classifier-free guidance (an editor's text guidance s_T).
    image_guidance_scale: an editor's image guidance s_I; a text-to-image model has no image
        branch and does not read it.
    steps (sampling_steps): the scheduler's denoising steps.
    share_attention, edit_mask, direct_inversion: options of the DDIM inversion ("inversion");
        anywhere else (another mode, an editor) they are refused unless off.

    What shapes the text states rather than the drawing (edit_strength, negative_diff,
    diff_guidance) and the choice among several drawings (candidates) stay with the pipeline.
    """

    mode: str
    strength: float
    guidance_scale: float
    image_guidance_scale: float
    steps: int
    share_attention: float
    edit_mask: float
    direct_inversion: bool

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise DiffinvError(f"sampling mode must be one of {SAMPLING_MODES}, got {self.mode!r}")

    @property
    def inversion(self) -> str | None:
        """The inversion B′ is drawn from: "ddim", "edit-friendly", or None (img2img, noise, editor)."""
        return INVERSION_MODES.get(self.mode)


# Fields that size a run to its model — step counts, learning rates, where prompts come from,
# guidance, resolution — rather than choose the method. A model's descriptor (diffinv.json) may
# change them; a preset leaves them to the model.
BUDGET_FIELDS = (
    "steps",
    "learning_rate",
    "prompt_source",
    "pez_prompt_len",
    "pez_steps",
    "pez_lr",
    "pez_weight_decay",
    "resolution",
    "sampling_steps",
    "guidance_scale",
    "image_guidance_scale",
)
METHOD_FIELDS = tuple(f.name for f in fields(InversionConfig) if f.name not in BUDGET_FIELDS)
# Fields that say how B′ is drawn, which a model's own defaults give when tokens come from a model of
# the other kind (`InversionConfig.drawn_on`).
DRAWING_FIELDS = (
    "resolution",
    "sampling_mode",
    "strength",
    "guidance_scale",
    "image_guidance_scale",
    "sampling_steps",
    "edit_strength",
    "negative_diff",
    "diff_guidance",
    "candidates",
    "share_attention",
    "edit_mask",
    "direct_inversion",
)

# Named presets: the method fields they set. "paper" sets every method field to the paper's value
# (or, where the paper is silent, to the value this project kept for the paper's method), with one
# exception: the paper optimises D̃ "in a hard prompt manner" (Sec. 2) and the preset keeps it soft,
# as every recorded `paper` figure was measured (hard against soft: docs/results.md).
# "in-context" (beyond the paper; docs/results.md §6): the paper's method with the CLIP loss taken
# in the prompts' context and L_tc summed over the latent — chosen on the shapes world's
# development triplets, default there; Stable Diffusion keeps the paper's method until measured.
_PAPER_METHOD = {name: getattr(InversionConfig(), name) for name in METHOD_FIELDS}
PRESETS: dict[str, dict[str, Any]] = {
    "paper": _PAPER_METHOD,
    "in-context": {**_PAPER_METHOD, "clip_loss_space": "in-context", "tc_reduction": "sum"},
}


def check_sampling_mode(mode: str, model: str, editor: bool) -> None:
    """Refuse a sampling mode the model cannot draw in: "editor" is an instruction editor's only
    mode (`backbones.editor`), and a text-to-image model has every other."""
    allowed = ("editor",) if editor else TEXT_TO_IMAGE_MODES
    if mode not in allowed:
        kind = "an instruction editor" if editor else "a text-to-image model"
        raise DiffinvError(
            f"sampling mode {mode!r} does not apply to {model!r}, {kind}; "
            f"choose {' or '.join(repr(choice) for choice in allowed)}"
        )


def preset(name: str, base: InversionConfig | None = None) -> InversionConfig:
    """`base` (default: the paper's configuration) with the method of preset `name`.

    The budget fields (`BUDGET_FIELDS`) stay `base`'s, so a preset runs at the model's own step
    counts. On a Stable Diffusion model, whose defaults are the paper's, `preset("paper")` is
    exactly `InversionConfig()`. A model whose budget depends on the start of D̃ (the shapes
    world's editor: no fit from its encoder, 200 steps from zeros) needs `resolve_config` with its
    card's `init_budgets`, as `ModelCard.config_for` and `DifferenceInversion.config_for` do.
    """
    return resolve_config(base or InversionConfig(), preset_name=name)


def resolve_config(
    base: InversionConfig,
    *,
    preset_name: str | None = None,
    changes: dict[str, Any] | None = None,
    init_budgets: dict[str, dict[str, Any]] | None = None,
    explicit: frozenset[str] | set[str] = frozenset(),
) -> InversionConfig:
    """A model's configuration for one run: `base` (its defaults), then the method of preset
    `preset_name`, then `changes` (the user's), validated once at the end.

    init_budgets: the model's budget per start of D̃ (`ModelCard.init_budgets`, e.g. the shapes
        editor's {"zeros": {"steps": 200}}). When the run starts D̃ differently from `base`, that
        start's budget replaces `base`'s, except for the fields in `changes` or `explicit` (fields
        the user set elsewhere, e.g. the bench's --set), so `--init zeros` alone runs the model's
        zero-start fit rather than `base`'s zero steps.
    An instruction editor (`base.sampling_mode == "editor"`) keeps drawing in its only mode
    under a preset.
    """
    values = dataclasses.asdict(base)
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise DiffinvError(f"unknown preset {preset_name!r}; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset_name])
        if base.sampling_mode == "editor":
            values["sampling_mode"] = "editor"
    changes = dict(changes or {})
    unknown = set(changes) - set(values)
    if unknown:
        raise DiffinvError(f"invalid configuration: unknown option(s) {sorted(unknown)}")
    values.update(changes)
    if values["init"] != base.init:
        kept = set(changes) | set(explicit)
        budget = (init_budgets or {}).get(values["init"], {})
        values.update({name: value for name, value in budget.items() if name not in kept})
    return InversionConfig(**values)
