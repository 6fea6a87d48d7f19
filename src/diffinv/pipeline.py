"""`DifferenceInversion`: A : A′ :: B : B′ with a Stable Diffusion model — wiring only.

di = DifferenceInversion.from_pretrained("stabilityai/stable-diffusion-2-1")
tokens = di.fit(a, a_prime)            # learn D̃ from the pair (Algorithm 1)
b_prime = di.apply(tokens, b, seed=0)  # draw B′ from {prompt_B, D̃}
tokens = di.fit([(a1, a1_prime), (a2, a2_prime)])  # one D̃ from several examples of one edit

Loading is `loading.py`'s, reading images `images.py`'s, Algorithm 1 `inversion.py`'s and the
samplers the backbones' and `sampling.py`'s. Longer than this project's usual 400 lines: the
class is the library's documented API (from_pretrained, config_for, working_pair, prepare, fit,
fit_many, describe, apply, draw, candidate_scores, analogy), and most of its length is those
methods' contracts; each public method that takes pictures converts them once and hands the
working images to a private twin (`_prepare`, `_apply`), which `analogy` calls directly.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from PIL import Image

from .backbones import StableDiffusionBackbone
from .captioners import Blip2Captioner, Captioner, ClipRetrievalCaptioner
from .checks import check_resolution, hub_offline
from .clip_space import ClipSpace, default_clip_for
from .config import INVERSION_MODES, InversionConfig, check_sampling_mode, resolve_config
from .diff_encoder import ENCODER_DIR, DiffEncoder, check_encoder_fits
from .encoder_check import EncoderCheck, check_pairs
from .errors import DiffinvError, DiffinvWarning
from .images import ImageInput, WorkingPair, as_rgb, fit_to, working_size
from .inversion import (
    PreparedPair,
    caption_pairs,
    fit_diff_tokens,
    interpolated_delta,
    latent_pair,
    pez_prompt,
    pez_prompts,
    prompt_pairs,
)
from .loading import backbone_class, load_or_explain, resolve_device_dtype
from .memory import apply_low_memory, check_memory_mode
from .model_card import model_card
from .pez import harden
from .tokens import DiffTokens

Pair = tuple[ImageInput, ImageInput]  # (A, A′)


def _is_pair(item) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[0], (tuple, list))


def example_pairs(a, a_prime=None) -> list[Pair]:
    """The (A, A′) pairs `fit` is given: `a` and `a_prime` (one pair), or `a` a list of pairs and
    `a_prime` left out. Anything else is a `DiffinvError` saying what is expected."""
    if a_prime is not None:
        if isinstance(a, (list, tuple)):
            raise DiffinvError("give either A and A′, or a list of (A, A′) pairs as the only images")
        return [(a, a_prime)]
    if not isinstance(a, (list, tuple)) or not a or not all(_is_pair(item) for item in a):
        raise DiffinvError("expected A and A′, or a non-empty list of (A, A′) pairs of one edit")
    return [tuple(item) for item in a]


def per_pair(given, count: int, name: str) -> list:
    """`given` captions or prompts as one entry per pair: None (none given), one (first, second)
    tuple (the first pair's: with several pairs the others get the captioner's or PEZ's), or a
    list of `count` such tuples or None."""
    if given is None:
        return [None] * count
    if _is_pair(given) and all(isinstance(text, str) for text in given):
        return [tuple(given)] + [None] * (count - 1)
    if isinstance(given, list) and len(given) == count and all(item is None or _is_pair(item) for item in given):
        return [None if item is None else tuple(item) for item in given]
    raise DiffinvError(
        f"{name}: expected a pair of strings (the first pair's) or a list of {count} (one per pair, None for none)"
    )


def _check_reference(config: InversionConfig, reference) -> None:
    """candidates > 1 scores each B′ against A → A′, so A and A′ must be given."""
    if config.candidates > 1 and reference is None:
        raise DiffinvError(
            f"candidates = {config.candidates} scores each B′ by its CLIP direction against A → A′: pass "
            "reference=(A, A′) (the DIFF tokens do not hold the images), or use candidates = 1"
        )
    if reference is not None and len(reference) != 2:
        raise DiffinvError("reference must be the pair (A, A′)")


class DifferenceInversion:
    """Fits DIFF tokens on (A, A′) and applies them to B.

    Args:
        backbone: the frozen Stable Diffusion model.
        clip: the CLIP whose text tower matches the backbone's text encoder.
        captioner: turns images into captions when captions are not given (None: they must be).
        default_config: the model's configuration (default: the paper's).
        diff_encoder: the model's DIFF-token encoder, which init="encoder" needs.
        init_budgets: the model's budget per start of D̃ (`ModelCard.init_budgets`), for `config_for`.
    """

    def __init__(
        self,
        backbone: StableDiffusionBackbone,
        clip: ClipSpace,
        captioner: Captioner | None = None,
        default_config: InversionConfig | None = None,
        diff_encoder: DiffEncoder | None = None,
        init_budgets: dict | None = None,
    ):
        self.backbone = backbone
        self.clip = clip
        self.captioner = captioner
        self.default_config = default_config or InversionConfig()
        self.diff_encoder = diff_encoder  # init="encoder" needs it (`diff_encoder`)
        self.init_budgets = init_budgets or {}  # the model card's budget per start of D̃ (`config_for`)

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        clip_model: str | None = None,
        captioner: Captioner | None = None,
        offline: bool | None = None,
        diff_encoder: str | os.PathLike | None = None,
        memory: str = "default",
        **pipeline_kwargs,
    ) -> DifferenceInversion:
        """Load a Stable Diffusion 1.x / 2.x, SDXL or InstructPix2Pix model (hub id or local directory) and its CLIP.

        model: a hub id, a local directory, or "shapes" for the bundled offline shapes world. A
            directory's `diffinv.json` (see `model_card`) gives its defaults and captioner. An
            InstructPix2Pix model (e.g. timbrooks/instruct-pix2pix; "shapes-editor", the world's
            editor) is fitted on and drawn with as an instruction editor (`backbones.editor`).
        clip_model: hub id or directory of a transformers `CLIPModel`; by default the one the
            descriptor names, else `clip/` inside a local model directory if present, else the
            CLIP matching the text encoder (OpenAI ViT-L/14 for SD 1.x and InstructPix2Pix,
            OpenCLIP ViT-H/14 for SD 2.x, OpenCLIP ViT-bigG/14 — encoder 2 — for SDXL).
        captioner: default the model card's (BLIP-2 unless the directory names another),
            loaded on first use.
        offline: never use the network, only local directories and the hub cache. Default:
            the `HF_HUB_OFFLINE` environment variable.
        diff_encoder: a DIFF-token encoder's directory (`diffinv encoder train -o DIR`), which
            init="encoder" starts from; default the model directory's `diff_encoder/` if it has one.
        memory: "default", or "low" for a 10–16 GB GPU: UNet checkpointing in the fit, lean attention,
            VAE slicing and tiling, and on CUDA model CPU offload between stages (`diffinv.memory`).
        pipeline_kwargs: passed to the pipeline's `from_pretrained` (e.g. `variant="fp16"`).
        """
        check_memory_mode(memory)
        card = model_card(model)
        offline = hub_offline() if offline is None else offline
        device, dtype = resolve_device_dtype(device, dtype)
        low = memory == "low"
        # Offloaded models wait on the CPU until used: they are loaded there, not onto the GPU.
        load_device = torch.device("cpu") if low and device.type == "cuda" else device
        if clip_model is None and card.clip is not None:
            clip_model = str(card.path(card.clip))
        elif clip_model is None and card.directory is not None and (card.directory / "clip").is_dir():
            clip_model = str(card.directory / "clip")
        backbone = load_or_explain(
            card.source,
            offline,
            lambda: backbone_class(card.source, offline).from_pretrained(
                card.source, load_device, dtype, local_files_only=offline, **pipeline_kwargs
            ),
        )
        backbone.model_id = card.name
        clip_model = clip_model or default_clip_for(backbone.clip_vocabulary.shape[1])
        clip = load_or_explain(
            clip_model, offline, lambda: ClipSpace.from_pretrained(clip_model, load_device, dtype, offline)
        )
        offload = apply_low_memory(backbone, clip, device) if low else None
        if captioner is None:
            candidates = card.caption_candidates()
            if candidates is not None:
                captioner = ClipRetrievalCaptioner(clip, candidates)
            else:
                make_room = offload.offload_all if offload is not None else None
                captioner = Blip2Captioner(device=device, dtype=dtype, local_files_only=offline, make_room=make_room)
        default_config = card.default_config(editor=backbone.takes_instructions)
        if diff_encoder is None and card.directory is not None and (card.directory / ENCODER_DIR).is_dir():
            diff_encoder = card.directory / ENCODER_DIR
        if diff_encoder is not None:
            diff_encoder = DiffEncoder.from_pretrained(diff_encoder).to(device)
        return cls(
            backbone,
            clip,
            captioner,
            default_config=default_config,
            diff_encoder=diff_encoder,
            init_budgets=card.init_budgets,
        )

    def config_for(self, preset: str | None = None, **changes) -> InversionConfig:
        """The model's configuration with the method of `preset` (`config.PRESETS`) and `changes`,
        on the model's budget for the start of D̃ they choose: e.g. on the shapes editor, whose
        default takes D̃ from its encoder with no fit, `config_for(init="zeros")` fits 200 steps."""
        return resolve_config(self.default_config, preset_name=preset, changes=changes, init_budgets=self.init_budgets)

    # ------------------------------------------------------------------------------------------
    def _size_for(self, image: Image.Image, config: InversionConfig) -> tuple[int, int]:
        check_resolution(config.resolution, self.backbone.native_resolution)
        resolution = config.resolution or self.backbone.native_resolution
        return working_size(image.width, image.height, resolution, self.backbone.size_multiple)

    def _working_image(self, image: ImageInput, config: InversionConfig) -> Image.Image:
        """`image` as RGB at its working size (aspect kept, see `images.working_size`)."""
        image = as_rgb(image)
        return fit_to(image, self._size_for(image, config))

    def working_pair(self, a: ImageInput, a_prime: ImageInput, config: InversionConfig) -> WorkingPair:
        """A as RGB at its working size and A′ brought to A's size, so that both share one batch:
        each read once, then handed on as they are (`prepare`, `candidate_scores` take the pair)."""
        a = self._working_image(a, config)
        return WorkingPair(a, fit_to(as_rgb(a_prime), a.size))

    def working_pairs(self, pairs: list[Pair], config: InversionConfig) -> list[WorkingPair]:
        """Example pairs of one edit at one working size (they share every batch of the fit): the
        first as `working_pair` makes it, every further A and A′ brought to the first A's size
        (`images.fit_to`: centre-cropped to its aspect ratio, then resized)."""
        first = self.working_pair(*pairs[0], config)
        return [first] + [WorkingPair(*(fit_to(as_rgb(image), first.a.size) for image in pair)) for pair in pairs[1:]]

    def _caption(self, images: list[Image.Image]) -> list[str]:
        if self.captioner is None:
            raise DiffinvError("no captioner is set: pass the captions (--caption-a/--caption-a-prime/--prompt)")
        return self.captioner(images)

    def prepare(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        config: InversionConfig,
        captions: tuple[str, str] | None = None,
        prompts: tuple[str, str] | None = None,
        seed: int = 0,
        progress: bool = True,
        prompt_b: str | None = None,
    ) -> PreparedPair:
        """Steps ①–③ of Algorithm 1. A′ is brought to A's working size so both share one batch.
        prompt_b: prompt_B, which `lambda_clip_b` > 0 needs (the tokens are then fitted for that B)."""
        return self._prepare(
            self.working_pair(a, a_prime, config), config, captions, prompts, seed, progress, prompt_b
        )

    def _prepare(
        self,
        pair: WorkingPair,
        config: InversionConfig,
        captions: tuple[str, str] | None,
        prompts: tuple[str, str] | None,
        seed: int,
        progress: bool,
        prompt_b: str | None,
    ) -> PreparedPair:
        """`prepare` on A and A′ already at their working size (`_prepare_pairs` of one pair)."""
        return self._prepare_pairs([pair], config, [captions], [prompts], seed, progress, prompt_b)[0]

    def _prepare_pairs(
        self,
        pairs: list[WorkingPair],
        config: InversionConfig,
        captions: list[tuple[str, str] | None],
        prompts: list[tuple[str, str] | None],
        seed: int,
        progress: bool,
        prompt_b: str | None,
    ) -> list[PreparedPair]:
        """Steps ①–③ for K example pairs of one edit already at their working size (K = 1: one
        pair); captions[k], prompts[k]: pair k's given ones, or None. The captioner describes every
        pair it must in one call, and PEZ inverts every missing prompt in one batched optimisation,
        its starts drawn in order from one CPU generator seeded with `seed` (pair 1's A and A′
        take the first two draws, as a pair fitted alone does). With no fit (steps = 0: D̃ is the
        encoder's prediction) A and A′ are not encoded by the VAE: no loss reads their latents."""
        if config.lambda_clip_b > 0 and not prompt_b:
            raise DiffinvError(
                f"lambda_clip_b = {config.lambda_clip_b} fits the DIFF tokens for one B and needs its prompt: "
                "use analogy (or pass prompt_b)"
            )
        self._check_encoder(config)
        features = [self.clip.image_features([a, a_prime]) for a, a_prime in pairs]  # (2, D) each: step ②'s
        encoded = [None] * len(pairs)
        if config.init in ("encoder", "auto"):  # the encoder's input is the same features
            with torch.no_grad():
                encoded = [self.diff_encoder(f[:1], f[1:])[0].float() for f in features]
        editor = self.backbone.takes_instructions
        captions, prompts = list(captions), list(prompts)
        needs_captions = [config.needs_pair_captions(editor, given is not None) for given in prompts]
        # An editor's L_tc has no prompts beside the tokens: only the in-context CLIP loss reads them.
        in_context = config.use_clip_loss and config.clip_loss_space == "in-context"
        for k in range(len(pairs)):
            if prompts[k] is None and editor and not in_context:
                prompts[k] = ("", "")
            if config.steps == 0:  # the encoder's D̃ as it is: no loss reads prompts or captions
                prompts[k], captions[k] = prompts[k] or ("", ""), captions[k] or ("", "")
        uncaptioned = [k for k in range(len(pairs)) if captions[k] is None and needs_captions[k]]
        if uncaptioned:
            described = caption_pairs(self._caption, [pairs[k] for k in uncaptioned])
            for k, found in zip(uncaptioned, described):
                captions[k] = found
        captions = [given or ("", "") for given in captions]
        unprompted = [k for k in range(len(pairs)) if prompts[k] is None]
        if unprompted:
            made = prompt_pairs(
                self.clip,
                [pairs[k] for k in unprompted],
                [captions[k] for k in unprompted],
                config,
                torch.Generator().manual_seed(seed),
                progress,
            )
            for k, found in zip(unprompted, made):
                prompts[k] = found
        alpha = config.alpha if config.use_clip_loss and config.steps > 0 else 0.0
        return [
            PreparedPair(
                caption_a=captions[k][0],
                caption_a_prime=captions[k][1],
                prompt_a=prompts[k][0],
                prompt_a_prime=prompts[k][1],
                **interpolated_delta(self.clip, a, a_prime, *captions[k], alpha, image_features=features[k])._asdict(),
                latents=latent_pair(self.backbone, a, a_prime) if config.steps > 0 else None,
                prompt_b=prompt_b,
                encoded=encoded[k],
                images=pairs[k] if config.init == "auto" else None,
            )
            for k, (a, a_prime) in enumerate(pairs)
        ]

    def _check_encoder(self, config: InversionConfig) -> None:
        """init="encoder" and "auto" need an encoder made for the model, its CLIP and n_tokens."""
        if config.init not in ("encoder", "auto"):
            return
        if self.diff_encoder is None:
            raise DiffinvError(
                f"init={config.init!r} needs a DIFF-token encoder, and {self.backbone.model_id} has none (a "
                f"'{ENCODER_DIR}' folder in its model directory, or --encoder DIR: `diffinv encoder train` makes "
                "one); use init='zeros'"
            )
        check_encoder_fits(
            self.diff_encoder,
            config.n_tokens,
            self.backbone.token_width,
            self.clip.joint_width,
            self.backbone.model_id,
        )

    def fit(
        self,
        a: ImageInput | list[Pair],
        a_prime: ImageInput | None = None,
        config: InversionConfig | None = None,
        captions: tuple[str, str] | list[tuple[str, str] | None] | None = None,
        prompts: tuple[str, str] | list[tuple[str, str] | None] | None = None,
        seed: int = 0,
        progress: bool = True,
        prompt_b: str | None = None,
    ) -> DiffTokens:
        """Learn DIFF tokens holding the difference A → A′.

        `fit(a, a_prime)`: one pair. `fit([(a1, a1_prime), (a2, a2_prime), …])`: one D̃ from K
        example pairs of one edit (beyond the paper): every loss is taken on every pair and averaged
        over them (the step size does not grow with K), D_inter is the normalised mean of the
        pairs' D_inter, and init="encoder" starts from the mean of the encoder's predictions
        (`inversion.PairGroups`). Every pair is brought to the first A's working size. With one pair
        in a list, the result is that of `fit(a, a_prime)`.
        captions: (cap_A, cap_A′) instead of the captioner's — of the first pair; or a list with one
        per pair (None: the captioner's). prompts: (prompt_A, prompt_A′) instead of PEZ / the
        captions, given the same way. seed: fixes PEZ, the timesteps and the noise.
        prompt_b: prompt_B (`describe_b`), needed only with `lambda_clip_b` > 0.
        The tokens record the first pair's prompts and captions, and `n_pairs`.
        """
        config = config or self.default_config
        pairs = example_pairs(a, a_prime)
        prepared = self._prepare_pairs(
            self.working_pairs(pairs, config),
            config,
            per_pair(captions, len(pairs), "captions"),
            per_pair(prompts, len(pairs), "prompts"),
            seed,
            progress,
            prompt_b,
        )
        return self._fit_prepared([prepared], config, [seed], progress)[0]

    def fit_many(
        self,
        pairs: list[Pair | list[Pair]],
        config: InversionConfig | None = None,
        captions: list | None = None,
        seeds: list[int] | None = None,
        progress: bool = True,
        prompts_b: list[str] | None = None,
    ) -> list[DiffTokens]:
        """DIFF tokens for several independent tasks, fitted in one batched optimisation (one UNet
        call per step for all of them; see `fit_diff_tokens`). A task is an (A, A′) pair, or a list
        of example pairs of one edit that get one D̃ together (as `fit` of that list). Each task's
        tokens follow the same dynamics as `fit` would give them, with other noise draws. Tasks
        whose A has another working size (aspect ratio) are fitted in a batch of their own.

        captions: per task (as `fit` takes them), or None for the captioner. seeds: per task for its
        preparation (PEZ); each batch's noise is seeded by its first task's seed. prompts_b:
        prompt_B per task, needed only with `lambda_clip_b` > 0.
        """
        config = config or self.default_config
        seeds = list(range(len(pairs))) if seeds is None else seeds
        captions = captions or [None] * len(pairs)
        prompts_b = prompts_b or [None] * len(pairs)
        if not (len(pairs) == len(seeds) == len(captions) == len(prompts_b)) or not pairs:
            raise DiffinvError(
                "fit_many needs one seed, one caption pair (or None) and one prompt_B (or None) per pair, "
                "and at least one pair"
            )
        tasks = [example_pairs(*task) if _is_pair(task) else example_pairs(task) for task in pairs]
        prepared = [
            self._prepare_pairs(
                self.working_pairs(task, config),
                config,
                per_pair(caption, len(task), "captions"),
                [None] * len(task),
                seed,
                progress,
                prompt_b,
            )
            for task, caption, seed, prompt_b in zip(tasks, captions, seeds, prompts_b)
        ]
        return self._fit_prepared(prepared, config, seeds, progress)

    def _fit_prepared(
        self, tasks: list[list[PreparedPair] | PreparedPair], config: InversionConfig, seeds: list[int], progress: bool
    ) -> list[DiffTokens]:
        """One batched optimisation per latent size (tasks of other aspect ratios cannot share a
        UNet call), seeded by the first seed of each group; tokens come back in task order. A task
        is one pair, or example pairs of one edit that share one D̃ (and one latent size). With no
        fit (steps = 0, no latents) all tasks are one group: nothing is optimised. A task may be
        given as a bare `PreparedPair` (one pair). With init="auto", each task's D̃ is the
        encoder's where it passes `_encoder_check`; the other tasks are fitted from zeros together."""
        tasks = [[task] if isinstance(task, PreparedPair) else task for task in tasks]
        if config.init == "auto":
            return self._fit_or_encode(tasks, config, seeds, progress)
        return self._fit_tasks(tasks, config, seeds, progress)

    def _encoder_check(
        self, task: list[PreparedPair], encoded: DiffTokens, config: InversionConfig, seed: int
    ) -> EncoderCheck:
        """Draw each example pair's A with the encoder's D̃ for the task (`encoded`: the mean of its
        predictions, as init="encoder" takes it) and measure how much of A → A′ is left
        (`encoder_check.check_pairs`). The task's pairs must have been prepared with init="auto"."""
        redrawn = [
            self._apply(
                encoded,
                pair.images.a,
                seed,
                "" if self.backbone.takes_instructions else pair.prompt_a,
                config,
                False,
                pair.images,
            )
            for pair in task
        ]
        return check_pairs(self.clip, [pair.images for pair in task], redrawn, config.encoder_tolerance)

    def _fit_or_encode(
        self, tasks: list[list[PreparedPair]], config: InversionConfig, seeds: list[int], progress: bool
    ) -> list[DiffTokens]:
        """init="auto": the encoder's D̃ for the tasks whose pairs it reproduces, a fit from zeros
        (`config.steps`) for the others, in one batched optimisation. The tokens record the
        configuration as given (init "auto") and the check (`DiffTokens.encoder_check`)."""
        tokens = self._fit_tasks(tasks, config.replace(init="encoder", steps=0), seeds, False)
        checks = [self._encoder_check(*args, config, seed) for *args, seed in zip(tasks, tokens, seeds)]
        refit = [i for i, check in enumerate(checks) if not check.accepted]
        fitted = self._fit_tasks(
            [tasks[i] for i in refit], config.replace(init="zeros"), [seeds[i] for i in refit], progress
        )
        for i, fitted_tokens in zip(refit, fitted):
            tokens[i] = fitted_tokens
        for token, check in zip(tokens, checks):
            token.config, token.encoder_check = config, check.as_dict()
        return tokens

    def _fit_tasks(
        self, tasks: list[list[PreparedPair]], config: InversionConfig, seeds: list[int], progress: bool
    ) -> list[DiffTokens]:
        """`_fit_prepared` for a start other than "auto": one batched optimisation per latent size."""
        if not tasks:
            return []
        by_size: dict[tuple | None, list[int]] = {}
        for index, task in enumerate(tasks):
            by_size.setdefault(None if task[0].latents is None else tuple(task[0].latents.shape), []).append(index)
        tokens: list[DiffTokens | None] = [None] * len(tasks)
        for members in by_size.values():
            # A CPU generator: timesteps and noise are drawn on the CPU, so a seed gives one D̃ on any device.
            generator = torch.Generator().manual_seed(seeds[members[0]])
            pairs = [pair for i in members for pair in tasks[i]]
            # pair → its task's D̃, where a task has several pairs (single pairs: the path they always took)
            several = (
                {"groups": [g for g, i in enumerate(members) for _ in tasks[i]]} if len(pairs) > len(members) else {}
            )
            embeddings, histories = fit_diff_tokens(
                self.backbone, self.clip, pairs, config, generator, progress, **several
            )
            for i, embedding, history in zip(members, embeddings, histories):
                tokens[i] = self._tokens(tasks[i], embedding, history, config)
        return tokens

    def _tokens(
        self, task: list[PreparedPair], embeddings: torch.Tensor, history: dict, config: InversionConfig
    ) -> DiffTokens:
        """The token file of one task: the first pair's prompts and captions, and how many pairs."""
        pair = task[0]
        hard_ids, hard_text = None, ""
        if config.hard_tokens:
            embeddings, hard_ids, hard_text = harden(embeddings, self.backbone.vocabulary, self.backbone.tokenizer)
        return DiffTokens(
            embeddings=embeddings.cpu(),
            model_id=self.backbone.model_id,
            vocab_size=self.backbone.vocab_size,
            family=self.backbone.family,
            encoder_widths=self.backbone.encoder_widths,
            config=config,
            prompt_a=pair.prompt_a,
            prompt_a_prime=pair.prompt_a_prime,
            caption_a=pair.caption_a,
            caption_a_prime=pair.caption_a_prime,
            hard_token_ids=hard_ids,
            hard_text=hard_text,
            history=history,
            text_delta_norm=pair.text_delta_norm,
            effective_alpha=pair.effective_alpha,
            n_pairs=len(task),
        )

    def describe(self, image: Image.Image, config: InversionConfig, seed: int = 0, progress: bool = True) -> str:
        """prompt_B: described the way prompt_A was (PEZ or caption). PEZ starts from the first
        draw of a CPU generator seeded with `seed`, as prompt_A does in `fit`."""
        if config.prompt_source == "caption":
            return self._caption([image])[0]
        return pez_prompt(self.clip, image, config, torch.Generator().manual_seed(seed), progress)

    def describe_b(self, b: ImageInput, config: InversionConfig, seed: int = 0, progress: bool = True) -> str:
        """prompt_B exactly as `apply` makes it when given no prompt: `describe` of B at its working size."""
        return self.describe(self._working_image(b, config), config, seed, progress)

    def apply(
        self,
        tokens: DiffTokens,
        b: ImageInput,
        seed: int = 0,
        prompt: str | None = None,
        config: InversionConfig | None = None,
        progress: bool = True,
        reference: tuple[ImageInput, ImageInput] | None = None,
    ) -> Image.Image:
        """Draw B′ from {prompt_B, s·D̃}. B′ has B's aspect ratio at the working resolution.

        prompt: prompt_B; by default PEZ or the captioner, as the tokens were fitted.
        config: sampling settings (mode, strength, guidance, steps, edit strength s, negative
            DIFF, candidates); default the tokens' own.
        reference: (A, A′), needed when `config.candidates` > 1 to score the candidates (the
            tokens do not hold the images); unused otherwise.
        """
        if config is None:  # the tokens' own settings; a model of the other kind draws with its own
            editor = self.backbone.takes_instructions
            config = tokens.config.drawn_on(self.default_config, editor)
            if config is not tokens.config:
                warnings.warn(
                    f"these DIFF tokens were fitted on {tokens.model_id!r}; {self.backbone.model_id!r} draws B′ "
                    f"with its own drawing settings (mode {config.sampling_mode!r})",
                    DiffinvWarning,
                    stacklevel=2,
                )
        check_sampling_mode(config.sampling_mode, self.backbone.model_id, self.backbone.takes_instructions)
        tokens.check_fits(
            self.backbone.model_id, self.backbone.token_width, self.backbone.vocab_size, self.backbone.family
        )
        _check_reference(config, reference)
        return self._apply(tokens, self._working_image(b, config), seed, prompt, config, progress, reference)

    def _apply(
        self,
        tokens: DiffTokens,
        b: Image.Image,
        seed: int,
        prompt: str | None,
        config: InversionConfig,
        progress: bool,
        reference: WorkingPair | tuple[ImageInput, ImageInput] | None,
    ) -> Image.Image:
        """`apply` to B already at its working size, with the checks done."""
        if prompt is None:  # an editor's instruction is the DIFF tokens alone
            prompt = "" if self.backbone.takes_instructions else self.describe(b, config, seed, progress)
        ids, slot_mask = self.backbone.slot_ids([prompt], tokens.n_tokens)
        diff = tokens.embeddings.to(self.backbone.device)
        if config.edit_strength != 1:  # at s = 1 the tokens go in untouched (bit for bit as without the option)
            diff = config.edit_strength * diff
        with torch.no_grad():
            text_states = self.backbone.encode_prompt(ids, slot_mask, diff)
            # {prompt_B, 0}: the denoising condition minus exactly the DIFF tokens. The inversion
            # modes invert B under it; diff_guidance makes it guidance's unconditional branch.
            zeroed = None
            if config.sampling_mode in INVERSION_MODES or config.diff_guidance:
                zeroed = self.backbone.encode_prompt(ids, slot_mask, torch.zeros_like(diff))
            null = zeroed if config.sampling_mode in INVERSION_MODES else None
            negative = zeroed if config.diff_guidance else None
            if config.negative_diff:  # guidance away from the "before" side: {prompt_B, −s·D̃}
                negative = self.backbone.encode_prompt(ids, slot_mask, -diff)
        return self._sample(text_states, b, config, seed, progress, negative, null, reference)

    def draw(
        self,
        prompt: str,
        b: ImageInput,
        config: InversionConfig | None = None,
        seed: int = 0,
        progress: bool = True,
        reference: tuple[ImageInput, ImageInput] | None = None,
    ) -> Image.Image:
        """B′ from a plain prompt and no DIFF tokens, drawn exactly as `apply` draws (a reference).

        With no D̃, `edit_strength`, `negative_diff` and `diff_guidance` do nothing here (the
        unconditional branch stays the empty prompt); the inversion modes invert B under the prompt
        itself, so the edit mask and direct inversion, which compare B′ with that inversion, would
        give B back unchanged: they are refused. reference: (A, A′) for `candidates` > 1, as in `apply`.
        """
        config = config or self.default_config
        check_sampling_mode(config.sampling_mode, self.backbone.model_id, self.backbone.takes_instructions)
        if config.edit_mask or config.direct_inversion:
            raise DiffinvError(
                "drawing from a plain prompt inverts B under that prompt, so the edit mask and direct inversion "
                "would give B back unchanged; turn them off (they are for DIFF tokens)"
            )
        _check_reference(config, reference)
        b = self._working_image(b, config)
        with torch.no_grad():
            text_states = self.backbone.encode_plain([prompt])
        null = text_states if config.sampling_mode in INVERSION_MODES else None
        return self._sample(text_states, b, config, seed, progress, None, null, reference)

    def _sample(
        self,
        text_states: torch.Tensor,
        b: Image.Image,
        config: InversionConfig,
        seed: int,
        progress: bool,
        negative_states: torch.Tensor | None = None,
        null_states: torch.Tensor | None = None,
        reference: WorkingPair | tuple[ImageInput, ImageInput] | None = None,
    ) -> Image.Image:
        """B′ at B's (working) size: img2img from `b`, from noise, or from `b`'s DDIM inversion
        under `null_states`, as `config` says; `negative_states` replace the empty prompt in
        guidance. With `config.candidates` = k > 1: k draws with seeds seed … seed + k − 1, and
        the one with the highest `candidate_scores` against `reference` = (A, A′)."""

        settings = config.draw_settings()

        def draw_one(candidate_seed: int) -> Image.Image:
            generator = torch.Generator().manual_seed(candidate_seed)
            return self.backbone.sample(
                text_states, b.size, b, settings, generator, progress, negative_states, null_states
            )

        if config.candidates == 1:
            return draw_one(seed)
        drawn = [draw_one(seed + i) for i in range(config.candidates)]
        scores = self.candidate_scores(reference, b, drawn, config)
        return drawn[int(torch.argmax(scores))]

    def candidate_scores(
        self,
        reference: WorkingPair | tuple[ImageInput, ImageInput],
        b: Image.Image,
        candidates: list[Image.Image],
        config: InversionConfig,
    ) -> torch.Tensor:
        """(k,) ground-truth-free scores of candidate B′: the CLIP directional score
        cos(E(A′) − E(A), E(B′) − E(B)) in this pipeline's CLIP image space, with A and A′
        brought to their working size as `prepare` does for the image delta (a `WorkingPair` is
        taken as it is), and B as drawn from."""
        a, a_prime = reference if isinstance(reference, WorkingPair) else self.working_pair(*reference, config)
        features = self.clip.image_features([a, a_prime, b, *candidates])
        image_delta = features[1] - features[0]
        return F.cosine_similarity(features[3:] - features[2], image_delta.unsqueeze(0), dim=-1).cpu()

    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        config: InversionConfig | None = None,
        seed: int = 0,
        captions: tuple[str, str] | list[tuple[str, str] | None] | None = None,
        prompt_b: str | None = None,
        progress: bool = True,
        examples: list[Pair] | None = None,
    ) -> tuple[Image.Image, DiffTokens]:
        """fit on (A, A′), then apply to B. Returns (B′, tokens).

        examples: further (A, A′) pairs of the same edit, `[(a2, a2_prime), …]`: the tokens are
        then fitted on all the pairs as `fit([(a, a_prime), *examples])` fits them (one D̃, the
        losses averaged over the pairs); B′'s candidates (`candidates` > 1) are scored against
        (A, A′). captions: as `fit` takes them — (cap_A, cap_A′) of (A, A′), or one per pair.
        With PEZ prompts and no prompt_b, prompt_A, prompt_A′ (of every pair) and prompt_B come from
        one batched inversion of the working images, each from the start `fit` and `apply` would
        draw (the pairs' images: the draws of a generator seeded with `seed`, in order; B: the first
        draw of another), so the result is theirs, for about the time of one inversion.
        With `lambda_clip_b` > 0 the tokens are fitted for B's prompt, the one B′ is drawn with.
        On an instruction editor, prompt_b is words given beside the DIFF tokens in its instruction
        (default none), and B is described only for `lambda_clip_b`.
        """
        config = config or self.default_config
        check_sampling_mode(config.sampling_mode, self.backbone.model_id, self.backbone.takes_instructions)
        pairs = example_pairs([(a, a_prime), *(examples or [])])
        captions = per_pair(captions, len(pairs), "captions")
        # Each input is read and brought to its working size once; fit, apply and the candidates'
        # scores all take these images as they are.
        working, b = self.working_pairs(pairs, config), self._working_image(b, config)
        if self.backbone.takes_instructions:
            return self._edit_analogy(working, b, config, seed, captions, prompt_b, progress)
        prompts = [None] * len(pairs)
        if prompt_b is None and config.prompt_source == "pez":
            pair_generator, b_generator = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            images = [image for pair in working for image in pair]
            *inverted, prompt_b = pez_prompts(
                self.clip, [*images, b], config, [pair_generator] * len(images) + [b_generator], progress
            )
            prompts = [(inverted[2 * k], inverted[2 * k + 1]) for k in range(len(pairs))]
        elif prompt_b is None and config.lambda_clip_b > 0:  # the fit needs prompt_B; apply then reuses it
            prompt_b = self.describe(b, config, seed, progress)
        prepared = self._prepare_pairs(working, config, captions, prompts, seed, progress, prompt_b)
        tokens = self._fit_prepared([prepared], config, [seed], progress)[0]
        b_prime = self._apply(
            tokens, b, seed, prompt=prompt_b, config=tokens.config, progress=progress, reference=working[0]
        )
        return b_prime, tokens

    def _edit_analogy(self, pairs, b, config, seed, captions, instruction, progress):
        """`analogy` on an instruction editor, from the example pairs and B at their working sizes:
        B′ is B edited by {instruction, D̃} (default: the DIFF tokens alone). B's description serves
        only the CLIP loss in its context (`lambda_clip_b` > 0), which then fits the tokens for this
        B; each pair's prompts are made as `fit` makes them."""
        description = self.describe(b, config, seed, progress) if config.lambda_clip_b > 0 else None
        prepared = self._prepare_pairs(pairs, config, captions, [None] * len(pairs), seed, progress, description)
        tokens = self._fit_prepared([prepared], config, [seed], progress)[0]
        instruction = instruction or ""
        b_prime = self._apply(
            tokens, b, seed, prompt=instruction, config=tokens.config, progress=progress, reference=pairs[0]
        )
        return b_prime, tokens
