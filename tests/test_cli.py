"""The `diffinv` command: invalid input gives one line on stderr and exit status 2 (never a
traceback), in process and in a real subprocess; `analogy`, `fit` and `apply` end to end on a
tiny model saved to disk."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, run_cli
from diffinv.cli import main
from diffinv.images import working_size
from diffinv.tokens import DiffTokens

SIZE_MULTIPLE, NATIVE = 8, 32  # of the tiny model (see test_backbone.test_sizes)


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diffinv: error: ")
    for fragment in fragments:
        assert str(fragment) in lines[0]


def truncated_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path.with_name("whole.png")
    )
    data = path.with_name("whole.png").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def text_file(path: Path) -> Path:
    path.write_text("not an image at all\n")
    return path


def directory(path: Path) -> Path:
    path.mkdir()
    return path


# --- invalid input: one line, status 2 -------------------------------------------------------------
@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda path: path, "no such file"),
        (empty_file, "the file is empty"),
        (truncated_png, "damaged or truncated"),
        (text_file, "not an image Pillow can read"),
        (directory, "is a directory"),
    ],
    ids=["missing", "empty", "truncated", "text-named-png", "directory"],
)
@pytest.mark.parametrize("position", [0, 1])
def test_bad_image_for_fit(capsys, tmp_path, image_files, model_args, make, reason, position):
    bad = make(tmp_path / "bad.png")
    images = [image_files["a"], image_files["a_prime"]]
    images[position] = bad
    code, out, err = run_cli(capsys, ["fit", *images, "-o", tmp_path / "t.safetensors", *model_args])
    assert_one_line_error(code, err, bad, reason)
    assert not (tmp_path / "t.safetensors").exists()


def test_bad_b_for_analogy(capsys, tmp_path, image_files, model_args):
    bad = truncated_png(tmp_path / "b.png")
    code, _, err = run_cli(
        capsys, ["analogy", image_files["a"], image_files["a_prime"], bad, "-o", tmp_path / "out.png", *model_args]
    )
    assert_one_line_error(code, err, bad, "damaged or truncated")


def test_bad_b_for_apply(capsys, tmp_path, fitted_tokens, image_files, model_args):
    fitted_tokens.save(tmp_path / "t.safetensors")
    code, _, err = run_cli(
        capsys,
        [
            "apply",
            tmp_path / "t.safetensors",
            image_files["b"],
            tmp_path / "missing.png",
            "-o",
            tmp_path / "out",
            *model_args,
        ],
    )
    assert_one_line_error(code, err, tmp_path / "missing.png", "no such file")
    assert not (tmp_path / "out").exists(), "inputs are checked before any output is written"


def test_token_file_that_is_not_safetensors(capsys, tmp_path, image_files, model_args):
    tokens = tmp_path / "tokens.safetensors"
    tokens.write_text("hello")
    code, _, err = run_cli(capsys, ["apply", tokens, image_files["b"], "-o", tmp_path / "out", *model_args])
    assert_one_line_error(code, err, tokens, "not a safetensors DIFF-token file")


def test_safetensors_that_is_not_diff_tokens(capsys, tmp_path, image_files, model_args):
    tokens = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(tokens))
    code, _, err = run_cli(capsys, ["apply", tokens, image_files["b"], "-o", tmp_path / "out", *model_args])
    assert_one_line_error(code, err, tokens, "not DIFF tokens")


def test_missing_token_file(capsys, tmp_path, image_files, model_args):
    code, _, err = run_cli(
        capsys, ["apply", tmp_path / "nope.safetensors", image_files["b"], "-o", tmp_path / "out", *model_args]
    )
    assert_one_line_error(code, err, "no such token file")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--alpha", "2"], "alpha"),
        (["--n-tokens", "0"], "n_tokens"),
        (["--steps", "-3"], "steps"),
        (["--strength", "0"], "strength"),
        (["--resolution", "3"], "resolution"),
    ],
)
def test_invalid_hyperparameters(capsys, tmp_path, image_files, model_args, flags, fragment):
    code, _, err = run_cli(
        capsys,
        [
            "analogy",
            image_files["a"],
            image_files["a_prime"],
            image_files["b"],
            "-o",
            tmp_path / "out.png",
            *flags,
            *model_args,
        ],
    )
    assert_one_line_error(code, err, "invalid configuration", fragment)


def test_half_the_captions(capsys, tmp_path, image_files, model_args):
    code, _, err = run_cli(
        capsys,
        [
            "fit",
            image_files["a"],
            image_files["a_prime"],
            "-o",
            tmp_path / "t.safetensors",
            "--caption-a",
            "a red circle",
            *model_args,
        ],
    )
    assert_one_line_error(code, err, "--caption-a-prime")


def test_output_that_is_a_directory(capsys, tmp_path, image_files, model_args):
    code, _, err = run_cli(capsys, ["fit", image_files["a"], image_files["a_prime"], "-o", tmp_path, *model_args])
    assert_one_line_error(code, err, "is a directory")


def test_missing_caption_file(capsys, tmp_path, image_files, model_args):
    argv = [
        "fit",
        image_files["a"],
        image_files["a_prime"],
        "-o",
        tmp_path / "t.safetensors",
        "--captions-from",
        tmp_path / "captions.txt",
        *model_args,
    ]
    code, _, err = run_cli(capsys, argv)
    assert_one_line_error(code, err, "captions.txt", "no such caption file")


def test_tokens_of_another_width(capsys, tmp_path, image_files, model_args, fitted_tokens):
    import dataclasses

    wide = dataclasses.replace(fitted_tokens, embeddings=torch.zeros(5, 48))
    wide.save(tmp_path / "wide.safetensors")
    code, _, err = run_cli(
        capsys,
        [
            "apply",
            tmp_path / "wide.safetensors",
            image_files["b"],
            "-o",
            tmp_path / "out",
            "--prompt",
            PROMPT_B,
            *model_args,
        ],
    )
    assert_one_line_error(code, err, "48 wide", "32-wide")


def test_model_directory_that_does_not_exist(capsys, tmp_path, image_files):
    argv = [
        "fit",
        image_files["a"],
        image_files["a_prime"],
        "-o",
        tmp_path / "t.safetensors",
        "--model",
        tmp_path / "no-model",
        "--clip-model",
        tmp_path / "no-clip",
        "--device",
        "cpu",
        "--quiet",
    ]
    code, _, err = run_cli(capsys, argv)
    assert_one_line_error(code, err, "no such model directory")


def subprocess_cli(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffinv.cli", *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )


def test_subprocess_missing_image(tmp_path, image_files):
    result = subprocess_cli("fit", tmp_path / "missing.png", image_files["a_prime"], "-o", tmp_path / "t.safetensors")
    assert_one_line_error(result.returncode, result.stderr, tmp_path / "missing.png", "no such file")
    assert result.stdout == ""


def test_subprocess_token_file_that_is_not_safetensors(tmp_path, image_files):
    tokens = tmp_path / "tokens.safetensors"
    tokens.write_bytes(b"\x00\x01 not safetensors")
    result = subprocess_cli("apply", tokens, image_files["b"], "-o", tmp_path / "out")
    assert_one_line_error(result.returncode, result.stderr, tokens, "not a safetensors DIFF-token file")


def test_subprocess_invalid_alpha(tmp_path, image_files):
    result = subprocess_cli(
        "fit", image_files["a"], image_files["a_prime"], "-o", tmp_path / "t.safetensors", "--alpha", "2"
    )
    assert_one_line_error(result.returncode, result.stderr, "alpha must lie in [0, 1]")


# --- end to end on a saved tiny model ---------------------------------------------------------------
def test_analogy_end_to_end(capsys, tmp_path, image_files, model_args):
    output = tmp_path / "results" / "b_prime.png"
    argv = [
        "analogy",
        image_files["a"],
        image_files["a_prime"],
        image_files["b"],
        "-o",
        output,
        "--steps",
        "3",
        "--prompt-source",
        "caption",
        "--caption-a",
        CAPTION_A,
        "--caption-a-prime",
        CAPTION_A_PRIME,
        "--prompt",
        PROMPT_B,
        "--sampling-steps",
        "2",
        *model_args,
    ]
    code, out, err = run_cli(capsys, argv)
    assert code == 0, err
    grid_path, tokens_path = output.with_name("b_prime-grid.png"), output.with_suffix(".safetensors")
    assert output.is_file() and grid_path.is_file() and tokens_path.is_file()
    assert str(output) in out

    b_prime = Image.open(output)
    assert b_prime.size == working_size(60, 30, NATIVE, SIZE_MULTIPLE)
    assert b_prime.width / b_prime.height == pytest.approx(60 / 30, rel=SIZE_MULTIPLE / b_prime.height)

    # the grid: four tiles A | A′ | B | B′, each scaled to 256 high, 4 px apart, under an 18 px label row
    tiles = [Image.open(image_files[name]) for name in ("a", "a_prime", "b")] + [b_prime]
    widths = [round(tile.width * 256 / tile.height) for tile in tiles]
    grid = Image.open(grid_path).convert("RGB")
    assert grid.size == (sum(widths) + 3 * 4, 256 + 18)
    left = sum(widths[:3]) + 3 * 4
    last = grid.crop((left, 18, left + widths[3], 18 + 256))
    assert np.array_equal(
        np.asarray(last), np.asarray(b_prime.convert("RGB").resize((widths[3], 256), Image.Resampling.NEAREST))
    )

    tokens = DiffTokens.load(tokens_path)
    assert tokens.embeddings.shape == (5, 32)
    assert tokens.config.steps == 3 and tokens.config.prompt_source == "caption"
    assert (tokens.caption_a, tokens.caption_a_prime) == (CAPTION_A, CAPTION_A_PRIME)
    assert len(tokens.history["loss"]) == 3


def test_fit_then_apply_with_captions_from_a_file(capsys, tmp_path, image_files, model_args):
    captions = tmp_path / "captions.txt"
    lines = [CAPTION_A, CAPTION_A_PRIME, PROMPT_B, "a photo of a green tree"]
    captions.write_text("\n".join([lines[0], "", *lines[1:], "   "]) + "\n", encoding="utf-8")
    tokens_path = tmp_path / "tokens" / "red-to-blue.safetensors"

    code, out, err = run_cli(
        capsys,
        [
            "fit",
            image_files["a"],
            image_files["a_prime"],
            "-o",
            tokens_path,
            "--steps",
            "3",
            "--prompt-source",
            "caption",
            "--captions-from",
            captions,
            *model_args,
        ],
    )
    assert code == 0, err
    assert tokens_path.is_file() and str(tokens_path) in out
    tokens = DiffTokens.load(tokens_path)
    assert tokens.caption_a in lines and tokens.caption_a_prime in lines
    assert (tokens.prompt_a, tokens.prompt_a_prime) == (tokens.caption_a, tokens.caption_a_prime)
    assert len(tokens.history["loss"]) == 3

    # two B's with the same name: the second output gets a suffix; B is captioned from the file
    other = tmp_path / "other" / "b.png"
    other.parent.mkdir()
    Image.open(image_files["b"]).transpose(Image.Transpose.ROTATE_90).save(other)  # 30 × 60
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys,
        [
            "apply",
            tokens_path,
            image_files["b"],
            other,
            "-o",
            out_dir,
            "--captions-from",
            captions,
            "--sampling-steps",
            "2",
            *model_args,
        ],
    )
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["b-2.png", "b.png"]
    assert Image.open(out_dir / "b.png").size == working_size(60, 30, NATIVE, SIZE_MULTIPLE)
    assert Image.open(out_dir / "b-2.png").size == working_size(30, 60, NATIVE, SIZE_MULTIPLE)


def test_help_answers_without_loading_torch():
    result = subprocess.run(
        [sys.executable, "-m", "diffinv.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("fit", "apply", "analogy"))
    probe = "import sys, diffinv.cli; diffinv.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False"


# --- nothing lost: outputs are planned and checked before any model loads ------------------------------
@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model fails the test: the errors below must come before it."""
    from diffinv.pipeline import DifferenceInversion

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(DifferenceInversion, "from_pretrained", refuse)


def analogy_argv(image_files, output, *extra):
    return ["analogy", image_files["a"], image_files["a_prime"], image_files["b"], "-o", output, *extra]


def fast_analogy_argv(image_files, output, *extra):
    """An analogy of one step and two sampling steps, with every caption and prompt given."""
    captions = ["--caption-a", CAPTION_A, "--caption-a-prime", CAPTION_A_PRIME, "--prompt", PROMPT_B]
    fast = ["--steps", "1", "--sampling-steps", "2", "--prompt-source", "caption"]
    return analogy_argv(image_files, output, *captions, *fast, *extra)


@pytest.mark.parametrize("companion", ["out.png", "out-grid.png", "out.safetensors"])
def test_analogy_refuses_to_overwrite_any_of_its_outputs(
    capsys, tmp_path, image_files, model_args, no_model_loading, companion
):
    existing = tmp_path / companion
    existing.write_bytes(b"the user's file")
    code, _, err = run_cli(capsys, analogy_argv(image_files, tmp_path / "out.png", *model_args))
    assert_one_line_error(code, err, existing, "already exists", "--overwrite")
    assert existing.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [companion]


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_an_input_is_never_written_over(capsys, tmp_path, image_files, model_args, no_model_loading, flags):
    b = tmp_path / "b.png"
    b.write_bytes(Path(image_files["b"]).read_bytes())
    before = b.read_bytes()
    argv = ["analogy", image_files["a"], image_files["a_prime"], b, "-o", tmp_path / "." / "b.png", *flags]
    code, _, err = run_cli(capsys, argv + model_args)
    assert_one_line_error(code, err, "is an input")
    assert b.read_bytes() == before


def test_apply_never_writes_over_a_b_in_the_output_directory(
    capsys, tmp_path, fitted_tokens, image_files, model_args, no_model_loading
):
    fitted_tokens.save(tmp_path / "t.safetensors")
    b = tmp_path / "b.png"
    b.write_bytes(Path(image_files["b"]).read_bytes())
    code, _, err = run_cli(
        capsys, ["apply", tmp_path / "t.safetensors", b, "-o", tmp_path, "--overwrite", *model_args]
    )
    assert_one_line_error(code, err, "is an input")


def test_fit_refuses_to_overwrite_a_token_file(capsys, tmp_path, image_files, model_args, no_model_loading):
    (tmp_path / "t.safetensors").write_bytes(b"earlier tokens")
    code, _, err = run_cli(capsys, ["fit", image_files["a"], image_files["a_prime"], "-o", tmp_path / "t.safetensors"])
    assert_one_line_error(code, err, "already exists")
    assert (tmp_path / "t.safetensors").read_bytes() == b"earlier tokens"


@pytest.mark.parametrize(
    "name, fragment",
    [("out", "must end in .png"), ("out.txt", "must end in .png"), ("out.safetensors", "must end in .png")],
)
def test_bad_output_names_are_refused_before_loading(
    capsys, tmp_path, image_files, model_args, no_model_loading, name, fragment
):
    code, _, err = run_cli(capsys, analogy_argv(image_files, tmp_path / name, *model_args))
    assert_one_line_error(code, err, fragment)


def test_fit_output_must_be_safetensors(capsys, tmp_path, image_files, model_args, no_model_loading):
    code, _, err = run_cli(
        capsys, ["fit", image_files["a"], image_files["a_prime"], "-o", tmp_path / "t.pt", *model_args]
    )
    assert_one_line_error(code, err, "must end in .safetensors")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--steps", "0"], "steps must be an integer ≥ 1"),
        (["--resolution", "1000"], "more than 2× the model's native 32"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_arguments_are_reported_before_loading(
    capsys, tmp_path, image_files, model_args, no_model_loading, flags, fragment
):
    argv = analogy_argv(image_files, tmp_path / "out.png", *model_args, *flags)
    code, _, err = run_cli(capsys, argv)
    assert_one_line_error(code, err, fragment)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_shapes_train_refuses_a_thread_count_below_one_before_torch(capsys, tmp_path, threads):
    code, _, err = run_cli(capsys, ["shapes", "train", "--out", tmp_path / "world", "--threads", threads])
    assert_one_line_error(code, err, f"--threads must be at least 1, got {threads}")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("seed", [str(2**64), "-1", "1.5"])
def test_a_seed_outside_64_bits_is_one_line(capsys, tmp_path, image_files, seed):
    with pytest.raises(SystemExit) as raised:
        main(analogy_argv(image_files, str(tmp_path / "out.png"), "--seed", seed))
    assert raised.value.code == 2
    assert_one_line_error(raised.value.code, capsys.readouterr().err, "--seed")


def test_mps_on_a_machine_without_it_is_one_line(capsys, tmp_path, image_files, model_args):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    args = [a for a in model_args if a not in ("--device", "cpu")]
    captions = ["--caption-a", CAPTION_A, "--caption-a-prime", CAPTION_A_PRIME, "--prompt", PROMPT_B]
    code, _, err = run_cli(
        capsys, analogy_argv(image_files, tmp_path / "out.png", *args, *captions, "--device", "mps")
    )
    assert_one_line_error(code, err, "no MPS")


def test_an_interrupted_write_leaves_nothing(capsys, tmp_path, image_files, model_args, monkeypatch):
    """The token file fails last: B′ and the grid, already written under temporary names, must
    not appear, and no temporary file may stay behind."""
    from diffinv.tokens import DiffTokens

    def interrupted(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(DiffTokens, "save", interrupted)
    argv = fast_analogy_argv(image_files, tmp_path / "out.png", *model_args)
    code, _, err = run_cli(capsys, argv)
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_all_three_outputs(capsys, tmp_path, image_files, model_args):
    output = tmp_path / "out.png"
    companions = [output, tmp_path / "out-grid.png", tmp_path / "out.safetensors"]
    for path in companions:
        path.write_bytes(b"old")
    argv = fast_analogy_argv(image_files, output, *model_args, "--overwrite")
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    assert all(path.read_bytes() != b"old" for path in companions)
    assert DiffTokens.load(companions[2]).config.steps == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in companions)


# --- offline honesty ---------------------------------------------------------------------------------------
def test_a_missing_captioner_is_named_before_loading(capsys, tmp_path, image_files, model_args, no_model_loading):
    """A plain model directory captions with BLIP-2, which is not in the (empty) cache here."""
    argv = ["fit", image_files["a"], image_files["a_prime"], "-o", tmp_path / "t.safetensors", "--offline"]
    code, _, err = run_cli(capsys, argv + model_args)
    assert_one_line_error(code, err, "blip2", "--caption-a", "--captions-from")


def test_a_hub_model_missing_from_the_cache_offline(capsys, tmp_path, image_files, no_model_loading):
    argv = ["fit", image_files["a"], image_files["a_prime"], "-o", tmp_path / "t.safetensors"]
    code, _, err = run_cli(capsys, argv + ["--model", "nobody/no-such-model", "--offline", "--caption-a", "x"])
    assert_one_line_error(code, err, "--caption-a-prime")
    code, _, err = run_cli(
        capsys, argv + ["--model", "nobody/no-such-model", "--offline", "--caption-a", "x", "--caption-a-prime", "y"]
    )
    assert_one_line_error(code, err, "nobody/no-such-model", "not in the hub cache", "offline")


def test_an_examples_captions_file_works_with_captions_from(capsys, tmp_path, model_args):
    examples = Path(__file__).parents[1] / "examples" / "colour"
    argv = ["fit", examples / "a.png", examples / "a_prime.png", "-o", tmp_path / "t.safetensors", "--steps", "1"]
    argv += ["--captions-from", examples / "captions.txt", "--prompt-source", "caption", *model_args]
    code, _, err = run_cli(capsys, argv)
    assert code == 0, err
    tokens = DiffTokens.load(tmp_path / "t.safetensors")
    lines = (examples / "captions.txt").read_text().splitlines()
    candidates = [line.split(":", 1)[1].strip() for line in lines if not line.startswith("family:")]
    assert tokens.caption_a in candidates and tokens.caption_a_prime in candidates


# --- defaults that say what they are --------------------------------------------------------------------
def test_defaults_lists_the_models_values_beside_the_papers(capsys):
    code, out, err = run_cli(capsys, ["defaults", "--model", "shapes"])
    assert code == 0, err
    steps = next(line for line in out.splitlines() if line.startswith("steps "))
    assert steps.split()[1:3] == ["100", "1000"] and "changed" in steps
    alpha = next(line for line in out.splitlines() if line.startswith("alpha "))
    assert alpha.split()[1:3] == ["0.8", "0.8"] and "changed" not in alpha


def test_help_names_the_papers_values_as_the_papers():
    help_text = " ".join(build_parser_help("fit").split())
    assert "optimisation steps N (the model's; paper 1000)" in help_text
    assert "(the model's; paper 0.001)" in help_text


def build_parser_help(command: str) -> str:
    from diffinv.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions if a.dest == "command")
    return action.choices[command].format_help()


def test_diffinvs_own_warnings_reach_the_user_and_library_noise_does_not(
    capsys, tmp_path, fitted_tokens, image_files, model_args, monkeypatch
):
    """Tokens fitted on another model (same width) apply with a warning: one line on stderr. A
    library's warning raised during the same command is not shown."""
    import warnings

    from diffinv.pipeline import DifferenceInversion

    original = DifferenceInversion.from_pretrained

    def noisy(*args, **kwargs):
        warnings.warn("some library deprecation", FutureWarning, stacklevel=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(DifferenceInversion, "from_pretrained", noisy)
    fitted_tokens.save(tmp_path / "t.safetensors")
    argv = ["apply", tmp_path / "t.safetensors", image_files["b"], "-o", tmp_path / "out", "--prompt", PROMPT_B]
    code, _, err = run_cli(capsys, argv + ["--sampling-steps", "2", *model_args])
    assert code == 0, err
    assert err.splitlines() == [
        f"diffinv: warning: DIFF tokens were fitted on 'tiny-epsilon', applying them to {model_args[1]!r}"
    ]


def test_analogy_with_candidates_keeps_one_of_them(capsys, tmp_path, image_files, model_args):
    """analogy hands A and A′ to the scorer: with K = 2 it draws seeds 0 and 1 and keeps one."""
    from diffinv.pipeline import DifferenceInversion

    seen = []
    original = DifferenceInversion.candidate_scores

    def spying(self, *args, **kwargs):
        scores = original(self, *args, **kwargs)
        seen.append(len(scores))
        return scores

    captions = ["--caption-a", CAPTION_A, "--caption-a-prime", CAPTION_A_PRIME, "--prompt", PROMPT_B]
    argv = analogy_argv(image_files, tmp_path / "out.png", *model_args, *captions, "--prompt-source", "caption")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DifferenceInversion, "candidate_scores", spying)
        code, _, err = run_cli(capsys, argv + ["--steps", "1", "--sampling-steps", "2", "--candidates", "2"])
    assert code == 0, err
    assert seen == [2]
    assert (tmp_path / "out.png").is_file()


def test_analogy_reads_each_image_file_once(capsys, tmp_path, image_files, model_args, monkeypatch):
    """The command reads A, A′ and B once: the check before loading, the analogy and the grid share them."""
    paths = [str(image_files[name]) for name in ("a", "a_prime", "b")]
    opened = []
    real_open = Image.open
    monkeypatch.setattr(
        Image, "open", lambda fp, *args, **kwargs: opened.append(str(fp)) or real_open(fp, *args, **kwargs)
    )
    code, _, err = run_cli(capsys, fast_analogy_argv(image_files, tmp_path / "out.png", *model_args))
    assert code == 0, err
    assert sorted(path for path in opened if path in paths) == sorted(paths)


def test_bench_report_from_the_command_line_never_imports_torch(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"dataset": {"name": "folder"}, "model": "m", "methods": ["copy-b"]}')
    (run_dir / "results.jsonl").write_text(
        '{"method": "copy-b", "id": "t0", "index": 0, "seconds": 0.0, "grid": "grids/copy-b/t0.png"}\n'
    )
    probe = (
        "import sys; from diffinv.cli import main; "
        f"code = main(['bench', 'report', {str(run_dir)!r}, '--baseline', 'copy-b']); "
        "print(code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "0 False", result.stdout + result.stderr
    assert (run_dir / "summary.md").is_file()


def test_an_unreachable_hub_is_reported_at_once_not_after_retries(
    capsys, tmp_path, image_files, model_args, no_model_loading, monkeypatch
):
    """Online mode, BLIP-2 not cached, and no network: one line within seconds, before loading."""
    from huggingface_hub import HfApi

    def no_network(self, repo, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "model_info", no_network)
    code, _, err = run_cli(
        capsys, ["fit", image_files["a"], image_files["a_prime"], "-o", tmp_path / "t.safetensors"] + model_args
    )
    assert_one_line_error(code, err, "blip2", "cannot be reached", "--caption-a")
