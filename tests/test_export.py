"""`diffinv export` and `apply --also`: DIFF tokens loaded by diffusers' textual-inversion loader
give exactly diffinv's text-encoder states; the AUTOMATIC1111 / ComfyUI layout; words of hard
tokens; weighted combinations of token files; the command's checks before any work."""

import os
import stat

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, fast_config, run_cli
from diffinv.backbones.sd import StableDiffusionBackbone
from diffinv.cli.flags import weighted_file
from diffinv.errors import DiffinvError
from diffinv.export import A1111_KEY, combine, diffusers_state_dict, export, words_text
from diffinv.testing import tiny_pipeline
from test_checks import UMASKS, umask
from test_tokens import made_up_tokens


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffinv: error: "), err
    for fragment in fragments:
        assert str(fragment) in lines[0]


def soft_tokens(**changes):
    return made_up_tokens(hard_token_ids=None, hard_text="", **changes)


# --- diffusers: load_textual_inversion round trip --------------------------------------------------
@pytest.mark.parametrize("n", [1, 3])
def test_diffusers_load_textual_inversion_gives_diffinvs_text_states(tmp_path, n):
    """The exported file in a pipeline's own prompt encoding equals diffinv's apply path bit for bit,
    at all 77 positions: the tokens <diff>, <diff>_1, … sit where diffinv's slots sit, followed by the
    same <eos> and padding, and their embedding rows are D̃."""
    diff = torch.randn(n, 32, generator=torch.Generator().manual_seed(n))
    tokens = soft_tokens(embeddings=diff)
    path = tmp_path / "d-diffusers.safetensors"
    export(tokens, "diffusers", path)

    pipe = tiny_pipeline()
    pipe.load_textual_inversion(str(path), token="<diff>")
    reference = StableDiffusionBackbone(tiny_pipeline(), "tiny")  # a separate, untouched copy

    prompt = f"{PROMPT_B} <diff>"
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, do_classifier_free_guidance=False)
        ids, slot_mask = reference.slot_ids([PROMPT_B], n)
        ours = reference.encode_prompt(ids, slot_mask, diff)
    assert theirs.shape == ours.shape == (1, reference.sequence_length, 32)
    assert torch.equal(theirs, ours)

    # the ids differ exactly at the slots, which hold the added tokens in order
    expanded = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    their_ids = pipe.tokenizer(expanded, padding="max_length", max_length=77, return_tensors="pt").input_ids
    added = pipe.tokenizer.convert_tokens_to_ids(["<diff>"] + [f"<diff>_{i}" for i in range(1, n)])
    assert torch.equal(their_ids[slot_mask], torch.tensor(added))
    assert torch.equal(their_ids[~slot_mask], ids[~slot_mask])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[added], diff)


def test_diffusers_file_layout(tmp_path):
    tokens = soft_tokens()
    path = tmp_path / "d.safetensors"
    export(tokens, "diffusers", path, token="<red-to-blue>")
    tensors = load_file(str(path))
    assert list(tensors) == ["<red-to-blue>"]
    assert tensors["<red-to-blue>"].dtype == torch.float32
    assert torch.equal(tensors["<red-to-blue>"], tokens.embeddings)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["model_id"] == tokens.model_id
    with pytest.raises(DiffinvError, match="one word"):
        diffusers_state_dict(tokens, token="two words")


# --- AUTOMATIC1111 / ComfyUI -------------------------------------------------------------------------
def test_a1111_file_layout_and_diffusers_reads_it_too(tmp_path):
    tokens = soft_tokens(embeddings=torch.randn(3, 32, dtype=torch.float64))
    path = tmp_path / "red-to-blue.safetensors"
    export(tokens, "a1111", path)
    tensors = load_file(str(path))
    assert list(tensors) == [A1111_KEY] == ["emb_params"]
    assert tensors["emb_params"].shape == (3, 32) and tensors["emb_params"].dtype == torch.float32
    assert torch.equal(tensors["emb_params"], tokens.embeddings.float())

    pipe = tiny_pipeline()
    pipe.load_textual_inversion(str(path), token="red-to-blue")
    ids = pipe.tokenizer.convert_tokens_to_ids(["red-to-blue", "red-to-blue_1", "red-to-blue_2"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], tokens.embeddings.float())


# --- words ---------------------------------------------------------------------------------------------
def test_words_of_hard_tokens_and_none_for_soft_ones(tmp_path):
    path = tmp_path / "d.txt"
    export(made_up_tokens(), "words", path)
    assert path.read_text(encoding="utf-8") == "red blue circle\n"
    with pytest.raises(DiffinvError, match="soft.*--hard-tokens"):
        words_text(soft_tokens())


def test_words_of_fitted_hard_tokens_tokenize_back_to_their_ids(tmp_path, di, backbone, images):
    """The words written are text that the model's tokenizer turns back into exactly the hard token
    ids: no U+FFFD (a byte of a character), no piece glued onto the next word ("_" + "nto")."""
    tokenizer = backbone.tokenizer
    for seed in range(3):
        tokens = di.fit(
            images["a"],
            images["a_prime"],
            fast_config(steps=2, hard_tokens=True, n_tokens=8),
            captions=(CAPTION_A, CAPTION_A_PRIME),
            seed=seed,
            progress=False,
        )
        path = tmp_path / f"d{seed}.txt"
        export(tokens, "words", path)
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n") and "\ufffd" not in text and len(text.split()) == 8, text
        assert tokenizer(text.strip(), add_special_tokens=False).input_ids == tokens.hard_token_ids, text
        assert words_text(tokens, tokenizer) == text  # checked against the tokenizer too


@pytest.mark.parametrize(
    "ids, text",
    [
        ([5, 17, 300, 301, 302], "re big _nto \ufffd"),  # the report: a lone byte of a character
        ([5, 17, 300, 301], "re big _nto"),  # "_" without </w> glued onto "nto"
        ([5, 17], "\u00e9"),  # "é": two byte tokens, one character
    ],
    ids=["replacement-character", "glued", "one-character"],
)
def test_words_are_refused_where_no_text_gives_the_hard_tokens_back(ids, text):
    """Token files from before the projection skipped pieces that are no words: refused in one line
    (no U+FFFD written, no text that would give the model other tokens)."""
    tokens = made_up_tokens(hard_token_ids=ids, hard_text=text)
    with pytest.raises(DiffinvError, match=f"no text gives back these {len(ids)} hard tokens") as error:
        words_text(tokens)
    assert "--format diffusers or a1111" in str(error.value) and "\n" not in str(error.value)


def test_words_checked_against_the_tokenizer_when_given_one(backbone):
    tokenizer = backbone.tokenizer
    upper = tokenizer.convert_tokens_to_ids(["red</w>", "A</w>"])  # "A" tokenizes as "a</w>"
    tokens = made_up_tokens(hard_token_ids=upper, hard_text="red A")
    assert words_text(tokens) == "red A\n"  # two words for two tokens: only the tokenizer can tell
    with pytest.raises(DiffinvError, match="no text gives back these 2 hard tokens"):
        words_text(tokens, tokenizer)
    words = tokenizer("red circle", add_special_tokens=False).input_ids
    assert words_text(made_up_tokens(hard_token_ids=words, hard_text="red circle"), tokenizer) == "red circle\n"


# --- combine ---------------------------------------------------------------------------------------------
def test_combine_is_the_weighted_sum_and_keeps_the_first_files_settings():
    first = made_up_tokens()
    second = soft_tokens(embeddings=torch.ones(3, 32), prompt_a="something else")
    combined = combine([first, second], [1.0, 0.5])
    assert torch.equal(combined.embeddings, first.embeddings + 0.5 * torch.ones(3, 32))
    assert combined.config == first.config and combined.prompt_a == first.prompt_a
    assert combined.model_id == first.model_id
    assert combined.hard_token_ids is None and combined.hard_text == "" and combined.history == {}
    assert torch.equal(combine([first], [1.0]).embeddings, first.embeddings)


@pytest.mark.parametrize(
    "other, fragment",
    [
        (lambda: made_up_tokens(embeddings=torch.zeros(2, 32)), "shape (2, 32)"),
        (lambda: made_up_tokens(embeddings=torch.zeros(3, 16)), "shape (3, 16)"),
        (lambda: made_up_tokens(model_id="another-model"), "'another-model'"),
    ],
    ids=["n", "width", "model"],
)
def test_combine_refuses_files_that_do_not_match(other, fragment):
    with pytest.raises(DiffinvError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        combine([made_up_tokens(), other()], [1.0, 1.0])
    with pytest.raises(DiffinvError, match="one weight per"):
        combine([made_up_tokens()], [1.0, 2.0])


def test_also_argument():
    assert weighted_file("d.safetensors") == ("d.safetensors", 1.0)
    assert weighted_file("d.safetensors:0.5") == ("d.safetensors", 0.5)
    assert weighted_file("dir/d.safetensors:-1") == ("dir/d.safetensors", -1.0)
    assert weighted_file("c:/d.safetensors") == ("c:/d.safetensors", 1.0)


# --- the command -------------------------------------------------------------------------------------------
@pytest.fixture
def token_files(tmp_path):
    hard, soft = tmp_path / "hard.safetensors", tmp_path / "soft.safetensors"
    made_up_tokens().save(hard)
    soft_tokens().save(soft)
    return hard, soft


@pytest.mark.parametrize(
    "format, name", [("diffusers", "x.safetensors"), ("a1111", "x.safetensors"), ("words", "x.txt")]
)
def test_export_command_writes_each_format(capsys, tmp_path, token_files, format, name):
    output = tmp_path / "out" / name
    code, out, err = run_cli(capsys, ["export", token_files[0], "--format", format, "-o", output])
    assert code == 0, err
    assert output.is_file() and str(output) in out
    assert not list(output.parent.glob(".*partial*"))
    if format == "words":
        assert output.read_text(encoding="utf-8") == "red blue circle\n"
    else:
        assert list(load_file(str(output))) == (["<diff>"] if format == "diffusers" else ["emb_params"])


def test_export_command_refuses_words_with_pieces_of_characters(capsys, tmp_path):
    broken = tmp_path / "broken.safetensors"
    made_up_tokens(hard_token_ids=[5, 17, 300, 301, 302], hard_text="re big _nto \ufffd").save(broken)
    output = tmp_path / "d.txt"
    code, _, err = run_cli(capsys, ["export", broken, "--format", "words", "-o", output])
    assert_one_line_error(code, err, "no text gives back these 5 hard tokens", "--format diffusers or a1111")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="file modes and umasks are POSIX's")
@pytest.mark.parametrize("mask", list(UMASKS), ids=lambda mask: f"umask-{mask:03o}")
def test_exports_and_images_get_a_new_files_mode(capsys, tmp_path, token_files, image_files, monkeypatch, mask):
    """Token files, exports and images alike: 0o666 & ~umask (safetensors alone gives 0o600)."""
    import diffinv.cli.commands

    monkeypatch.setattr(diffinv.cli.commands, "load_model", lambda args: _RecordingModel())
    written = []
    with umask(mask):
        for format, name in [("diffusers", "d.safetensors"), ("a1111", "a.safetensors"), ("words", "w.txt")]:
            written.append(tmp_path / "out" / name)
            code, _, err = run_cli(capsys, ["export", token_files[0], "--format", format, "-o", written[-1]])
            assert code == 0, err
        argv = ["apply", token_files[0], image_files["b"], "-o", tmp_path / "b", "--prompt", PROMPT_B]
        code, _, err = run_cli(capsys, [*argv, "--device", "cpu"])
        assert code == 0, err
        written.extend((tmp_path / "b").iterdir())
        written.append(tmp_path / "saved.safetensors")
        made_up_tokens().save(written[-1])
    assert len(written) == 5 and any(path.suffix == ".png" for path in written)
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == UMASKS[mask], path.name


def test_export_command_refuses_before_writing(capsys, tmp_path, token_files):
    hard, soft = token_files
    existing = tmp_path / "d.safetensors"
    existing.write_bytes(b"the user's file")

    code, _, err = run_cli(capsys, ["export", hard, "--format", "a1111", "-o", existing])
    assert_one_line_error(code, err, existing, "already exists", "--overwrite")
    assert existing.read_bytes() == b"the user's file"
    code, _, err = run_cli(capsys, ["export", hard, "--format", "a1111", "-o", existing, "--overwrite"])
    assert code == 0, err
    assert list(load_file(str(existing))) == ["emb_params"]

    code, _, err = run_cli(capsys, ["export", hard, "--format", "diffusers", "-o", hard, "--overwrite"])
    assert_one_line_error(code, err, "is an input")
    code, _, err = run_cli(capsys, ["export", hard, "--format", "words", "-o", tmp_path / "w.safetensors"])
    assert_one_line_error(code, err, "must end in .txt")
    code, _, err = run_cli(capsys, ["export", hard, "--format", "diffusers", "-o", tmp_path / "d.txt"])
    assert_one_line_error(code, err, "must end in .safetensors")
    code, _, err = run_cli(
        capsys, ["export", hard, "--format", "diffusers", "-o", tmp_path / "t.safetensors", "--token", ""]
    )
    assert_one_line_error(code, err, "--token")
    code, _, err = run_cli(capsys, ["export", soft, "--format", "words", "-o", tmp_path / "w.txt"])
    assert_one_line_error(code, err, "soft", "--hard-tokens")
    code, _, err = run_cli(
        capsys, ["export", tmp_path / "missing.safetensors", "--format", "a1111", "-o", tmp_path / "m.safetensors"]
    )
    assert_one_line_error(code, err, "no such token file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors", "hard.safetensors", "soft.safetensors"]


class _RecordingModel:
    """Stands in for the model in `apply`: records the DIFF tokens it is given."""

    def __init__(self):
        self.tokens = []

    def apply(self, tokens, path, **kwargs):
        self.tokens.append(tokens)
        return Image.new("RGB", (8, 8))


def test_apply_also_combines_the_files(capsys, tmp_path, token_files, image_files, monkeypatch):
    import diffinv.cli.commands

    model = _RecordingModel()
    monkeypatch.setattr(diffinv.cli.commands, "load_model", lambda args: model)
    hard, soft = token_files
    argv = ["apply", hard, image_files["b"], "-o", tmp_path / "out", "--prompt", PROMPT_B, "--device", "cpu"]
    code, _, err = run_cli(capsys, [*argv, "--weight", "2", "--also", f"{soft}:-0.5", "--also", soft])
    assert code == 0, err
    (combined,) = model.tokens
    expected = 2 * made_up_tokens().embeddings + 0.5 * soft_tokens().embeddings
    assert torch.allclose(combined.embeddings, expected, atol=1e-6)
    assert combined.prompt_a == made_up_tokens().prompt_a and combined.hard_text == ""

    other = tmp_path / "narrow.safetensors"
    made_up_tokens(embeddings=torch.zeros(2, 32)).save(other)
    code, _, err = run_cli(capsys, [*argv, "--overwrite", "--also", other])
    assert_one_line_error(code, err, "cannot combine", "(2, 32)")
    assert len(model.tokens) == 1  # refused before any B′ was drawn
