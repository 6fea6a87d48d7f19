"""`diffinv demo`: the page's work without a browser, the command's checks, and the page itself
driven in headless chromium (skipped when gradio, playwright or a system chromium is missing)."""

from __future__ import annotations

import importlib.util
import os
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
STEPS = 20  # a few seconds on CPU


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


@pytest.mark.browser
def test_page_in_headless_chromium(tmp_path):
    """Upload the shape triplet, draw B′, download the token file; a missing image is a message.

    Set DIFFINV_DEMO_SCREENSHOT=path to keep a screenshot of the page after the run, and
    DIFFINV_DEMO_STEPS to run more than 20 steps (docs/demo.png: 200, the shapes world's default)."""
    for module in ("gradio", "playwright"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install gradio playwright)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no system chromium on PATH (apt-get install chromium)")
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

            empty = browser.new_page()  # nothing uploaded: a readable message in the page, no traceback
            empty.goto(f"http://127.0.0.1:{port}/")
            empty.locator("#run").click()
            expect(empty.get_by_text("missing image: upload A (or pick an example)")).to_be_visible(timeout=30_000)
            assert "Traceback" not in empty.content()
            browser.close()
        print(f"first B′ in the page after {drawn_in:.1f} s (model load included)")
    finally:
        demo.close()
