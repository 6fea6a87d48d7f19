"""`diffinv demo`: a Gradio web page for one analogy A : A′ :: B : B′ at a time.

The page uploads A, A′ and B (or takes one of the triplets in `examples/`) and optionally two
further example pairs of the same edit, draws B′ with the public `DifferenceInversion` API and
offers B′, the grid A | A′ | B | B′, the token file and its diffusers export. Requests wait in
Gradio's queue and run one at a time on models that are loaded once per model name and shared by
every visitor.

`run_analogy` is the page's work without Gradio (tested on its own); gradio is imported only by
the page's functions (`build_demo`, `launch`, `page_error`), so the rest of diffinv never needs it
(`pip install "diffinv[demo]"`).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import DiffinvError

DEFAULT_MODEL = "shapes-editor"  # as the command line's (cli.flags.DEFAULT_MODEL)
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"  # a source checkout's examples/
TRIPLET = ("a.png", "a_prime.png", "b.png")
EXPORT_TOKEN = "<diff>"
DISPLAY_HEIGHT = 256  # smaller B′ are shown enlarged (the token file and grid are unchanged)

# progress(fraction, desc): gr.Progress in the page, None elsewhere.
Progress = Callable[..., object] | None


class ModelCache:
    """One `DifferenceInversion` per model name, loaded on first use and then shared."""

    def __init__(self, load: Callable[[str], object] | None = None):
        self._load = load or _load_model
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, name: str):
        name = (name or "").strip() or DEFAULT_MODEL
        with self._lock:  # two first requests for one model load it once
            if name not in self._models:
                self._models[name] = self._load(name)
            return self._models[name]


def _load_model(name: str):
    from .pipeline import DifferenceInversion
    from .threads import set_up_torch

    set_up_torch(None)
    try:
        return DifferenceInversion.from_pretrained(name)
    except DiffinvError:
        raise
    except Exception as error:  # a missing hub id, no network, a damaged download: one readable line
        first_line = (str(error).splitlines() or [""])[0]
        raise DiffinvError(f"could not load model {name!r}: {type(error).__name__}: {first_line}") from error


@dataclass
class DemoResult:
    b_prime: Image.Image
    grid: Image.Image
    tokens_path: Path
    export_path: Path
    message: str


def _image(value, name: str) -> Image.Image:
    if value is None:
        raise DiffinvError(f"missing image: upload {name} (or pick an example)")
    if isinstance(value, (str, Path)):
        from .images import load_image

        return load_image(value)
    if not isinstance(value, Image.Image):
        raise DiffinvError(f"{name}: not an image")
    return value


def run_analogy(
    a,
    a_prime,
    b,
    model: str = DEFAULT_MODEL,
    steps: int | None = None,
    seed: int = 0,
    edit_strength: float = 1.0,
    *,
    cache: ModelCache,
    out_dir: str | Path | None = None,
    progress: Progress = None,
    examples: list[tuple] | None = None,
) -> DemoResult:
    """Fit DIFF tokens on (A, A′) and draw B′; write the token file and its diffusers export.

    a, a_prime, b: PIL images or paths (None: a DiffinvError naming the missing one). steps:
    optimisation steps (None: the model's default). examples: further (A, A′) pairs of the same
    edit, fitted together with (A, A′) (`DifferenceInversion.fit` of a list); a pair of two Nones
    (an empty slot of the page) is skipped, a half pair is a DiffinvError. Bad input raises
    DiffinvError.
    """
    from .export import export
    from .grid import image_grid
    from .images import as_rgb

    images = [_image(a, "A"), _image(a_prime, "A′"), _image(b, "B")]
    pairs = [(images[0], images[1])]
    for number, (before, after) in enumerate(examples or [], start=2):
        if before is None and after is None:
            continue
        if before is None or after is None:
            raise DiffinvError(f"example pair {number}: upload both A{number} and A′{number}, or neither")
        pairs.append((_image(before, f"A{number}"), _image(after, f"A′{number}")))
    seed = int(seed)
    if seed < 0:
        raise DiffinvError(f"seed must be ≥ 0, got {seed}")
    report = progress or (lambda *args, **kwargs: None)
    report(0.0, desc="loading model…")
    di = cache.get(model)
    changes = {"edit_strength": float(edit_strength)}
    if steps is not None:
        changes["steps"] = int(steps)
    config = di.default_config.replace(**changes)  # bad values: DiffinvError

    # fit, then apply: the same B′ and tokens as `analogy`, with a stage for each.
    report(0.05, desc="fitting…")
    bars = progress is not None  # tqdm bars, which gr.Progress(track_tqdm=True) shows in the page
    if len(pairs) == 1:
        tokens = di.fit(images[0], images[1], config, seed=seed, progress=bars)
    else:  # one D̃ from every pair
        tokens = di.fit(pairs, config=config, seed=seed, progress=bars)
    report(0.7, desc="drawing…")
    b_prime = di.apply(tokens, images[2], config=config, seed=seed, reference=(images[0], images[1]), progress=bars)
    report(0.95, desc="writing files…")
    grid = image_grid([*(as_rgb(image) for image in images), b_prime], ["A", "A'", "B", "B'"])

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="diffinv-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    tokens_path = out / "diff_tokens.safetensors"
    export_path = out / "diff_tokens-diffusers.safetensors"
    tokens.save(tokens_path)
    export(tokens, "diffusers", export_path, token=EXPORT_TOKEN)
    route = f"{config.steps} steps"
    if tokens.encoder_check is not None:  # init="auto": the encoder's D̃, or a fit, and why
        from .encoder_check import EncoderCheck

        route = EncoderCheck.from_dict(tokens.encoder_check).describe()
    message = (
        f"Done: model {tokens.model_id or model}, {route}, {_pairs_text(len(pairs))}seed {seed}, "
        f"edit strength {config.edit_strength:g}. prompt_A: {tokens.prompt_a!r}; "
        f"prompt_A′: {tokens.prompt_a_prime!r}. "
        f'diffusers: `pipe.load_textual_inversion(file, token="{EXPORT_TOKEN}")`'
    )
    return DemoResult(b_prime, grid, tokens_path, export_path, message)


def _pairs_text(count: int) -> str:
    return f"{count} example pairs, " if count > 1 else ""


def example_triplets(examples_dir: str | Path | None = None) -> list[list[str]]:
    """[A, A′, B] paths of every family folder in examples/ that holds a whole triplet."""
    root = Path(examples_dir) if examples_dir is not None else EXAMPLES_DIR
    if not root.is_dir():
        return []
    rows = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        paths = [folder / name for name in TRIPLET]
        if all(path.is_file() for path in paths):
            rows.append([str(path) for path in paths])
    return rows


def page_error(error: Exception):
    """The gr.Error the page shows for `error`, after logging it: bad input (DiffinvError) as one
    line of the log, anything else with its traceback; the page gets one line either way."""
    first_line = (str(error).splitlines() or [""])[0]
    if isinstance(error, DiffinvError):
        print(f"diffinv demo: error: {first_line}", file=sys.stderr)
        return _gr_error(str(error))
    print(f"diffinv demo: unexpected error: {type(error).__name__}: {first_line}", file=sys.stderr)
    traceback.print_exception(type(error), error, error.__traceback__)
    return _gr_error(f"unexpected error: {type(error).__name__}: {first_line}")


def _gr_error(message: str):
    """gr.Error(message) that gradio does not log with a traceback of its own (the error is
    logged by `page_error`); gradio before 5 has no print_exception and always prints one."""
    import gradio as gr

    try:
        return gr.Error(message, print_exception=False)
    except TypeError:
        return gr.Error(message)


def build_demo(model: str = DEFAULT_MODEL, cache: ModelCache | None = None, examples_dir: str | Path | None = None):
    """The gr.Blocks page (not launched)."""
    import gradio as gr

    from .model_card import model_card

    cache = cache or ModelCache()
    defaults = model_card(model).default_config()

    def work(
        a,
        a_prime,
        b,
        model_name,
        steps,
        seed,
        edit_strength,
        a2,
        a2_prime,
        a3,
        a3_prime,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (gradio idiom)
    ):
        examples = [(a2, a2_prime), (a3, a3_prime)]  # empty slots are skipped
        try:
            result = run_analogy(
                a,
                a_prime,
                b,
                model_name,
                steps,
                seed,
                edit_strength,
                cache=cache,
                progress=progress,
                examples=examples,
            )
        except Exception as error:  # never a traceback in the page
            raise page_error(error) from None
        shown = result.b_prime
        if shown.height < DISPLAY_HEIGHT:  # the shapes world's 32² pictures: enlarged with hard pixels to be seen
            scale = -(-DISPLAY_HEIGHT // shown.height)
            shown = shown.resize((shown.width * scale, shown.height * scale), Image.Resampling.NEAREST)
        return shown, result.grid, str(result.tokens_path), str(result.export_path), result.message

    with gr.Blocks(title="diffinv: image analogies") as demo:
        gr.Markdown(
            "# diffinv — Difference Inversion\n"
            "Upload **A**, **A′** (A after some change) and **B**, or pick an example; diffinv learns "
            "the change A → A′ as DIFF tokens and draws **B′** so that A : A′ :: B : B′."
        )
        with gr.Row():
            a = gr.Image(type="pil", label="A", elem_id="input-a", height=200)
            a_prime = gr.Image(type="pil", label="A′", elem_id="input-a-prime", height=200)
            b = gr.Image(type="pil", label="B", elem_id="input-b", height=200)
        extra_images = []
        with gr.Accordion("More examples of the same edit (optional)", open=False):
            for number in (2, 3):
                with gr.Row():
                    for name, elem in ((f"A{number}", f"input-a{number}"), (f"A′{number}", f"input-a-prime{number}")):
                        extra_images.append(gr.Image(type="pil", label=name, elem_id=elem, height=160))
        triplets = example_triplets(examples_dir)
        if triplets:
            gr.Examples(examples=triplets, inputs=[a, a_prime, b], label="Examples (examples/<family>/)")
        with gr.Row():
            model_box = gr.Textbox(
                value=model,
                label="model",
                info="'shapes-editor' or 'shapes' (bundled, offline), or a Stable Diffusion / InstructPix2Pix "
                "hub id or directory",
            )
            steps = gr.Slider(
                0, max(1000, defaults.steps), value=defaults.steps, step=1, label="steps", elem_id="steps"
            )
            seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
            edit_strength = gr.Slider(0.0, 3.0, value=defaults.edit_strength, step=0.05, label="edit strength")
        run = gr.Button("Draw B′", variant="primary", elem_id="run")
        with gr.Row():
            b_prime = gr.Image(
                type="pil",
                label="B′ (small images shown enlarged)",
                format="png",
                interactive=False,
                elem_id="output-b-prime",
            )
            grid = gr.Image(type="pil", label="A | A′ | B | B′", format="png", interactive=False, elem_id="grid")
        with gr.Row():
            tokens_file = gr.File(label="token file (.safetensors)", elem_id="tokens-file")
            export_file = gr.File(label="diffusers export (.safetensors)", elem_id="export-file")
        message = gr.Markdown(elem_id="message")
        run.click(
            work,
            inputs=[a, a_prime, b, model_box, steps, seed, edit_strength, *extra_images],
            outputs=[b_prime, grid, tokens_file, export_file, message],
        )
    return demo


def launch(model: str = DEFAULT_MODEL, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Build the page, queue its requests (one analogy at a time on the shared models) and serve it.

    Not shared (no public link) and quiet: gradio prints neither its URL (the command prints it)
    nor its hint to set `share=True`."""
    demo = build_demo(model)
    demo.queue(default_concurrency_limit=1)
    allowed = [str(EXAMPLES_DIR)] if EXAMPLES_DIR.is_dir() else []
    kwargs.setdefault("quiet", True)
    return demo.launch(server_name=host, server_port=port, share=False, allowed_paths=allowed, **kwargs)
