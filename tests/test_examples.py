"""Several example pairs of one edit: `fit` over a list of pairs (one D̃, losses averaged over
pairs), `analogy(..., examples=…)`, the command line's pairs, the demo's extra pairs, and the
bench's `--examples K` (K − 1 further pairs of each triplet's edit type, from a stream of their own)."""

import hashlib

import pytest

from diffinv.shapes.world import JITTER, LAYOUT_RANGE, triplets

# sha256 (first 16 hex digits) of repr(triplets(50, seed, layout_range, split)) for seeds 0, 1 and
# 200, taken before the example pairs existed: drawing them must not move a single triplet.
TRIPLET_DIGESTS = {
    (JITTER, None): ["e5210a1c5c618164", "925e98c117b55fbc", "0278f14fddbbc9a7"],
    (JITTER, "seen"): ["db282fe82c965457", "e5c8693251857155", "732091a4a0fa1471"],
    (JITTER, "unseen"): ["fb69b72e3bde6885", "8f6051f2d60b6f5e", "969fdaf981782fed"],
    (JITTER, "compound"): ["7f83d690a8ff9b8a", "705388e87dc4ae4f", "82557aa485538ab1"],
    (LAYOUT_RANGE, None): ["d53afc1ce28dac16", "10b153462d603ba2", "74c7ef2aa0a27057"],
    (LAYOUT_RANGE, "seen"): ["ed2b858293ffa2fb", "20f68adf8a4442fd", "f374c3841fd938c8"],
    (LAYOUT_RANGE, "unseen"): ["55dc77992f052d63", "247eff46678b35a5", "a6c2ba7a7ca6bbb7"],
    (LAYOUT_RANGE, "compound"): ["8f2d3f9b5b87159e", "39c54413823c0bca", "37ee6c6f3250346a"],
}


@pytest.mark.parametrize(("layout_range", "split"), list(TRIPLET_DIGESTS))
def test_the_triplets_are_drawn_as_before_the_examples_existed(layout_range, split):
    digests = [
        hashlib.sha256(repr(triplets(50, seed, layout_range=layout_range, split=split)).encode()).hexdigest()[:16]
        for seed in (0, 1, 200)
    ]
    assert digests == TRIPLET_DIGESTS[(layout_range, split)]


# --- fit over several pairs ---------------------------------------------------------------------------
import torch  # noqa: E402

from conftest import CAPTION_A, CAPTION_A_PRIME, PROMPT_B, fast_config, run_cli, shape_image  # noqa: E402
from diffinv import inversion  # noqa: E402
from diffinv.errors import DiffinvError  # noqa: E402

CAPTIONS = (CAPTION_A, CAPTION_A_PRIME)


@pytest.fixture(scope="module")
def pairs(images):
    """Three (A, A′) pairs of one edit (red → blue) on other shapes and backgrounds, 32² each."""
    return [
        (images["a"], images["a_prime"]),
        (shape_image((32, 32), "red", "square", seed=11), shape_image((32, 32), "blue", "square", seed=12)),
        (shape_image((32, 32), "red", seed=13), shape_image((32, 32), "blue", seed=14)),
    ]


@pytest.mark.parametrize("changes", [{}, {"init": "random"}, {"clip_loss_space": "in-context"}])
def test_one_pair_in_a_list_is_the_single_pair_fit(di, pairs, changes):
    config = fast_config(steps=2, **changes)
    alone = di.fit(*pairs[0], config, captions=CAPTIONS, seed=3, progress=False)
    listed = di.fit([pairs[0]], config=config, captions=[CAPTIONS], seed=3, progress=False)
    assert torch.equal(alone.embeddings, listed.embeddings) and alone.history == listed.history
    assert listed.n_pairs == 1


def test_the_grouped_loop_with_one_pair_is_the_single_pair_loop(di, pairs):
    """`PairGroups` (the path of several pairs) computes, for one pair, what the plain loop does."""
    config = fast_config(steps=3, clip_loss_space="in-context", lambda_clip_b=1.0)
    prepared = di.prepare(*pairs[0], config, captions=CAPTIONS, prompt_b=PROMPT_B)
    plain, plain_history = inversion.fit_diff_tokens(
        di.backbone, di.clip, [prepared], config, torch.Generator().manual_seed(0), False
    )
    grouped, grouped_history = inversion.fit_diff_tokens(
        di.backbone, di.clip, [prepared], config, torch.Generator().manual_seed(0), False, groups=[0]
    )
    assert grouped.shape == plain.shape == (1, config.n_tokens, di.backbone.token_width)
    torch.testing.assert_close(grouped, plain, rtol=0, atol=1e-6)
    for name in ("loss", "loss_tc", "loss_clip"):
        assert grouped_history[0][name] == pytest.approx(plain_history[0][name], abs=1e-6)


def test_several_pairs_give_one_d_whose_losses_average_every_pair(di, pairs, monkeypatch):
    config = fast_config(steps=2)
    captions = [CAPTIONS] * 3
    recorded = []
    real_loss = inversion.token_consistency_loss

    def recording(*args, **kwargs):
        losses = real_loss(*args, **kwargs)  # (K,): one per pair
        recorded.append(losses.detach().clone())
        return losses

    monkeypatch.setattr(inversion, "token_consistency_loss", recording)
    tokens = di.fit(pairs, config=config, captions=captions, progress=False)
    assert tokens.embeddings.shape == (config.n_tokens, di.backbone.token_width) and tokens.n_pairs == 3
    assert [len(losses) for losses in recorded] == [3] * config.steps  # every pair's L_tc, every step
    assert tokens.history["loss_tc"] == pytest.approx([losses.mean().item() for losses in recorded], rel=1e-6)

    def without_the_third(*args, **kwargs):
        return real_loss(*args, **kwargs) * torch.tensor([1.0, 1.0, 0.0])

    monkeypatch.setattr(inversion, "token_consistency_loss", without_the_third)
    dropped = di.fit(pairs, config=config, captions=captions, progress=False)
    assert not torch.allclose(dropped.embeddings, tokens.embeddings)  # the third pair's loss moves D̃
    monkeypatch.setattr(inversion, "token_consistency_loss", real_loss)
    two = di.fit(pairs[:2], config=config, captions=captions[:2], progress=False)
    assert not torch.allclose(two.embeddings, tokens.embeddings)


def test_a_pair_given_twice_is_averaged_not_summed(di, pairs):
    """The per-step scale does not grow with K: with the CLIP loss alone (no noise draws), the
    same pair twice is the same fit, losses included."""
    config = fast_config(steps=3, use_token_consistency=False, clip_loss_space="in-context")
    once = di.fit([pairs[1]], config=config, captions=[CAPTIONS], progress=False)
    twice = di.fit([pairs[1], pairs[1]], config=config, captions=[CAPTIONS, CAPTIONS], progress=False)
    torch.testing.assert_close(twice.embeddings, once.embeddings, rtol=0, atol=1e-6)
    assert twice.history["loss"] == pytest.approx(once.history["loss"], abs=1e-6)


def test_the_groups_target_is_the_normalised_mean_of_the_pairs_deltas():
    groups = inversion.PairGroups([0, 1, 1, 0, 1], torch.device("cpu"))
    values = torch.arange(10.0).view(5, 2)
    torch.testing.assert_close(groups.mean(values), torch.stack([values[[0, 3]].mean(0), values[[1, 2, 4]].mean(0)]))
    torch.testing.assert_close(
        groups.per_pair(torch.tensor([[7.0], [9.0]])).flatten(), torch.tensor([7, 9, 9, 7, 9.0])
    )
    deltas = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    pairs = [inversion.PreparedPair("", "", "", "", delta, None) for delta in deltas]
    target = inversion.PairGroups([0, 0], torch.device("cpu")).targets(pairs)
    torch.testing.assert_close(target, torch.tensor([[0.5**0.5, 0.5**0.5]]))
    with pytest.raises(DiffinvError, match="none empty"):
        inversion.PairGroups([0, 2], torch.device("cpu"))


def test_the_encoders_start_is_the_mean_of_its_predictions(backbone, clip, pairs):
    from diffinv.backbones.editor import InstructPix2PixBackbone
    from diffinv.diff_encoder import DiffEncoder, DiffEncoderConfig
    from diffinv.pipeline import DifferenceInversion
    from diffinv.testing import tiny_instruct_pix2pix

    editor = InstructPix2PixBackbone(tiny_instruct_pix2pix(backbone.pipe), "tiny-editor")
    encoder = DiffEncoder(DiffEncoderConfig(clip.joint_width, 5, editor.token_width, hidden=16))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.normal_(0, 0.3)
    config = fast_config(sampling_mode="editor", init="encoder", steps=0)
    di = DifferenceInversion(editor, clip, captioner=None, default_config=config, diff_encoder=encoder.eval())
    each = [di.fit(*pair, progress=False).embeddings for pair in pairs[:2]]
    pooled = di.fit(pairs[:2], progress=False)
    torch.testing.assert_close(pooled.embeddings, (each[0] + each[1]) / 2, rtol=0, atol=1e-6)
    assert pooled.n_pairs == 2 and pooled.history["loss"] == []


def test_analogy_takes_the_examples_as_fit_does(di, pairs, images):
    import numpy as np

    config = fast_config(steps=2)
    captions = [CAPTIONS] * 3
    b_prime, tokens = di.analogy(
        *pairs[0], images["b"], config, captions=captions, prompt_b=PROMPT_B, examples=pairs[1:], progress=False
    )
    fitted = di.fit(pairs, config=config, captions=captions, progress=False)
    assert torch.equal(tokens.embeddings, fitted.embeddings) and tokens.n_pairs == 3
    drawn = di.apply(fitted, images["b"], prompt=PROMPT_B, config=config, progress=False)
    assert np.array_equal(np.asarray(b_prime), np.asarray(drawn))


def test_fit_many_fits_tasks_of_several_pairs_beside_single_pairs(di, pairs):
    config = fast_config(steps=2)
    tokens = di.fit_many(
        [pairs[:2], pairs[2]], config, captions=[[CAPTIONS, CAPTIONS], CAPTIONS], seeds=[0, 1], progress=False
    )
    assert [t.n_pairs for t in tokens] == [2, 1]
    assert all(t.embeddings.shape == (config.n_tokens, di.backbone.token_width) for t in tokens)
    assert not torch.allclose(tokens[0].embeddings, tokens[1].embeddings)


def test_further_pairs_take_the_first_as_working_size(di, pairs):
    wide = (shape_image((64, 32), "red", seed=5), shape_image((64, 32), "blue", seed=6))
    working = di.working_pairs([pairs[0], wide], fast_config())
    assert {image.size for pair in working for image in pair} == {working[0].a.size}
    tokens = di.fit([pairs[0], wide], config=fast_config(steps=1), captions=[CAPTIONS] * 2, progress=False)
    assert tokens.n_pairs == 2


def test_bad_pairs_and_captions_are_one_clear_error(di, pairs):
    with pytest.raises(DiffinvError, match="list of \\(A, A′\\) pairs"):
        di.fit([], progress=False)
    with pytest.raises(DiffinvError, match="either A and A′"):
        di.fit(pairs, pairs[0][1], progress=False)
    with pytest.raises(DiffinvError, match="list of \\(A, A′\\) pairs"):
        di.fit([pairs[0][0]], progress=False)
    with pytest.raises(DiffinvError, match="captions: expected"):
        di.fit(pairs, config=fast_config(), captions=[CAPTIONS], progress=False)


def test_the_token_file_records_how_many_pairs(di, pairs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from diffinv.tokens import DiffTokens

    tokens = di.fit(pairs[:2], config=fast_config(steps=1), captions=[CAPTIONS] * 2, progress=False)
    tokens.save(tmp_path / "two.safetensors")
    assert DiffTokens.load(tmp_path / "two.safetensors").n_pairs == 2
    with safe_open(str(tmp_path / "two.safetensors"), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "n_pairs"}  # a file from before
    save_file({"diff_tokens": tokens.embeddings}, str(tmp_path / "old.safetensors"), metadata=metadata)
    assert DiffTokens.load(tmp_path / "old.safetensors").n_pairs == 1


# --- the command line ----------------------------------------------------------------------------------
@pytest.fixture
def no_model_loading(monkeypatch):
    from diffinv.pipeline import DifferenceInversion

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(DifferenceInversion, "from_pretrained", refuse)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, pairs):
    folder = tmp_path_factory.mktemp("pairs")
    paths = []
    for k, pair in enumerate(pairs):
        for name, image in zip(("a", "a_prime"), pair):
            image.save(folder / f"{name}{k}.png")
        paths.append((str(folder / f"a{k}.png"), str(folder / f"a_prime{k}.png")))
    return paths


def test_an_odd_number_of_images_is_one_line(capsys, tmp_path, pair_files, model_args, no_model_loading):
    argv = ["fit", *pair_files[0], pair_files[1][0], "-o", tmp_path / "t.safetensors", *model_args]
    code, _, err = run_cli(capsys, argv)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "odd number" in err and pair_files[1][0] in err


@pytest.mark.parametrize("where", ["positional", "--pair"])
def test_a_bad_image_of_a_further_pair_is_named_before_loading(
    capsys, tmp_path, pair_files, model_args, no_model_loading, where
):
    missing = tmp_path / "missing.png"
    further = [pair_files[1][0], missing] if where == "positional" else ["--pair", pair_files[1][0], missing]
    code, _, err = run_cli(capsys, ["fit", *pair_files[0], *further, "-o", tmp_path / "t.safetensors", *model_args])
    assert code == 2 and len(err.splitlines()) == 1 and f"{missing}: no such file" in err
    code, _, err = run_cli(
        capsys,
        ["analogy", *pair_files[0], pair_files[2][0], "--pair", missing, pair_files[1][1], "-o", tmp_path / "b.png"],
    )
    assert code == 2 and len(err.splitlines()) == 1 and f"{missing}: no such file" in err


def test_fit_on_several_pairs_from_the_command_line(capsys, tmp_path, pair_files, model_args):
    from diffinv.tokens import DiffTokens

    fitting = ["--steps", "2", "--prompt-source", "caption", "--caption-a", CAPTION_A, "--caption-a-prime"]
    fitting += [CAPTION_A_PRIME, "--captions-from", tmp_path / "captions.txt", *model_args]
    (tmp_path / "captions.txt").write_text(f"{CAPTION_A}\n{CAPTION_A_PRIME}\n{PROMPT_B}\n")
    listed = tmp_path / "listed.safetensors"
    code, out, err = run_cli(capsys, ["fit", *pair_files[0], *pair_files[1], "-o", listed, *fitting])
    assert code == 0, err
    assert "2 pairs" in out and DiffTokens.load(listed).n_pairs == 2
    flagged = tmp_path / "flagged.safetensors"
    code, _, err = run_cli(capsys, ["fit", *pair_files[0], "--pair", *pair_files[1], "-o", flagged, *fitting])
    assert code == 0, err
    assert torch.equal(DiffTokens.load(listed).embeddings, DiffTokens.load(flagged).embeddings)

    b_prime = tmp_path / "b_prime.png"
    argv = ["analogy", *pair_files[0], pair_files[2][0], "--pair", *pair_files[1], "-o", b_prime, "--prompt", PROMPT_B]
    code, _, err = run_cli(capsys, [*argv, "--sampling-steps", "2", *fitting])
    assert code == 0, err
    assert DiffTokens.load(b_prime.with_suffix(".safetensors")).n_pairs == 2


# --- the bench: --examples K ------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [None, "seen", "unseen", "compound"])
def test_example_pairs_show_the_triplets_edit_with_everything_else_drawn_anew(split):
    from diffinv.shapes.world import ATTRIBUTES, example_pairs

    kept_values = {}
    for index, triplet in enumerate(triplets(30, seed=1, layout_range=LAYOUT_RANGE, split=split)):
        pairs = example_pairs(triplet, 3, 1, split, index, LAYOUT_RANGE)
        assert len(pairs) == 3 and example_pairs(triplet, 3, 1, split, index, LAYOUT_RANGE) == pairs  # seeded
        assert example_pairs(triplet, 2, 1, split, index, LAYOUT_RANGE) == pairs[:2]  # more K, same first pairs
        changed = triplet.attributes_changed
        kept = [name for name in ATTRIBUTES if name not in changed]
        for a, a_prime in pairs:
            # the same edit type: A's values before, A′'s after, nothing else changed
            assert all(getattr(a, k) == getattr(triplet.a, k) for k in changed)
            assert all(getattr(a_prime, k) == getattr(triplet.a_prime, k) for k in changed)
            assert all(getattr(a, k) == getattr(a_prime, k) for k in kept) and (a.dx, a.dy) == (a_prime.dx, a_prime.dy)
            # neither A nor B again: another scene showing the edit
            assert any(getattr(a, k) != getattr(triplet.a, k) for k in kept)
            assert any(getattr(a, k) != getattr(triplet.b, k) for k in kept)
            for k in kept:
                kept_values.setdefault(k, set()).add(getattr(a, k))
    assert all(values == set(ATTRIBUTES[k]) for k, values in kept_values.items())  # every value turns up


def test_the_bench_draws_the_same_triplets_with_k_examples_each():
    from diffinv.bench.datasets import shapes_dataset
    from diffinv.shapes.world import example_pairs, render

    one = shapes_dataset(4, seed=1, layout_range=LAYOUT_RANGE, split="all")
    three = shapes_dataset(4, seed=1, layout_range=LAYOUT_RANGE, split="all", examples=3)
    assert [(t.id, t.truth) for t in three] == [(t.id, t.truth) for t in one]
    assert all(t.examples == [] for t in one) and all(len(t.examples) == 2 for t in three)
    triplet = three[5]  # unseen, index 1
    scenes = example_pairs(triplet.truth, 2, 1, "unseen", 1, LAYOUT_RANGE)
    assert triplet.examples[1][1]().tobytes() == render(scenes[1][1]).tobytes()


def bench_options(*argv):
    from diffinv.cli import build_parser
    from diffinv.cli.bench import run_options

    return run_options(build_parser().parse_args(["bench", "run", *map(str, argv)]))


def no_loading(options):
    raise AssertionError("the model was loaded before every check was made")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--method", "sdedit"], "not for sdedit: one example pair"),
        (["--method", "difference-inversion", "--method", "dia"], "not for dia: one example pair"),
        (["--dataset", "folder", "--data", "somewhere"], "--examples is for the shapes dataset"),
    ],
)
def test_examples_are_refused_in_one_line_before_loading(tmp_path, argv, fragment):
    from diffinv.bench.command import run_command

    with pytest.raises(DiffinvError, match=fragment):
        run_command(bench_options("--out", tmp_path / "run", "--n", "1", "--examples", "2", *argv), no_loading)
    with pytest.raises(DiffinvError, match="at least 1"):
        run_command(bench_options("--out", tmp_path / "run", "--n", "1", "--examples", "0"), no_loading)


def test_the_run_record_says_how_many_examples(tmp_path):
    from diffinv.bench.command import build_dataset

    triplets_, dataset = build_dataset(bench_options("--out", tmp_path, "--n", "2", "--examples", "3"))
    assert dataset["examples"] == 3 and all(len(t.examples) == 2 for t in triplets_)
    assert "examples" not in build_dataset(bench_options("--out", tmp_path, "--n", "2"))[1]  # as before


@pytest.mark.filterwarnings("ignore:the captions of A and A′")  # the random CLIP captions A and A′ alike
def test_the_runner_hands_each_triplet_its_examples(di, clip, pairs, tmp_path, monkeypatch):
    from diffinv.bench.datasets import BenchTriplet
    from diffinv.bench.methods import expand_methods
    from diffinv.bench.metrics import ClipEmbedder
    from diffinv.bench.run import BenchRunner, read_results
    from diffinv.captioners import ClipRetrievalCaptioner
    from diffinv.pipeline import DifferenceInversion

    def constant(image):
        return lambda: image

    bench_di = DifferenceInversion(di.backbone, clip, ClipRetrievalCaptioner(clip, [CAPTION_A, CAPTION_A_PRIME]))
    shown = []
    real_fit_many = bench_di.fit_many
    monkeypatch.setattr(
        bench_di, "fit_many", lambda tasks, *a, **k: shown.extend(map(len, tasks)) or real_fit_many(tasks, *a, **k)
    )
    triplets_ = [
        BenchTriplet(
            id=f"t{i}",
            a=constant(pairs[i][0]),
            a_prime=constant(pairs[i][1]),
            b=constant(shape_image((32, 32), "red", "square", seed=20 + i)),
            caption_b_prime="a photo of a blue square",
            examples=[(constant(pairs[2][0]), constant(pairs[2][1]))],
        )
        for i in range(2)
    ]
    runner = BenchRunner(bench_di, tmp_path, fast_config(steps=1), [ClipEmbedder(clip)], batch_size=2, progress=False)
    methods = expand_methods(["difference-inversion", "copy-b", "oracle-caption"])
    assert runner.run(methods, triplets_) == 6
    assert shown == [2, 2]  # the batch's fit was shown both pairs of each triplet
    rows = read_results(tmp_path)
    assert len(rows) == 6 and all(row["examples"] == 2 for row in rows)
    from diffinv.bench.report import write_reports

    header = next(
        line for line in write_reports(tmp_path)["md"].read_text().splitlines() if line.startswith("| method")
    )
    assert "examples" not in header  # a count of pairs, not a score


# --- the demo ------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:the captions of A and A′")  # the random CLIP captions A and A′ alike
def test_the_demo_fits_on_the_extra_pairs_it_is_given(backbone, clip, tmp_path):
    from pathlib import Path

    from diffinv.captioners import ClipRetrievalCaptioner
    from diffinv.demo import ModelCache, run_analogy
    from diffinv.pipeline import DifferenceInversion
    from diffinv.tokens import DiffTokens

    examples = Path(__file__).resolve().parents[1] / "examples"
    a, a_prime, b = (str(examples / "colour" / name) for name in ("a.png", "a_prime.png", "b.png"))
    further = (str(examples / "shape" / "a.png"), str(examples / "shape" / "a_prime.png"))

    def never(model):
        raise AssertionError("no model should load for a half pair")

    with pytest.raises(DiffinvError, match="example pair 3: upload both A3 and A′3, or neither"):
        run_analogy(a, a_prime, b, examples=[(None, None), (further[0], None)], cache=ModelCache(load=never))
    captioner = ClipRetrievalCaptioner(clip, [CAPTION_A, CAPTION_A_PRIME, PROMPT_B])
    tiny = DifferenceInversion(backbone, clip, captioner, default_config=fast_config(steps=2))
    cache = ModelCache(load=lambda name: tiny)
    result = run_analogy(
        a, a_prime, b, "tiny", 2, examples=[(None, None), further], cache=cache, out_dir=tmp_path / "two"
    )
    assert DiffTokens.load(result.tokens_path).n_pairs == 2 and "2 example pairs" in result.message
    alone = run_analogy(a, a_prime, b, "tiny", 2, examples=[(None, None)], cache=cache, out_dir=tmp_path / "one")
    assert DiffTokens.load(alone.tokens_path).n_pairs == 1 and "example pairs" not in alone.message


def test_the_method_takes_examples_one_triplet_at_a_time(di, pairs, images):
    from diffinv.method import CopyB, DifferenceInversionMethod, registered, takes_examples

    # α = 0 and PEZ prompts: no captions needed, so the tiny model needs no captioner
    method = DifferenceInversionMethod(di, fast_config(steps=1, alpha=0.0, prompt_source="pez", pez_steps=1))
    assert takes_examples(method) and takes_examples(CopyB) and not takes_examples(registered("sdedit").load())
    method.analogy(*pairs[0], images["b"], examples=pairs[1:2], progress=False)
    assert method.last_tokens.n_pairs == 2
    method.analogy(*pairs[0], images["b"], progress=False)
    assert method.last_tokens.n_pairs == 1
