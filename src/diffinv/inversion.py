"""Algorithm 1 of Difference Inversion, one named function per step.

    ① caption_pairs          cap_A, cap_A′ from the captioner (of each example pair, in one call)
    ② interpolated_delta     D_inter = slerp(E_I(A′) − E_I(A), E_T(cap_A′) − E_T(cap_A); α)
    ③ prompt_pairs           prompt_A, prompt_A′ (PEZ or the captions);  latent_pair: z_A, z_A′
    ④ init_diff_tokens       D̃ ← 0
    ⑤ noised_pair            t, ε ~ U{0…T−1}, N(0, I) independently for A and A′; q(z, t, ε)
    ⑥ token_consistency_loss ε_θ(z_A,t, {prompt_A′, −D̃}) and ε_θ(z_A′,t, {prompt_A, +D̃}), one UNet call
                             (on an instruction editor: the image A′ or A, and {"", ∓D̃}; backbones.editor)
    ⑦ clip_loss              1 − cos(D̃ in CLIP space, D_inter)
       fit_diff_tokens       the loop: L = λ_tc L_tc + λ_clip L_clip, AdamW on D̃ only
       (beyond the paper: + λ_clip_b clip_loss_on_b, the CLIP loss in prompt_B's context;
       several example pairs of one edit: one D̃, each loss the mean over the pairs, `PairGroups`)

Everything else (UNet, VAE, text encoders, CLIP) is frozen; D̃ is the only leaf with a gradient.
Longer than this project's usual 400 lines on purpose: Algorithm 1 reads in one file, each step
beside the loop that calls it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .backbones.sd import StableDiffusionBackbone
from .backbones.text_slots import slot_token_ids
from .captioners import Captioner
from .clip_space import ClipSpace, delta, slerp
from .config import InversionConfig
from .diff_encoder import pool_predictions
from .errors import DiffinvError, DiffinvWarning
from .images import WorkingPair
from .pez import TokenTable, invert_prompts, random_token_ids


@dataclass
class PreparedPair:
    """What steps ①–③ compute from (A, A′) before the optimisation."""

    caption_a: str
    caption_a_prime: str
    prompt_a: str
    prompt_a_prime: str
    target_delta: torch.Tensor  # (D,) unit vector D_inter in CLIP's joint space
    latents: torch.Tensor | None  # (2, C, h, w): z_A, z_A′ (scaled VAE latents); None with no fit (steps = 0)
    text_delta_norm: float | None = None  # ‖D_T‖; None where the text delta was not computed (α = 0)
    effective_alpha: float | None = None  # the α D_inter was made with: 0 where D_T was degenerate
    prompt_b: str | None = None  # prompt_B, when the tokens are fitted for one B (`lambda_clip_b` > 0)
    encoded: torch.Tensor | None = None  # (n, d): the DIFF-token encoder's D̃, with init="encoder" or "auto"
    images: WorkingPair | None = None  # A and A′ at their working size, with init="auto" (`encoder_check`)


# ① ---------------------------------------------------------------------------------------
def caption_pairs(captioner: Captioner, pairs: list[tuple[Image.Image, Image.Image]]) -> list[tuple[str, str]]:
    """(cap_A, cap_A′) of each (A, A′) pair (one pair: the paper's step), in one captioner call."""
    captions = captioner([image for pair in pairs for image in pair])
    return [(captions[2 * k], captions[2 * k + 1]) for k in range(len(pairs))]


# ② ---------------------------------------------------------------------------------------
# Below this norm the text delta of unit-normalised CLIP features is rounding noise, not a
# direction: one bfloat16 forward pass moves a feature by about 0.01 (0.006–0.012 measured, fp32
# against bf16, in the tiny and shapes-world CLIPs), while captions differing in one word lie
# ≥ 0.13 apart even in a random CLIP. Identical captions give exactly 0.
MIN_TEXT_DELTA_NORM = 0.02


class InterpolatedDelta(NamedTuple):
    """Step ②'s result; the fields are named as `PreparedPair`'s (`PreparedPair(**d._asdict(), …)`)."""

    target_delta: torch.Tensor  # (D,) unit vector D_inter
    text_delta_norm: float | None  # ‖D_T‖, None where α = 0 made the text delta unnecessary
    effective_alpha: float  # α as asked, or 0.0 where D_T was degenerate


def interpolated_delta(
    clip: ClipSpace,
    a: Image.Image,
    a_prime: Image.Image,
    caption_a: str,
    caption_a_prime: str,
    alpha: float,
    image_features: torch.Tensor | None = None,
) -> InterpolatedDelta:
    """D_inter (D,): slerp between the image delta (α = 0) and the text delta (α = 1).

    A degenerate text delta — ‖D_T‖ < `MIN_TEXT_DELTA_NORM`, e.g. the same caption for A and A′ —
    has no direction to interpolate towards (slerp would normalise noise to full weight): D_inter
    is then the image delta alone (effective α = 0), with a `DiffinvWarning` naming the captions.
    With α = 0 the captions are not encoded at all. image_features: CLIP's features of A and A′
    (2, D) where the caller has them already.
    """
    image = clip.image_features([a, a_prime]) if image_features is None else image_features
    image_delta = delta(image[0], image[1])
    if alpha == 0:
        return InterpolatedDelta(F.normalize(image_delta.float(), dim=0), None, 0.0)
    text = clip.text_features([caption_a, caption_a_prime])
    text_delta = delta(text[0], text[1])
    norm = text_delta.norm().item()
    if norm < MIN_TEXT_DELTA_NORM:
        warnings.warn(
            f"the captions of A and A′ ({caption_a!r}, {caption_a_prime!r}) give a degenerate text delta "
            f"(‖D_T‖ = {norm:.2g} < {MIN_TEXT_DELTA_NORM}): D_inter falls back to the image delta alone, "
            f"α = {alpha} is ignored (effectively 0); give captions that describe the change",
            DiffinvWarning,
            stacklevel=2,
        )
        return InterpolatedDelta(F.normalize(image_delta.float(), dim=0), norm, 0.0)
    return InterpolatedDelta(slerp(image_delta, text_delta, alpha), norm, alpha)


# ③ ---------------------------------------------------------------------------------------
def prompt_pairs(
    clip: ClipSpace,
    pairs: list[tuple[Image.Image, Image.Image]],
    captions: list[tuple[str, str]],
    config: InversionConfig,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[tuple[str, str]]:
    """(prompt_A, prompt_A′) of each (A, A′) pair (one pair: the paper's step): PEZ hard prompts
    (the paper; one batched inversion of every image, starts drawn in order from the CPU
    `generator`: a pair alone takes its first two draws) or the pairs' `captions` (faster)."""
    if config.prompt_source == "caption":
        return list(captions)
    images = [image for pair in pairs for image in pair]
    inverted = pez_prompts(clip, images, config, [generator] * len(images), progress)
    return [(inverted[2 * k], inverted[2 * k + 1]) for k in range(len(pairs))]


def pez_prompts(
    clip: ClipSpace,
    images: list[Image.Image],
    config: InversionConfig,
    generators: list[torch.Generator | None],
    progress: bool = True,
) -> list[str]:
    """K PEZ hard prompts, one per image, in one batched optimisation (`pez.invert_prompts`) with
    the config's PEZ settings. Image k's start (pez_prompt_len token ids) is drawn from
    generators[k] (CPU; None: torch's global one), in order, so a generator listed twice gives
    its first and second draws; each prompt ends as a run of its own from that start would."""
    starts = torch.cat(
        [random_token_ids(clip.tokenizer, clip.vocabulary.shape[0], (1, config.pez_prompt_len), g) for g in generators]
    )
    return invert_prompts(
        clip, [[image] for image in images], starts, config.pez_steps, config.pez_lr, config.pez_weight_decay, progress
    ).texts


def pez_prompt(
    clip: ClipSpace,
    image: Image.Image,
    config: InversionConfig,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> str:
    """A PEZ hard prompt for one image with the config's PEZ settings (also used for prompt_B)."""
    return pez_prompts(clip, [image], config, [generator], progress)[0]


def latent_pair(backbone: StableDiffusionBackbone, a: Image.Image, a_prime: Image.Image) -> torch.Tensor:
    """(2, C, h, w): z_A and z_A′ (the two images must have the same size)."""
    return backbone.encode_images([a, a_prime])


# ④ ---------------------------------------------------------------------------------------
def init_diff_tokens(
    config: InversionConfig,
    backbone: StableDiffusionBackbone,
    generator: torch.Generator | None = None,
    count: int = 1,
) -> torch.Tensor:
    """D̃ (count, n, d), float32 on the backbone's device, requires grad — one set per pair fitted
    together: zeros (the paper), or "random" N(0, σ²) with σ the vocabulary's std. With "encoder"
    this is the correction added to the encoder's prediction, which starts at zero.

    Random draws come from a CPU generator and are then moved to the device, so one seed gives
    one start on CPU and CUDA: `generator` itself if it is on the CPU, else a CPU generator
    seeded with its initial seed (None: torch's global CPU generator).

    Hard tokens with zeros: a zero vector has no nearest token (its cosine with every row is 0,
    so the projection would put the lowest usable id in all n slots, an arbitrary word). No hard
    token is free of content, so D̃ then starts as PEZ starts its prompts: n usable vocabulary
    rows drawn uniformly (seeded as above). "random" keeps its Gaussian start, projected.
    """
    if generator is not None and generator.device.type != "cpu":
        generator = torch.Generator().manual_seed(generator.initial_seed())
    shape = (count, config.n_tokens, backbone.token_width)
    if config.init == "random":
        tokens = torch.randn(shape, generator=generator) * backbone.vocabulary.detach().float().std().item()
    elif config.hard_tokens:
        vocabulary = backbone.vocabulary.detach()
        ids = random_token_ids(backbone.tokenizer, vocabulary.shape[0], shape[:2], generator, words_only=True)
        tokens = vocabulary[ids.to(vocabulary.device)].float()
    else:
        tokens = torch.zeros(shape)
    return tokens.to(backbone.device, torch.float32).requires_grad_(True)


# ⑤ ---------------------------------------------------------------------------------------
def noised_pair(
    backbone: StableDiffusionBackbone, latents: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy, timesteps, targets) for latents (2K, C, h, w) = (z_A, z_A′) of K pairs: a timestep
    ~ U{0…T−1} and ε ~ N(0, I) drawn independently for every row; targets are what the UNet
    should output.

    Both are drawn on the CPU — from `generator`, which must be a CPU generator (None: torch's
    global one) — in float32, and only then moved to the latents' device and dtype: one seed gives
    the same timesteps and noise on every device.
    """
    timesteps = torch.randint(0, backbone.num_train_timesteps, (latents.shape[0],), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    timesteps, noise = timesteps.to(latents.device), noise.to(latents.device, latents.dtype)
    return backbone.add_noise(latents, noise, timesteps), timesteps, backbone.loss_target(latents, noise, timesteps)


# ⑥ ---------------------------------------------------------------------------------------
def signed_pair(diff: torch.Tensor) -> torch.Tensor:
    """(2K, …) from (K, …), e.g. D̃ (K, n, d): rows −D̃_k ("before") and +D̃_k ("after") for each pair k."""
    return torch.stack([-diff, diff], dim=1).flatten(0, 1)


def token_consistency_loss(
    backbone: StableDiffusionBackbone,
    diff: torch.Tensor,
    ids: torch.Tensor,
    slot_mask: torch.Tensor,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    image_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_tc (eqs. 7–9) of K pairs (K,), both branches of all pairs in one text-encoder and one
    UNet call.

    For pair k, row 2k ("before"): z_A,t denoised with {prompt_A′, −D̃_k}; row 2k+1 ("after"):
    z_A′,t with {prompt_A, +D̃_k}. diff: (K, n, d); `ids`/`slot_mask` (2K, L) hold prompt_A′ and
    prompt_A of each pair in that order; noisy/targets (2K, C, h, w), timesteps (2K,).
    Each pair's loss is mse_before + mse_after, each row's squared error averaged over the latent's
    elements (`reduction="mean"`: the paper's eqs. 7–9, and diffusers' training scripts) or summed
    over them ("sum", beyond the paper: C·h·w times larger); it depends on its own D̃_k only.
    image_latents (2K, C, h, w): for an instruction editor, the image each row is edited from
    (`backbone.pair_conditioning`: A′ for row 2k, A for row 2k+1); None for a text-to-image model.
    """
    text_states = backbone.encode_prompt(ids, slot_mask, signed_pair(diff))
    prediction = backbone.predict(noisy, timesteps, text_states, image_latents)
    squared = (prediction.float() - targets.float()).pow(2)
    row_errors = squared.sum(dim=(1, 2, 3)) if reduction == "sum" else squared.mean(dim=(1, 2, 3))
    return row_errors.view(-1, 2).sum(dim=1)


# ⑦ ---------------------------------------------------------------------------------------
@dataclass
class PromptContext:
    """What the "in-context" CLIP loss needs of K pairs, computed once before the loop: the CLIP
    tokenization of prompt_A′ and prompt_A of each pair (the order of L_tc's rows, see
    `signed_pair`) followed by n slots (2K, L), and the features of the two prompts alone (2K, D)."""

    ids: torch.Tensor
    slot_mask: torch.Tensor
    plain: torch.Tensor


def prompt_context(clip: ClipSpace, pairs: list[PreparedPair], n_tokens: int) -> PromptContext:
    prompts = [prompt for p in pairs for prompt in (p.prompt_a_prime, p.prompt_a)]
    return _context(clip, prompts, n_tokens)


def prompt_b_context(clip: ClipSpace, pairs: list[PreparedPair], n_tokens: int) -> PromptContext:
    """`PromptContext` of prompt_B of each pair (K rows), for `clip_loss_on_b`."""
    missing = [i for i, p in enumerate(pairs) if not p.prompt_b]
    if missing:
        raise DiffinvError(
            f"lambda_clip_b > 0 fits the DIFF tokens for one B, but pair(s) {missing} have no prompt_B; "
            "fit them through `analogy` (or pass prompt_b)"
        )
    return _context(clip, [p.prompt_b for p in pairs], n_tokens)


def _context(clip: ClipSpace, prompts: list[str], n_tokens: int) -> PromptContext:
    length = clip.text_model.config.max_position_embeddings
    ids, slot_mask = slot_token_ids(clip.tokenizer, prompts, n_tokens, length)
    return PromptContext(ids.to(clip.device), slot_mask.to(clip.device), clip.text_features(prompts))


def clip_loss(
    clip: ClipSpace, diff: torch.Tensor, target_delta: torch.Tensor, space: str, context: PromptContext | None = None
) -> torch.Tensor:
    """L_clip (eq. 6) of K pairs (K,): cosine distance between D̃_k (K, n, d), brought into CLIP's
    joint space, and D_inter of pair k (K, D).

    "text-tower": D̃ alone, "<bos> D̃ <eos>", through CLIP's text tower. "token-mean": the mean
    token. "in-context" (beyond the paper): what D̃ changes in a prompt — the feature of
    {prompt_A, +D̃} minus that of prompt_A should point along D_inter, and {prompt_A′, −D̃} minus
    prompt_A′ along −D_inter (the mean of the two distances). Content of A that D̃ carries along
    changes nothing in A's prompt, but its negation moves A′'s prompt away from the direction,
    so the loss pushes it out — the text-space counterpart of the token consistency loss.
    """
    if space == "in-context":
        # Rows as in L_tc: {prompt_A′, −D̃_k} should move along −D_inter, {prompt_A, +D̃_k} along +D_inter.
        moved = clip.prompt_slot_features(context.ids, context.slot_mask, signed_pair(diff)) - context.plain
        targets = signed_pair(target_delta)  # (2K, D)
        distances = 1 - F.cosine_similarity(moved.float(), targets.float(), dim=-1)
        return distances.view(-1, 2).mean(dim=1)
    features = clip.slot_features(diff) if space == "text-tower" else diff.mean(dim=1)  # else "token-mean"
    return 1 - F.cosine_similarity(features.float(), target_delta.float(), dim=-1)


def clip_loss_on_b(
    clip: ClipSpace, diff: torch.Tensor, target_delta: torch.Tensor, context: PromptContext
) -> torch.Tensor:
    """The in-context CLIP loss in prompt_B's context (beyond the paper), (K,): 1 − cos of
    CLIP-text({prompt_B, +D̃_k}) − CLIP-text(prompt_B) with D_inter of pair k. diff (K, n, d),
    target_delta (K, D), context from `prompt_b_context`.

    The other CLIP losses judge D̃ where it was learned, beside prompt_A and prompt_A′; this one
    where it is used. What D̃ does to a prompt depends on the prompt (the text encoder is
    contextual), and B′ is drawn from {prompt_B, D̃}, so the direction is asked of that change:
    the tokens then depend on B, and must be fitted again for another B.
    """
    moved = clip.prompt_slot_features(context.ids, context.slot_mask, diff) - context.plain
    return 1 - F.cosine_similarity(moved.float(), target_delta.float(), dim=-1)


def check_compatible(backbone: StableDiffusionBackbone, clip: ClipSpace, config: InversionConfig) -> None:
    """Refuse combinations whose spaces do not match, before any work is done.

    The `text-tower` CLIP loss needs a CLIP whose text tower *is* the model's text encoder (for
    SDXL: encoder 2, whose columns `backbone.clip_dims` of D̃ the CLIP loss sees). Besides
    the widths, the token-embedding tables are compared cheaply: their shapes, then a fixed sample
    of rows (evenly spaced ids, first and last included), which must agree to a relative
    (Frobenius) error of 1e-2. bfloat16 storage rounds each entry by at most 2⁻⁹ relative (both
    tables in bf16: 2⁻⁸ ≈ 0.004), so a matching CLIP in fp16/bf16 passes; unrelated tables differ
    by about √2, and one mismatched row in the sample by ≥ 0.2.
    """
    clip_table, model_table = clip.vocabulary, backbone.clip_vocabulary
    if (config.use_clip_loss and config.clip_loss_space in ("text-tower", "in-context")) or config.lambda_clip_b > 0:
        use_matching_clip = "use the CLIP that matches the model (--clip-model)"
        if clip_table.shape[1] != model_table.shape[1]:
            raise DiffinvError(
                f"the CLIP text tower has token width {clip_table.shape[1]} but the model's text encoder "
                f"{model_table.shape[1]}; {use_matching_clip}"
            )
        if clip_table.shape[0] != model_table.shape[0]:
            raise DiffinvError(
                f"the CLIP text tower has {clip_table.shape[0]} token embeddings but the model's text encoder "
                f"{model_table.shape[0]}, so it is not that text encoder (the text-tower CLIP loss needs it); "
                f"{use_matching_clip}"
            )
        rows = torch.linspace(0, model_table.shape[0] - 1, min(32, model_table.shape[0])).round().long().unique()
        ours = model_table.detach()[rows.to(model_table.device)].float().cpu()
        theirs = clip_table.detach()[rows.to(clip_table.device)].float().cpu()
        error = ((ours - theirs).norm() / ours.norm().clamp_min(1e-12)).item()
        if not error <= 1e-2:  # also catches NaN
            raise DiffinvError(
                f"the CLIP text tower's token embeddings differ from the model's text encoder's (relative "
                f"difference {error:.2g} on {len(rows)} sampled rows), so it is another text encoder (the "
                f"text-tower CLIP loss needs the model's own); {use_matching_clip}"
            )
    clip_width = model_table.shape[1]
    if config.use_clip_loss and config.clip_loss_space == "token-mean" and clip.joint_width != clip_width:
        raise DiffinvError(
            f"clip_loss_space='token-mean' needs token width = CLIP joint width, got {clip_width} "
            f"and {clip.joint_width}; use clip_loss_space='text-tower'"
        )


# Several example pairs of one edit ------------------------------------------------------------
class PairGroups:
    """Which D̃ each of K pairs trains: pair k trains D̃ of group `groups[k]` (G groups, numbered
    0 … G − 1 in order of first appearance, none empty).

    Independent pairs (`fit_many`, or one pair) are K groups of one, and every method below is then
    the identity, so that path computes exactly what it did before groups existed. Several example
    pairs of one edit share a group (beyond the paper, which fits one pair): each loss is taken on
    every pair — its L_tc with its own latents and prompts, its in-context CLIP loss beside its own
    prompts — and a group's loss is the mean over its pairs, so the per-step scale (and the
    learning rate's meaning) is that of one pair whatever the number of pairs. D_inter of a group
    is the mean of its pairs' D_inter, normalised; the DIFF-token encoder's start the mean of its
    pairs' predictions (`diff_encoder.pool_predictions`).
    """

    def __init__(self, groups: list[int], device: torch.device):
        count = max(groups) + 1 if groups else 0
        if sorted(set(groups)) != list(range(count)):
            raise DiffinvError(f"pair groups must number 0 … G − 1 with none empty, got {groups}")
        self.count = count
        self.alone = count == len(groups)  # every pair its own D̃: nothing to gather or average
        self.index = torch.tensor(groups, device=device)  # (K,): each pair's group
        self.sizes = torch.bincount(self.index, minlength=count)  # (G,): pairs per group

    def per_pair(self, values: torch.Tensor) -> torch.Tensor:
        """(G, …) → (K, …): each pair gets its group's row."""
        return values if self.alone else values[self.index]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """(K, …) → (G, …): each group's mean over its pairs."""
        if self.alone:
            return values
        total = torch.zeros((self.count, *values.shape[1:]), device=values.device, dtype=values.dtype)
        total = total.index_add(0, self.index.to(values.device), values)
        return total / self.sizes.to(values.device).view(-1, *([1] * (values.dim() - 1)))

    def targets(self, pairs: list[PreparedPair]) -> torch.Tensor:
        """D_inter of each group (G, D): a pair's own, or the normalised mean of the group's pairs'."""
        target_delta = torch.stack([p.target_delta for p in pairs])  # (K, D)
        return target_delta if self.alone else F.normalize(self.mean(target_delta.float()), dim=-1)

    def encoded(self, pairs: list[PreparedPair]) -> torch.Tensor:
        """The DIFF-token encoder's D̃ of each group (G, n, d): a pair's own prediction, or the
        pooled predictions of the group's pairs (`diff_encoder.pool_predictions`)."""
        encoded = torch.stack([encoded_tokens(p) for p in pairs])  # (K, n, d)
        if self.alone:
            return encoded
        members = [(self.index == g).to(encoded.device) for g in range(self.count)]
        return torch.stack([pool_predictions(encoded[mask]) for mask in members])


# The loop ------------------------------------------------------------------------------------
def encoded_tokens(pair: PreparedPair) -> torch.Tensor:
    """The DIFF-token encoder's D̃ (n, d) for `pair`, which init="encoder" starts from."""
    if pair.encoded is None:
        raise DiffinvError("init='encoder' needs each pair's encoded tokens (DifferenceInversion.prepare makes them)")
    return pair.encoded


def fit_diff_tokens(
    backbone: StableDiffusionBackbone,
    clip: ClipSpace,
    pairs: PreparedPair | list[PreparedPair],
    config: InversionConfig,
    generator: torch.Generator | None = None,
    progress: bool = True,
    groups: list[int] | None = None,
) -> tuple[torch.Tensor, list[dict[str, list[float]]]]:
    """Steps ④–⑦ repeated `config.steps` times, for one pair or for K independent pairs at once.

    K pairs share every text-encoder, UNet and CLIP call (batch 2K), but each pair's loss depends
    on its own D̃_k only and AdamW works element-wise, so each D̃_k follows the same dynamics as a
    fit on its own (with other noise draws). Latents of all pairs must have one size.
    Returns D̃ (K, n, d) float32 — (n, d) if one pair was passed — and each pair's per-step
    history of the three losses (`loss` is the total, with `lambda_clip_b`'s term when it is on).
    With `config.hard_tokens` the forward passes used the projection (and D̃ started at
    vocabulary rows, see `init_diff_tokens`); `harden` finishes it. With `config.init="encoder"`
    D̃ is each pair's `encoded` tokens plus a fitted correction (weight decay pulls the correction,
    not D̃, towards zero); with 0 steps, the encoded tokens as they are (no optimiser, no
    latents read) and an empty history.

    groups: several example pairs of one edit (`PairGroups`): pair k trains D̃ of group groups[k],
    each group's losses are the means over its pairs; D̃ is then (G, n, d) with one history per
    group. None: every pair its own D̃, as above.
    """
    single = isinstance(pairs, PreparedPair)
    pairs = [pairs] if single else pairs
    check_compatible(backbone, clip, config)
    if groups is not None and len(groups) != len(pairs):
        raise DiffinvError(f"{len(groups)} group numbers for {len(pairs)} pairs")
    grouped = PairGroups(list(range(len(pairs))) if groups is None else groups, backbone.device)
    if config.steps == 0:  # only with init="encoder" (`InversionConfig.validate`): nothing to fit
        diff = grouped.encoded(pairs).to(backbone.device, torch.float32)
        curves = [{name: [] for name in ("loss", "loss_tc", "loss_clip")} for _ in range(grouped.count)]
        return (diff[0], curves[0]) if single else (diff, curves)
    if len({tuple(p.latents.shape) for p in pairs}) > 1:
        raise DiffinvError("pairs fitted together must have latents of one size; group them by size")
    latents = torch.cat([p.latents for p in pairs])  # (2K, C, h, w): z_A, z_A′ of each pair
    target_delta = grouped.targets(pairs)  # (G, D)
    target_by_pair = grouped.per_pair(target_delta)  # (K, D): each pair's group's D_inter
    # An editor's instruction is the DIFF tokens alone; a text-to-image model's text is the paper's prompts.
    texts = [prompt for p in pairs for prompt in (p.prompt_a_prime, p.prompt_a)]
    ids, slot_mask = backbone.slot_ids([""] * len(texts) if backbone.takes_instructions else texts, config.n_tokens)
    image_latents = backbone.pair_conditioning(latents)  # None for a text-to-image model
    diff = init_diff_tokens(config, backbone, generator, count=grouped.count)  # (G, n, d)
    encoded = None
    if config.init == "encoder":
        encoded = grouped.encoded(pairs).to(diff.device, diff.dtype)
    optimizer = torch.optim.AdamW([diff], lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(backbone.device.type, enabled=backbone.dtype == torch.float16)
    # hard DIFF tokens: whole words only, so that their words can be exported and pasted back
    table = TokenTable.of(backbone.vocabulary, backbone.tokenizer, words_only=True) if config.hard_tokens else None
    in_context = config.use_clip_loss and config.clip_loss_space == "in-context"
    context = prompt_context(clip, pairs, config.n_tokens) if in_context else None
    context_b = prompt_b_context(clip, pairs, config.n_tokens) if config.lambda_clip_b > 0 else None
    zero = torch.zeros(grouped.count, device=backbone.device)
    history, report_every = [], max(1, config.steps // 25)  # the bar's losses sync the host: ~25 times a run

    bar = tqdm(range(config.steps), desc="DIFF tokens", disable=not progress, leave=False)
    for step in bar:
        used = table.project(diff)[0] if config.hard_tokens else diff
        if encoded is not None:
            used = encoded + used
        used_by_pair = grouped.per_pair(used)  # (K, n, d): each pair's D̃ (its group's)
        loss_tc = loss_clip = zero
        if config.use_token_consistency:
            noisy, timesteps, targets = noised_pair(backbone, latents, generator)
            each = token_consistency_loss(
                backbone, used_by_pair, ids, slot_mask, noisy, timesteps, targets, config.tc_reduction, image_latents
            )  # (K,): one per pair
            loss_tc = grouped.mean(each)
        if config.use_clip_loss and in_context:  # beside each pair's own prompts
            moved = clip_loss(clip, used_by_pair[..., backbone.clip_dims], target_by_pair, "in-context", context)
            loss_clip = grouped.mean(moved)
        elif config.use_clip_loss:  # D̃ alone: once per group
            # SDXL: the CLIP loss sees the columns of encoder 2 only (see backbones.sdxl).
            loss_clip = clip_loss(clip, used[..., backbone.clip_dims], target_delta, config.clip_loss_space, context)
        loss = config.lambda_tc * loss_tc + config.lambda_clip * loss_clip  # (G,): one per D̃
        if context_b is not None:
            loss_b = clip_loss_on_b(clip, used_by_pair[..., backbone.clip_dims], target_by_pair, context_b)
            loss = loss + config.lambda_clip_b * grouped.mean(loss_b)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        history.append(torch.stack([loss.detach(), loss_tc.detach(), loss_clip.detach()], dim=1))  # (G, 3)
        if progress and (step % report_every == 0 or step == config.steps - 1):
            bar.set_postfix(tc=f"{loss_tc.mean().item():.4f}", clip=f"{loss_clip.mean().item():.4f}")

    trace = torch.stack(history, dim=1).cpu().tolist() if history else [[] for _ in range(grouped.count)]
    curves = [
        {name: [row[i] for row in rows] for i, name in enumerate(("loss", "loss_tc", "loss_clip"))} for rows in trace
    ]
    diff = diff.detach().float() if encoded is None else (encoded + diff).detach().float()
    return (diff[0], curves[0]) if single else (diff, curves)
