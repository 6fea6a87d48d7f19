"""`diffinv demo`: the page's work without a browser, the command's checks, and the page itself
driven in headless chromium (skipped when gradio, playwright or a system chromium is missing)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

from diffinv.cli import main
from diffinv.demo import ModelCache, example_triplets, run_analogy
from diffinv.errors import DiffinvError
from diffinv.tokens import DiffTokens

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ROOT / "examples" / "shape"
TRIPLET = [str(SHAPE / name) for name in ("a.png", "a_prime.png", "b.png")]
STEPS = 3  # the page's work is checked, not the fit's quality (20 steps cost about 0.6 s more CPU per run)
# what the README and pyproject's extras say to install for the page and its browser test
INSTALL_PAGE = 'pip install -e ".[demo,browser]"'
INSTALL_CHROMIUM = "apt-get install chromium"


@pytest.fixture(scope="module")
def cache():
    return ModelCache()


def test_example_triplets_lists_every_family():
    rows = example_triplets()
    assert len(rows) == 5 and TRIPLET in rows
    assert all(len(row) == 3 and all(Path(path).is_file() for path in row) for row in rows)


def test_run_analogy_on_the_shape_example(cache, tmp_path):
    stages = []
    images = [Image.open(path) for path in TRIPLET]
    result = run_analogy(
        *images,
        "shapes",
        STEPS,
        3,
        1.5,
        cache=cache,
        out_dir=tmp_path,
        progress=lambda fraction, desc=None: stages.append(desc),
    )
    assert isinstance(result.b_prime, Image.Image) and result.b_prime.size == images[2].size
    assert isinstance(result.grid, Image.Image) and result.grid.width > 3 * result.grid.height
    tokens = DiffTokens.load(result.tokens_path)
    assert tokens.model_id == "shapes" and tokens.config.steps == STEPS and tokens.config.edit_strength == 1.5
    assert result.export_path.is_file() and result.export_path.parent == tmp_path
    assert stages[:3] == ["loading model…", "fitting…", "drawing…"]
    assert "seed 3" in result.message


def test_run_analogy_grid_shows_an_8_to_1_b_as_the_model_saw_it(cache, tmp_path):
    """B wider than 4:1 is centre-cropped by the pipeline: the grid shows that crop, as wide as B′."""
    a, a_prime, b = (Image.open(path).convert("RGB") for path in TRIPLET)
    wide_b = Image.new("RGB", (8 * b.width, b.height))
    for i in range(8):
        wide_b.paste(b, (i * b.width, 0))
    result = run_analogy(a, a_prime, wide_b, "shapes", STEPS, 0, 1.0, cache=cache, out_dir=tmp_path)
    assert result.b_prime.width == 4 * result.b_prime.height
    height, gap = result.grid.height - 18, 4  # image_grid's label band and gaps
    tile = lambda image: round(image.width * height / image.height)
    widths = [tile(a), tile(a_prime), tile(result.b_prime), tile(result.b_prime)]
    assert result.grid.width == sum(widths) + 3 * gap


def test_the_model_loader_sets_torch_up_as_the_command_line_does(monkeypatch):
    import diffinv.pipeline
    import diffinv.threads
    from diffinv.demo import _load_model

    calls = []
    monkeypatch.setattr(diffinv.threads, "set_up_torch", lambda threads: calls.append(threads))
    monkeypatch.setattr(diffinv.pipeline.DifferenceInversion, "from_pretrained", lambda name: f"model {name}")
    assert _load_model("shapes") == "model shapes" and calls == [None]


def test_run_analogy_shares_one_model_per_name():
    loads = []
    cache = ModelCache(load=lambda name: loads.append(name) or object())
    assert cache.get("shapes-editor") is cache.get(" shapes-editor ") is cache.get("")  # the default model
    assert cache.get("shapes") is not cache.get("shapes-editor")
    assert loads == ["shapes-editor", "shapes"]


@pytest.mark.parametrize(
    ("missing", "name"),
    [(0, "A"), (1, "A′"), (2, "B")],
)
def test_run_analogy_names_a_missing_image(missing, name):
    def never(model):
        raise AssertionError("no model should load for bad input")

    images = [Image.new("RGB", (32, 32))] * 3
    images[missing] = None
    with pytest.raises(DiffinvError, match=f"missing image: upload {name} "):
        run_analogy(*images, cache=ModelCache(load=never))


def test_run_analogy_reports_bad_values_readably(cache, tmp_path):
    with pytest.raises(DiffinvError, match="seed must be ≥ 0"):
        run_analogy(*TRIPLET, seed=-1, cache=cache, out_dir=tmp_path)
    with pytest.raises(DiffinvError, match="edit_strength must be a finite number ≥ 0"):
        run_analogy(*TRIPLET, steps=STEPS, edit_strength=-1, cache=cache, out_dir=tmp_path)
    with pytest.raises(DiffinvError, match="no such model directory"):
        run_analogy(*TRIPLET, model="./no-such-model", cache=ModelCache(), out_dir=tmp_path)


def test_demo_command_checks_before_serving(capsys):
    assert main(["demo", "--port", "0"]) == 2
    assert main(["demo", "--model", "./no-such-model"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("diffinv: error: --port must be between 1 and 65535")
    assert "no such model directory" in err[1] and len(err) == 2


# --- the page in a browser ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing(modules: tuple[str, ...] = ("gradio", "playwright"), chromium: bool = True) -> str | None:
    """Why the page (or its browser test) cannot run here, naming what to install; None: nothing missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({INSTALL_PAGE})"
    if chromium and _chromium() is None:
        return f"no system chromium on PATH (Debian: {INSTALL_CHROMIUM}; no Playwright browser download)"
    return None


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _skip_without(modules: tuple[str, ...] = ("gradio", "playwright"), chromium: bool = True) -> None:
    reason = _missing(modules, chromium)
    if reason:
        pytest.skip(reason)


def test_skip_messages_name_the_readme_and_pyproject_extras(monkeypatch):
    """The skips say what the README says to install: the extras `demo` (gradio) and `browser`
    (playwright) of pyproject.toml, and Debian's chromium."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = dict(re.findall(r"^([\w-]+) = \[(.*)\]$", section, flags=re.MULTILINE))
    named = re.fullmatch(r'pip install -e "\.\[([\w,-]+)\]"', INSTALL_PAGE).group(1).split(",")
    assert "gradio" in extras["demo"] and "playwright" in extras["browser"] and sorted(named) == ["browser", "demo"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(f'pip install -e ".[{extra}]"' in readme for extra in named) and "`chromium`" in readme

    real_find_spec = importlib.util.find_spec
    for module in ("gradio", "playwright"):
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, m=module: None if name == m else real_find_spec(name)
        )
        assert _missing() == f"{module} is not installed ({INSTALL_PAGE})"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert INSTALL_CHROMIUM in _missing()
    assert _missing(chromium=False) is None


def test_page_error_is_one_line_for_bad_input_and_a_traceback_otherwise(capsys):
    _skip_without(("gradio",), chromium=False)
    import gradio as gr

    from diffinv.demo import page_error

    error = page_error(DiffinvError("seed must be ≥ 0, got -1"))
    assert isinstance(error, gr.Error) and error.message == "seed must be ≥ 0, got -1"
    assert getattr(error, "print_exception", False) is False  # gradio logs no traceback of its own
    assert capsys.readouterr().err == "diffinv demo: error: seed must be ≥ 0, got -1\n"

    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError as unexpected:
        error = page_error(unexpected)
    assert error.message == "unexpected error: RuntimeError: boom" and error.print_exception is False
    err = capsys.readouterr().err
    assert err.startswith("diffinv demo: unexpected error: RuntimeError: boom\n") and "Traceback" in err


def test_launch_is_quiet_and_not_shared(capfd):
    """No "To create a public link, set `share=True`" hint: the page is deliberately not shared."""
    _skip_without(("gradio",), chromium=False)
    from diffinv.demo import launch

    app, local_url, share_url = launch("shapes", port=_free_port(), prevent_thread_lock=True)
    try:
        assert share_url is None and local_url.startswith("http://127.0.0.1:")
    finally:
        app.get_blocks().close()
    captured = capfd.readouterr()
    assert "share=True" not in captured.out + captured.err
    assert "public link" not in captured.out + captured.err


@pytest.mark.browser
def test_page_in_headless_chromium(tmp_path, capfd):
    """Upload the shape triplet, draw B′, download the token file; a missing image is a message.

    Set DIFFINV_DEMO_SCREENSHOT=path to keep a screenshot of the page after the run, and
    DIFFINV_DEMO_STEPS to run more than STEPS steps (docs/demo.png: 200, the shapes world's default)."""
    _skip_without()
    chromium = _chromium()
    from playwright.sync_api import expect, sync_playwright

    from diffinv.demo import build_demo

    steps_in_page = int(os.environ.get("DIFFINV_DEMO_STEPS", STEPS))

    demo = build_demo("shapes")
    demo.queue(default_concurrency_limit=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            for elem_id, path in zip(("input-a", "input-a-prime", "input-b"), TRIPLET):
                page.locator(f"#{elem_id} input[type=file]").set_input_files(path)
                expect(page.locator(f"#{elem_id} img")).to_be_visible(timeout=30_000)
            steps = page.locator("#steps input[type=number]")
            steps.fill(str(steps_in_page))
            steps.press("Enter")
            started = time.monotonic()
            page.locator("#run").click()
            expect(page.locator("#output-b-prime img")).to_be_visible(timeout=120_000)
            expect(page.locator("#grid img")).to_be_visible(timeout=30_000)
            link = page.locator("#tokens-file a").first
            expect(link).to_be_visible(timeout=30_000)
            drawn_in = time.monotonic() - started
            expect(page.locator("#message")).to_contain_text(f"{steps_in_page} steps", timeout=30_000)

            href = link.get_attribute("href")
            response = page.request.get(href if href.startswith("http") else f"http://127.0.0.1:{port}{href}")
            assert response.ok
            downloaded = tmp_path / "downloaded.safetensors"
            downloaded.write_bytes(response.body())
            tokens = DiffTokens.load(downloaded)
            assert tokens.model_id == "shapes" and tokens.config.steps == steps_in_page

            screenshot = os.environ.get("DIFFINV_DEMO_SCREENSHOT")
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)

            capfd.readouterr()  # the log from here on: the bad request's alone
            empty = browser.new_page()  # nothing uploaded: a readable message in the page, no traceback
            empty.goto(f"http://127.0.0.1:{port}/")
            empty.locator("#run").click()
            expect(empty.get_by_text("missing image: upload A (or pick an example)")).to_be_visible(timeout=30_000)
            assert "Traceback" not in empty.content()
            log = capfd.readouterr()
            assert "Traceback" not in log.out + log.err  # one line in the log, no traceback
            assert log.err.count("missing image: upload A") == 1 and len((log.out + log.err).splitlines()) <= 1
            browser.close()
        print(f"first B′ in the page after {drawn_in:.1f} s (model load included)")
    finally:
        demo.close()
