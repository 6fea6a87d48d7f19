"""What a new user runs into on the bundled world: every start of D̃ and every preset runs on every
bundled model (the model card's budgets), anything that cannot run is refused before a model loads,
interrupts say what was written, captions that change nothing are said to, and the small edges of
the command line (--version, pipes, usage errors) behave as a command-line tool's should."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from diffinv.bench.methods import expand_methods
from diffinv.bench.results import read_results
from diffinv.cli import build_parser, main
from diffinv.config import PRESETS, InversionConfig
from diffinv.errors import DiffinvError
from diffinv.model_card import model_card
from test_bench import ColourMean, FakeDI, bench_options, fake_runner, no_loading, small_triplets, write_card

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shape"
BUNDLED = ("shapes", "shapes-editor")


# --- budgets: every start of D̃ and every preset on every bundled model ---------------------------------
@pytest.mark.parametrize("model", BUNDLED)
@pytest.mark.parametrize("start", [{"init": "zeros"}, {"init": "random"}, *({"preset": name} for name in PRESETS)])
def test_every_start_and_preset_runs_on_every_bundled_model(model, start):
    card = model_card(model)
    config = card.config_for(start.get("preset"), {k: v for k, v in start.items() if k == "init"})
    assert config.steps >= 1, "a fit from zeros or a random start needs steps"
    assert config.sampling_mode in (("editor",) if card.is_editor() else ("inversion", "img2img"))


def test_the_editors_starts_each_run_on_its_own_budget():
    """The editor's default takes the encoder's D̃ where it redraws A as A′ and otherwise fits D̃ from
    zeros, 200 steps at weight decay 1 (init "auto", tolerance 0.3); --init zeros always fits so;
    --init encoder takes the encoder's D̃ with no fit (its budget: 0 steps); the user's own --steps
    wins over either."""
    card = model_card("shapes-editor")
    assert card.init_budgets == {"encoder": {"steps": 0}}
    default = card.config_for()
    assert (default.init, default.encoder_tolerance, default.steps, default.weight_decay) == ("auto", 0.3, 200, 1.0)
    zeros = card.config_for(changes={"init": "zeros"})
    assert (zeros.init, zeros.steps, zeros.weight_decay) == ("zeros", 200, 1.0)
    encoder = card.config_for(changes={"init": "encoder"})
    assert (encoder.init, encoder.steps) == ("encoder", 0)
    assert card.config_for(changes={"init": "encoder", "steps": 20}).steps == 20
    assert card.config_for("paper", {"steps": 20}).steps == 20
    assert card.config_for("paper").steps == 200


def test_a_budget_replaces_only_what_the_user_did_not_set(tmp_path):
    card = model_card(
        write_card(tmp_path / "m", config={"steps": 30}, init_budgets={"random": {"steps": 7, "learning_rate": 0.5}})
    )
    assert card.config_for(changes={"init": "random"}).steps == 7
    assert card.config_for(changes={"init": "random", "learning_rate": 0.1}).learning_rate == 0.1
    assert card.config_for(changes={"init": "random"}, explicit={"steps"}).steps == 30
    assert card.config_for(changes={"init": "zeros"}).steps == 30  # no budget of its own: the model's


@pytest.mark.parametrize(
    "budgets, fragment",
    [({"ones": {"steps": 1}}, "not one of"), ({"zeros": {"alpha": 0.5}}, "only budget fields"), ([1], "must map")],
)
def test_a_bad_budget_in_a_descriptor_is_one_error(tmp_path, budgets, fragment):
    with pytest.raises(DiffinvError, match=fragment):
        model_card(write_card(tmp_path / "m", init_budgets=budgets))


def test_init_zeros_runs_end_to_end_on_the_default_model(capsys, tmp_path):
    code, out, err = run_cli(
        capsys,
        [
            "analogy",
            EXAMPLE / "a.png",
            EXAMPLE / "a_prime.png",
            EXAMPLE / "b.png",
            "-o",
            tmp_path / "b.png",
            "--preset",
            "paper",
            "--steps",
            "2",
            "--sampling-steps",
            "2",
            "--quiet",
            "--threads",
            "1",
        ],
    )
    assert code == 0, err
    assert (tmp_path / "b.png").is_file()


@pytest.mark.parametrize("method", ["paper", "in-context", "random-init"])
def test_bench_presets_on_the_editor_resolve_to_its_fit(method, tmp_path):
    from diffinv.bench.command import build_methods

    options = bench_options("run", "--out", tmp_path, "--model", "shapes-editor", "--method", method)
    _, _, _, configs = build_methods(options, model_card("shapes-editor"))
    assert (configs[method].steps, configs[method].sampling_mode) == (200, "editor")
    options = dataclasses.replace(options, base_changes="steps=50")
    assert build_methods(options, model_card("shapes-editor"))[3][method].steps == 50


@pytest.mark.parametrize(
    "method", ["inversion", "sample-from-noise", "paper:sampling_mode=img2img", "hard-tokens:init=encoder"]
)
def test_a_bench_method_the_model_cannot_run_is_refused_before_loading(method, tmp_path):
    from diffinv.bench.command import run_command

    options = bench_options(
        "run", "--out", tmp_path / "run", "--model", "shapes-editor", "--n", "1", "--method", method
    )
    with pytest.raises(DiffinvError):
        run_command(options, no_loading)


# --- tokens of the world's other model ----------------------------------------------------------------------
@pytest.mark.parametrize("fitted_on, applied_to", [("shapes", "shapes-editor"), ("shapes-editor", "shapes")])
def test_tokens_of_the_other_bundled_model_are_drawn_with_this_ones_settings(fitted_on, applied_to):
    import torch

    from diffinv.cli.preflight import drawing_config
    from diffinv.tokens import DiffTokens

    config = model_card(fitted_on).config_for()
    tokens = DiffTokens(embeddings=torch.zeros(5, 32), model_id=fitted_on, vocab_size=100, config=config)
    with pytest.warns(UserWarning, match="its own drawing settings"):
        drawn = drawing_config(tokens, model_card(applied_to), {})
    own = model_card(applied_to).config_for()
    assert (drawn.sampling_mode, drawn.sampling_steps) == (own.sampling_mode, own.sampling_steps)
    assert drawn.n_tokens == config.n_tokens  # the fit's fields stay the tokens'


# --- captions that change nothing -----------------------------------------------------------------------------
def test_captions_from_with_the_encoders_tokens_says_it_changes_nothing(capsys, tmp_path):
    argv = ["analogy", EXAMPLE / "a.png", EXAMPLE / "a_prime.png", EXAMPLE / "b.png", "-o", tmp_path / "b.png"]
    captions = ["--captions-from", EXAMPLE / "captions.txt"]
    code, _, err = run_cli(capsys, [*argv, *captions, "--init", "encoder", "--quiet", "--threads", "1"])
    assert code == 0, err
    assert err.splitlines() == [
        "diffinv: warning: --captions-from changes nothing here: D̃ is taken from the model's encoder with no fit "
        "(init 'encoder', steps 0)"
    ]


@pytest.mark.parametrize(
    "changes, editor, pair, b",
    [
        ({}, False, True, False),  # the paper: α > 0 reads captions; PEZ describes B
        ({"prompt_source": "caption"}, False, True, True),
        ({"alpha": 0.0}, False, False, False),
        ({"alpha": 0.0, "prompt_source": "caption"}, True, False, False),  # an editor's L_tc reads no prompts
        ({"init": "encoder", "steps": 0}, True, False, False),
    ],
)
def test_the_caption_rule(changes, editor, pair, b):
    config = InversionConfig(**changes)
    assert config.needs_pair_captions(editor) is pair
    assert config.needs_b_caption(editor) is b


# --- interrupts ---------------------------------------------------------------------------------------------------
def test_an_interrupted_apply_says_which_images_were_written(capsys, tmp_path, monkeypatch):
    """The second of three B′ is interrupted: the first is on disk, and the message names what is not."""
    import torch

    from diffinv.cli import commands
    from diffinv.tokens import DiffTokens

    config = model_card("shapes").config_for()
    DiffTokens(embeddings=torch.zeros(5, 32), model_id="shapes", vocab_size=100, config=config).save(
        tmp_path / "t.safetensors"
    )
    b = [tmp_path / f"b{i}.png" for i in range(3)]
    for path in b:
        Image.new("RGB", (32, 32), "white").save(path)

    class Interrupting:
        calls = 0

        def apply(self, tokens, path, **kwargs):
            Interrupting.calls += 1
            if Interrupting.calls == 2:
                raise KeyboardInterrupt
            return Image.new("RGB", (32, 32))

    monkeypatch.setattr(commands, "load_model", lambda args: Interrupting())
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, ["apply", tmp_path / "t.safetensors", *b, "-o", out, "--model", "shapes", "--quiet"]
    )
    assert code == 130
    assert err.splitlines() == [
        f"diffinv: interrupted; wrote 1 of 3 B′ (up to {out / 'b0.png'}); not written: {out / 'b1.png'}, "
        f"{out / 'b2.png'}"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["b0.png"]


def test_an_interrupted_bench_keeps_whole_results_only(tmp_path):
    """Ctrl-C while the third result is scored: two rows with their files, no file of the third, and a
    message that counts them; the same run resumes with the rest."""
    from diffinv.errors import Interrupted

    class Interrupting(ColourMean):
        calls = 0

        def __call__(self, images):
            Interrupting.calls += 1
            if Interrupting.calls == 3:
                raise KeyboardInterrupt
            return super().__call__(images)

    methods, triplets = expand_methods(["copy-b"]), small_triplets(4)
    with pytest.raises(Interrupted, match=r"^2 result\(s\) of this run were written"):
        fake_runner(FakeDI(), tmp_path, embedder=Interrupting()).run(methods, triplets)
    rows = read_results(tmp_path)
    assert [row["id"] for row in rows] == ["s00", "s01"]
    images = sorted(p.name for p in (tmp_path / "images").rglob("*") if p.is_file())
    grids = sorted(p.name for p in (tmp_path / "grids").rglob("*") if p.is_file())
    assert images == grids == ["s00.png", "s01.png"], "no file of the interrupted triplet, no temporary file"
    assert fake_runner(FakeDI(), tmp_path).run(methods, triplets) == 2


def test_interrupt_messages_are_true_for_each_command():
    from diffinv.cli import _interrupted_note
    from diffinv.errors import Interrupted

    parser = build_parser()
    train = parser.parse_args(["shapes", "train", "--out", "w"])
    assert "last checkpoint are kept in w" in _interrupted_note(train, KeyboardInterrupt())
    bench = parser.parse_args(["bench", "run", "--out", "r"])
    assert "no result was written" in _interrupted_note(bench, KeyboardInterrupt())
    assert _interrupted_note(bench, Interrupted("3 results")) == "3 results"
    fit = parser.parse_args(["fit", "a", "b", "-o", "t.safetensors"])
    assert _interrupted_note(fit, KeyboardInterrupt()) == "no output was written"


# --- shapes check -------------------------------------------------------------------------------------------------
def test_shapes_check_prints_each_gate_as_it_is_known(capsys, monkeypatch):
    """A gate's line is out before the next model is measured (here: the next measurement fails)."""
    from diffinv.shapes import evaluate

    def check(model_dir=None, on_stage=None, on_gate=None):
        on_stage and on_stage("the VAE")
        on_gate(evaluate.Gate("vae", 0.99, 0.9, "fine"))
        raise RuntimeError("the next model is slow")

    monkeypatch.setattr(evaluate, "check", check)
    code, out, err = run_cli(capsys, ["shapes", "check", "--quiet"])
    assert code == 1 and out.startswith("PASS  vae")
    assert "measuring" not in err  # --quiet: the results only
    assert "four" not in build_parser()._subparsers._group_actions[0].choices["shapes"].format_help()


# --- the command line's edges -------------------------------------------------------------------------------------
def test_version(capsys):
    from diffinv import __version__

    with pytest.raises(SystemExit) as raised:
        main(["--version"])
    assert raised.value.code == 0 and capsys.readouterr().out.strip() == f"diffinv {__version__}"


@pytest.mark.parametrize(
    "argv, help_of",
    [
        (["analogy", "a", "b", "c", "-o", "x.png", "--bogus"], "diffinv analogy"),
        (["bench", "run", "--out", "x", "--nope"], "diffinv bench run"),
        (["shapes", "check", "--nope"], "diffinv shapes check"),
    ],
)
def test_a_bad_flag_points_to_its_commands_help(capsys, argv, help_of):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    err = capsys.readouterr().err
    assert raised.value.code == 2 and err.splitlines() == [
        f"diffinv: error: unrecognized arguments: {argv[-1]} (see `{help_of} --help`)"
    ]


def test_a_weight_that_is_not_a_number_is_named(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["apply", "t.safetensors", "b.png", "-o", str(tmp_path), "--also", "f.safetensors:abc"])
    err = capsys.readouterr().err
    assert "weight 'abc'" in err and "no such" not in err


def test_a_closed_pipe_ends_the_command_quietly():
    """`diffinv defaults | head -1`: the reader has gone before the command writes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "diffinv.cli", "defaults", "--model", "shapes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and err == ""


def test_the_default_model_of_each_command_is_in_its_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert "default 'shapes-editor'" in " ".join(commands["analogy"].format_help().split())
    bench_run = commands["bench"]._subparsers._group_actions[0].choices["run"]
    text = " ".join(bench_run.format_help().split())
    assert "default 'shapes' (not 'shapes-editor' as for `diffinv analogy`" in text


def test_config_for_on_the_pipeline_uses_the_models_budgets():
    from diffinv.pipeline import DifferenceInversion

    di = DifferenceInversion.__new__(DifferenceInversion)
    di.default_config = model_card("shapes-editor").config_for()
    di.init_budgets = model_card("shapes-editor").init_budgets
    assert di.config_for(init="encoder").steps == 0 and di.config_for(init="random").steps == 200
    assert dataclasses.asdict(di.config_for()) == dataclasses.asdict(di.default_config)


def test_defaults_lists_the_budget_of_each_start(capsys):
    code, out, err = run_cli(capsys, ["defaults", "--model", "shapes-editor"])
    assert code == 0, err
    assert "with init 'encoder' (--init encoder, or a preset that starts there): steps 0" in out.splitlines()


def test_drawn_on_gives_a_model_of_the_other_kind_its_own_drawing_settings():
    """The rule both `apply` paths follow (the CLI before loading, the pipeline with no config)."""
    from diffinv.cli.flags import SAMPLING_FLAGS, fields
    from diffinv.config import DRAWING_FIELDS

    assert ("resolution", *fields(SAMPLING_FLAGS)) == DRAWING_FIELDS  # every drawing flag, and only those
    fitted, editor = model_card("shapes").config_for(), model_card("shapes-editor").config_for()
    assert fitted.drawn_on(editor, editor=False) is fitted
    drawn = fitted.drawn_on(editor, editor=True)
    assert all(getattr(drawn, name) == getattr(editor, name) for name in DRAWING_FIELDS)
    assert drawn.replace(**{name: getattr(fitted, name) for name in DRAWING_FIELDS}) == fitted
