"""One call shape for every method, and the one registry of named methods.

Every method — Difference Inversion, the references copy-b and oracle-caption, each of the
paper's baselines (`baselines/`) — is a `Method`:

    b_prime = method.analogy(a, a_prime, b, seed=0)            # B′ for A : A′ :: B : B′

What a method has beyond that, it declares:

    needs_text   None, or the words it must be told for each triplet, which it takes as `text=`:
                 "b_prime" (a description of the wanted B′) or "instruction" (the edit in words)
    uses_text    whether its results count as told the edit in words (the paper's * references)
    analogies    `BatchedMethod`: several triplets in one optimisation (Difference Inversion's `fit_many`)
    several_examples  `takes_examples`: further (A, A′) pairs of the same edit, given as
                 `analogy(…, examples=[(A2, A2′), …])` (and `analogies(…, examples=…)`, one list
                 per triplet); Difference Inversion fits one D̃ on all the pairs. The bench refuses
                 `--examples K` > 1 for a method without it
    cost()       what one triplet costs in UNet work, known before any model loads (the baselines)
    config       its resolved hyperparameters, a dataclass (none for copy-b)
    last_tokens  the `DiffTokens` behind the B′ it drew last (Difference Inversion: its loss
                 history and hard text, which the bench records)

`METHODS` names them: each `Registered` entry says how to get the method's class and which model
it runs on; `register` adds one of your own. The bench builds its methods through it
(`bench.build`), so a registered method runs under `diffinv bench run --method NAME`.

Importing this module loads neither torch nor diffusers: the classes of the baselines, and the
pipeline Difference Inversion wraps, are imported when a method is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from PIL import Image

from .config import InversionConfig
from .errors import DiffinvError
from .images import ImageInput, load_image

if TYPE_CHECKING:
    from .pipeline import DifferenceInversion
    from .tokens import DiffTokens

Triplet = tuple[ImageInput, ImageInput, ImageInput]  # (A, A′, B)
TEXTS = ("b_prime", "instruction")  # the words a method may need (`Method.needs_text`)


# --- the call shape -----------------------------------------------------------------------------------
@runtime_checkable
class Method(Protocol):
    """B′ for A : A′ :: B : B′.

    name: the method's name in tables (e.g. "SDEdit").
    needs_text: None, or which words the method is told per triplet (`TEXTS`), given as `text=`
        to `analogy`.
    uses_text: whether its results count as told the edit in words rather than shown it.
    analogy(a, a_prime, b, *, seed, progress[, text]): B′ as an RGB image; A, A′ and B are PIL
        images or paths; `seed` fixes every random draw; `progress` shows progress bars.
    """

    name: str
    needs_text: str | None
    uses_text: bool

    def analogy(self, a: ImageInput, a_prime: ImageInput, b: ImageInput, *, seed: int = 0, progress: bool = True): ...


@runtime_checkable
class BatchedMethod(Method, Protocol):
    """A method that fits several triplets in one optimisation.

    analogies(triplets, *, seeds, progress[, texts]): the work the triplets share (the fit) is done
    when called; the iterator it returns draws each B′ when asked, in order, so that a caller can
    keep each one as soon as it exists. triplets: (A, A′, B) each; seeds: one per triplet.
    """

    def analogies(
        self, triplets: list[Triplet], *, seeds: list[int], progress: bool = True
    ) -> Iterator[Image.Image]: ...


def is_batched(method) -> bool:
    """Whether `method` (a method or its class) declares `analogies`."""
    return callable(getattr(method, "analogies", None))


@runtime_checkable
class ExamplesMethod(Method, Protocol):
    """A method shown several example pairs of one edit: `several_examples = True`, and
    analogy(a, a_prime, b, *, seed, progress, examples) takes `examples`, further (A, A′) pairs of
    the edit A → A′ (None or empty: none). If it is batched, `analogies` takes `examples` too, one
    list per triplet. A method that never looks at A and A′ (copy-B) may declare it and ignore them.
    """

    several_examples: bool

    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
        examples: list[tuple[ImageInput, ImageInput]] | None = None,
    ): ...


def takes_examples(method) -> bool:
    """Whether `method` (a method or its class) declares that it takes several example pairs."""
    return getattr(method, "several_examples", False) is True


class Models(Protocol):
    """The models one registered method is built on, as its builder provides them (the bench's:
    `bench.build.MethodBuilder`).

    difference_inversion(): the `DifferenceInversion` on the model the method runs on.
    load(method_class, config): `method_class` (a `baselines.base.PipelineBaseline`) with `config`
        on the model the method runs on.
    """

    def difference_inversion(self) -> DifferenceInversion: ...

    def load(self, method_class: type, config) -> Method: ...


# --- Difference Inversion and the references ---------------------------------------------------------------
class DifferenceInversionMethod:
    """`DifferenceInversion` with one resolved `InversionConfig`, as a batched `Method`.

    analogy: `DifferenceInversion.analogy` (one call, each input read once). analogies: the
    tokens of all triplets fitted in one `fit_many` (each for its own B's prompt when
    `lambda_clip_b` > 0), then each B′ drawn by `apply` with its triplet's seed — what the bench
    runs. `last_tokens` holds the tokens of the last B′ drawn. Both take further example pairs of
    each triplet's edit (`examples`), fitting one D̃ on all of a triplet's pairs.

    Args:
        di: the pipeline.
        config: its config for this method (None: the pipeline's `default_config`).
    """

    name = "Difference Inversion"
    needs_text = None
    uses_text = False
    several_examples = True
    config_class = InversionConfig

    def __init__(self, di: DifferenceInversion, config: InversionConfig | None = None):
        self.di = di
        self.config = config if config is not None else di.default_config
        self.last_tokens: DiffTokens | None = None

    @classmethod
    def build(cls, models: Models, config: InversionConfig) -> DifferenceInversionMethod:
        return cls(models.difference_inversion(), config)

    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
        examples: list[tuple[ImageInput, ImageInput]] | None = None,
    ) -> Image.Image:
        b_prime, self.last_tokens = self.di.analogy(
            a, a_prime, b, self.config, seed=seed, progress=progress, examples=examples
        )
        return b_prime

    def analogies(
        self,
        triplets: list[Triplet],
        *,
        seeds: list[int],
        progress: bool = True,
        examples: list[list[tuple[ImageInput, ImageInput]]] | None = None,
    ) -> Iterator[Image.Image]:
        config, di = self.config, self.di
        prompts_b = None
        if config.lambda_clip_b > 0:  # each triplet's tokens fitted for its B, as `analogy` does
            prompts_b = [di.describe_b(b, config, seed, progress) for (_, _, b), seed in zip(triplets, seeds)]
        tasks = [(a, a_prime) for a, a_prime, _ in triplets]
        if examples is not None:  # each triplet's pairs: one D̃ from all of them
            tasks = [[task, *extra] for task, extra in zip(tasks, examples)]
        tokens = di.fit_many(tasks, config, seeds=seeds, progress=progress, prompts_b=prompts_b)
        # None: `apply` describes B itself (an editor: no words beside the tokens; prompt_B served the fit)
        if prompts_b is None or di.backbone.takes_instructions:
            prompts_b = [None] * len(triplets)
        return self._draw(triplets, tokens, seeds, prompts_b, progress)

    def _draw(self, triplets, tokens, seeds, prompts_b, progress) -> Iterator[Image.Image]:
        """B′ of each triplet from its tokens, drawn when the caller asks for it."""
        for (a, a_prime, b), token, seed, prompt_b in zip(triplets, tokens, seeds, prompts_b):
            # A and A′ score the candidates B′ when config.candidates > 1
            reference = {"reference": (a, a_prime)} if self.config.candidates > 1 else {}
            b_prime = self.di.apply(
                token, b, seed=seed, prompt=prompt_b, config=self.config, progress=progress, **reference
            )
            self.last_tokens = token
            yield b_prime


class CopyB:
    """Reference: B′ = B, no change at all (B itself when it is a PIL image, else B read as RGB)."""

    name = "copy-B"
    needs_text = None
    uses_text = False
    several_examples = True  # it looks at no example: any number is fine
    config_class = None

    @classmethod
    def build(cls, models: Models, config: None) -> CopyB:
        return cls()

    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
        examples: list | None = None,
    ) -> Image.Image:
        return b if isinstance(b, Image.Image) else load_image(b)


class OracleCaption:
    """Reference: B′ drawn from the true description of B′ (`text`), without DIFF tokens, exactly as
    Difference Inversion draws (`DifferenceInversion.draw` with the same config and seed).

    Its results are not marked `uses_text`: it is a reference, named as one, as in earlier runs.
    """

    name = "oracle caption"
    needs_text = "b_prime"
    uses_text = False
    several_examples = True  # told B′ in words, it needs no example: any number is fine
    config_class = InversionConfig

    def __init__(self, di: DifferenceInversion, config: InversionConfig | None = None):
        self.di = di
        self.config = config if config is not None else di.default_config

    @classmethod
    def build(cls, models: Models, config: InversionConfig) -> OracleCaption:
        return cls(models.difference_inversion(), config)

    def analogy(
        self,
        a: ImageInput,
        a_prime: ImageInput,
        b: ImageInput,
        *,
        seed: int = 0,
        progress: bool = True,
        text: str | None = None,
        examples: list | None = None,
    ) -> Image.Image:
        if not isinstance(text, str) or not text.strip():
            raise DiffinvError(f"oracle-caption needs the true description of B′ as its text, got {text!r}")
        # A and A′ score the candidates B′ when config.candidates > 1; otherwise it does not look at them
        reference = {"reference": (a, a_prime)} if self.config.candidates > 1 else {}
        return self.di.draw(text, b, self.config, seed=seed, progress=progress, **reference)


# --- the registry ----------------------------------------------------------------------------------------
KINDS = ("difference-inversion", "reference", "baseline")
MODELS = ("main", "editor", "inpainting", "own", "none")


@dataclass(frozen=True)
class Registered:
    """A named method: where its class is and what it runs on.

    name: its name in bench specs and `--method` (lower case, no ':').
    summary: what it does, in one line.
    load: returns the method's class, importing torch and diffusers only when called. The class
        has `needs_text`, `uses_text`, `config_class` (its frozen config dataclass, or None) and
        `build(models: Models, config) -> Method`.
    model: the model it runs on — "main" (the model the bench loaded, the text-to-image one the
        run is about), "editor" (an instruction editor), "inpainting", "own" (a model of its own kind:
        its class's published one or --baseline-model's, e.g. FLUX.1 Kontext), or "none".
    kind: "difference-inversion" (its config an `InversionConfig`, changed by the bench's
        variants and `--set`), "reference" (B′ from the truth or from B: takes no config changes)
        or "baseline" (a config of its own; a model card may give it a budget).
    settings_of: another registered method whose model and budget this one shares.
    """

    name: str
    summary: str
    load: Callable[[], type]
    model: str = "main"
    kind: str = "baseline"
    settings_of: str | None = None

    def __post_init__(self):
        if not self.name or ":" in self.name or self.name != self.name.strip():
            raise DiffinvError(f"a method's name is a word without ':', got {self.name!r}")
        if self.model not in MODELS or self.kind not in KINDS:
            raise DiffinvError(
                f"{self.name}: model must be one of {', '.join(MODELS)} and kind one of {', '.join(KINDS)}"
            )


def _baselines():
    """The baselines package (torch and diffusers), imported when a baseline's class is wanted."""
    from . import baselines

    return baselines


METHODS: dict[str, Registered] = {}


def register(entry: Registered) -> Registered:
    """Add a method to `METHODS` under its name; a name already taken is refused."""
    if entry.name in METHODS:
        raise DiffinvError(f"a method named {entry.name!r} is registered already")
    METHODS[entry.name] = entry
    return entry


for _entry in (
    Registered(
        "difference-inversion",
        "Difference Inversion with the model's config",
        lambda: DifferenceInversionMethod,
        kind="difference-inversion",
    ),
    Registered(
        "on-editor",
        "Difference Inversion fitted on, and drawn by, an instruction editor (from the editor's config)",
        lambda: DifferenceInversionMethod,
        model="editor",
        kind="difference-inversion",
    ),
    Registered("copy-b", "reference: B′ = B", lambda: CopyB, model="none", kind="reference"),
    Registered(
        "oracle-caption",
        "reference: B′ drawn from the true description of B′, without DIFF tokens",
        lambda: OracleCaption,
        kind="reference",
    ),
    Registered("sdedit", "SDEdit*: img2img from B with a description of B′", lambda: _baselines().SDEdit),
    Registered(
        "instructpix2pix",
        "InstructPix2Pix*: B edited by the instruction",
        lambda: _baselines().InstructPix2Pix,
        model="editor",
    ),
    Registered(
        "visii", "VISII: an instruction learned from (A, A′), applied to B", lambda: _baselines().Visii, model="editor"
    ),
    Registered(
        "analogist",
        "Analogist*: B′ inpainted into [A A′; B ?] with a description of B′",
        lambda: _baselines().Analogist,
        model="inpainting",
    ),
    Registered("dia", "DIA: B's inverted conditioning shifted by A′'s minus A's", lambda: _baselines().Dia),
    Registered(
        "kontext",
        "FLUX.1 Kontext: the grid [A A′; B ·], its empty cell filled when asked to repeat the edit",
        lambda: _baselines().Kontext,
        model="own",
    ),
    Registered(
        "visualcloze",
        "VisualCloze: B′ infilled after the in-context example row (A, A′)",
        lambda: _baselines().VisualCloze,
        model="own",
    ),
    # a model of its own (--baseline-model qwen-edit=MODEL)
    Registered("qwen-edit", "Qwen-Image-Edit-2509 shown [A, A′, B]", lambda: _baselines().QwenEdit, model="own"),
    # a reference rather than a baseline: the editor told exactly what to do, with
    # InstructPix2Pix's model and budget; listed with the baselines, whose settings it takes
    Registered(
        "oracle-instruction",
        "reference: InstructPix2Pix told the true instruction",
        lambda: _baselines().InstructPix2Pix,
        model="editor",
        settings_of="instructpix2pix",
    ),
):
    register(_entry)
del _entry


def registered(name: str) -> Registered:
    """The entry of `name`, or a `DiffinvError` listing the registered names."""
    if name not in METHODS:
        raise DiffinvError(f"no method named {name!r}; registered: {', '.join(METHODS)}")
    return METHODS[name]
