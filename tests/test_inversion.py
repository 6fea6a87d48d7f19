"""Algorithm 1 step by step: frozen models, D̃ ← 0, the ± pairing of eqs. 7–8, the noising of
step ⑤, the CLIP loss, and the fitting loop."""

import dataclasses
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

import diffinv.backbones.sd
import diffinv.inversion
from conftest import CAPTION_A, CAPTION_A_PRIME, fast_config, module_parameters
from diffinv.errors import DiffinvError
from diffinv.inversion import (
    PreparedPair,
    check_compatible,
    clip_loss,
    fit_diff_tokens,
    init_diff_tokens,
    noised_pair,
    signed_pair,
    token_consistency_loss,
)
from diffinv.pez import random_token_ids, usable_token_mask

PROMPT_A = "a red circle"
PROMPT_A_PRIME = "a blue circle on the sea"


@pytest.fixture(scope="module")
def pair(backbone, images):
    """A prepared pair with distinct prompts and latents, z_A first."""
    return PreparedPair(
        caption_a=CAPTION_A,
        caption_a_prime=CAPTION_A_PRIME,
        prompt_a=PROMPT_A,
        prompt_a_prime=PROMPT_A_PRIME,
        target_delta=torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0),
        latents=backbone.encode_images([images["a"], images["a_prime"]]),
    )


@pytest.fixture
def seen_text_input(monkeypatch):
    """Records, at every `backbone.encode_prompt`, the ids and the token embeddings as the text
    encoder sees them (after the DIFF tokens were put in)."""
    records = []
    original = diffinv.backbones.sd.replaced_token_embeddings

    @contextmanager
    def spy(text_model, slot_mask, values):
        with original(text_model, slot_mask, values):

            def hook(module, inputs, output):
                records.append(
                    {
                        "ids": inputs[0].detach().clone(),
                        "mask": slot_mask.clone(),
                        "embeddings": output.detach().clone(),
                    }
                )

            handle = text_model.get_input_embeddings().register_forward_hook(hook)
            try:
                yield
            finally:
                handle.remove()

    monkeypatch.setattr(diffinv.backbones.sd, "replaced_token_embeddings", spy)
    return records


@pytest.fixture
def seen_unet_input(monkeypatch, backbone):
    records = []
    original = backbone.predict

    def spy(noisy, timesteps, text_states, image_latents=None):
        records.append(
            {
                "noisy": noisy.detach().clone(),
                "timesteps": timesteps.clone(),
                "text_states": text_states.detach().clone(),
            }
        )
        return original(noisy, timesteps, text_states, image_latents)

    monkeypatch.setattr(backbone, "predict", spy)
    return records


# ① … ④ -----------------------------------------------------------------------------------------
def test_zero_init(backbone):
    diff = init_diff_tokens(fast_config(n_tokens=4), backbone, count=3)
    assert diff.shape == (3, 4, backbone.token_width)
    assert diff.dtype == torch.float32
    assert diff.requires_grad and diff.is_leaf
    assert torch.count_nonzero(diff) == 0


def test_random_init_at_the_vocabulary_scale(backbone):
    config = fast_config(init="random", n_tokens=5)
    diff = init_diff_tokens(config, backbone, torch.Generator().manual_seed(0))
    assert diff.shape == (1, 5, backbone.token_width) and diff.requires_grad
    assert torch.count_nonzero(diff) == diff.numel()
    vocabulary_std = backbone.vocabulary.float().std().item()
    assert diff.detach().std().item() == pytest.approx(vocabulary_std, rel=0.25)
    again = init_diff_tokens(config, backbone, torch.Generator().manual_seed(0))
    assert torch.equal(diff, again)


def test_random_init_draws_its_noise_from_a_cpu_generator(backbone):
    """One seed, one D̃ start on every device: the noise is drawn on the CPU, then moved."""
    config = fast_config(init="random", n_tokens=3)
    diff = init_diff_tokens(config, backbone, torch.Generator().manual_seed(9), count=2)
    scale = backbone.vocabulary.float().std().item()
    expected = torch.randn((2, 3, backbone.token_width), generator=torch.Generator().manual_seed(9)) * scale
    assert torch.equal(diff.detach().cpu(), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_random_init_is_the_same_on_cpu_and_cuda(backbone):
    config = fast_config(init="random", n_tokens=3)
    on_cpu = init_diff_tokens(config, backbone, torch.Generator().manual_seed(9))
    on_cuda = init_diff_tokens(config, backbone, torch.Generator(device="cuda").manual_seed(9))
    assert torch.equal(on_cpu.detach().cpu(), on_cuda.detach().cpu())


def test_hard_tokens_with_zero_init_start_from_seeded_usable_vocabulary_rows(backbone):
    """A zero D̃ has no nearest token, so hard tokens start as PEZ does: random usable rows."""
    config = fast_config(hard_tokens=True, n_tokens=4)
    diff = init_diff_tokens(config, backbone, torch.Generator().manual_seed(3), count=2)
    assert diff.shape == (2, 4, backbone.token_width) and diff.requires_grad and diff.dtype == torch.float32
    vocabulary = backbone.vocabulary.detach().float()
    ids = random_token_ids(
        backbone.tokenizer, vocabulary.shape[0], (2, 4), torch.Generator().manual_seed(3), words_only=True
    )
    assert torch.equal(diff.detach(), vocabulary[ids])
    usable = usable_token_mask(backbone.tokenizer, vocabulary.shape[0], "cpu", words_only=True)
    assert usable[ids].all() and len(set(ids.flatten().tolist())) > 1
    again = init_diff_tokens(config, backbone, torch.Generator().manual_seed(3), count=2)
    other = init_diff_tokens(config, backbone, torch.Generator().manual_seed(4), count=2)
    assert torch.equal(diff, again) and not torch.equal(diff, other)
    # soft tokens keep the paper's zeros
    assert torch.count_nonzero(init_diff_tokens(fast_config(n_tokens=4), backbone, torch.Generator())) == 0


def test_signed_pair_alternates_minus_and_plus_per_pair():
    diff = torch.randn(2, 3, 4)
    rows = signed_pair(diff)
    assert rows.shape == (4, 3, 4)
    assert torch.equal(rows[0], -diff[0]) and torch.equal(rows[1], diff[0])
    assert torch.equal(rows[2], -diff[1]) and torch.equal(rows[3], diff[1])


# ⑤ ------------------------------------------------------------------------------------------------
def test_noised_pair_draws_independent_integer_timesteps_and_noises(backbone, pair):
    generator = torch.Generator().manual_seed(0)
    signal = backbone.noise_scheduler.alphas_cumprod
    all_timesteps = []
    for _ in range(100):
        noisy, timesteps, targets = noised_pair(backbone, pair.latents, generator)
        assert timesteps.shape == (2,) and timesteps.dtype == torch.long
        assert noisy.shape == targets.shape == pair.latents.shape
        # epsilon model: the target is the noise, and noisy = √ᾱ_t z + √(1 − ᾱ_t) ε row by row
        alpha_bar = signal[timesteps].view(2, 1, 1, 1)
        assert torch.allclose(noisy, alpha_bar.sqrt() * pair.latents + (1 - alpha_bar).sqrt() * targets, atol=1e-5)
        assert not torch.allclose(targets[0], targets[1]), "each row draws its own noise"
        all_timesteps.append(timesteps)
    steps = torch.stack(all_timesteps)
    assert steps.min() >= 0 and steps.max() < backbone.num_train_timesteps
    assert (steps[:, 0] != steps[:, 1]).float().mean() > 0.9, "t_before and t_after are drawn independently"
    assert steps.min() < 100 and steps.max() > 900, "uniform over the whole range [0, T)"


def test_noised_pair_targets_v_for_a_v_model(images):
    from diffinv.testing import tiny_backbone

    v_backbone = tiny_backbone("v_prediction")
    latents = v_backbone.encode_images([images["a"], images["a_prime"]])
    noisy, timesteps, targets = noised_pair(v_backbone, latents, torch.Generator().manual_seed(1))
    alpha_bar = v_backbone.noise_scheduler.alphas_cumprod[timesteps].view(2, 1, 1, 1)
    # recover ε from z_t = √ᾱ z + √(1 − ᾱ) ε, then v = √ᾱ ε − √(1 − ᾱ) z
    noise = (noisy - alpha_bar.sqrt() * latents) / (1 - alpha_bar).sqrt()
    assert torch.allclose(targets, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents, atol=1e-4)


# ⑥ ------------------------------------------------------------------------------------------------
def test_token_consistency_pairs_minus_with_a_prime_prompt_and_plus_with_a_prompt(
    backbone, pair, seen_text_input, seen_unet_input
):
    n = 3
    diff = torch.randn(1, n, backbone.token_width, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ids, slot_mask = backbone.slot_ids([pair.prompt_a_prime, pair.prompt_a], n)
    noisy, timesteps, targets = noised_pair(backbone, pair.latents, torch.Generator().manual_seed(0))

    loss = token_consistency_loss(backbone, diff, ids, slot_mask, noisy, timesteps, targets)

    (text,) = seen_text_input
    embeddings, mask = text["embeddings"], text["mask"]
    assert torch.equal(text["ids"], ids)
    assert torch.allclose(embeddings[0][mask[0]], -diff.detach()[0])  # before: {prompt_A′, −D̃}
    assert torch.allclose(embeddings[1][mask[1]], diff.detach()[0])  # after: {prompt_A, +D̃}
    vocabulary = backbone.vocabulary
    for row in range(2):
        assert torch.equal(embeddings[row][~mask[row]], vocabulary[ids[row][~mask[row]]])

    tokenizer = backbone.tokenizer

    def prompt_of(row):
        words = ids[row][~mask[row]].tolist()
        return tokenizer.decode(words[1 : words.index(tokenizer.eos_token_id)]).strip()

    assert prompt_of(0) == PROMPT_A_PRIME and prompt_of(1) == PROMPT_A

    (unet,) = seen_unet_input
    assert torch.equal(unet["noisy"], noisy) and torch.equal(unet["timesteps"], timesteps)
    # Returned loss: the sum of the two rows' mean squared errors
    prediction = backbone.unet(noisy, timesteps, encoder_hidden_states=unet["text_states"]).sample
    expected = ((prediction - targets) ** 2).mean(dim=(1, 2, 3)).sum()
    assert loss.shape == (1,) and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.sum().backward()
    assert diff.grad is not None and diff.grad.abs().sum() > 0


def test_fit_loop_uses_a_prime_prompt_with_z_a_and_a_prompt_with_z_a_prime(
    backbone, clip, pair, seen_text_input, seen_unet_input, monkeypatch
):
    """Through the loop: ids = slot_ids([prompt_A′, prompt_A]); row 0 noises z_A, row 1 z_A′;
    the text encoder gets −D̃ in row 0 and +D̃ in row 1."""
    n = 4
    inits, noised = [], []
    original_init, original_noised = diffinv.inversion.init_diff_tokens, diffinv.inversion.noised_pair

    def init_spy(*args, **kwargs):
        diff = original_init(*args, **kwargs)
        inits.append(diff.detach().clone())
        return diff

    def noised_spy(backbone_, latents, generator=None):
        result = original_noised(backbone_, latents, generator)
        noised.append((latents.clone(), *(r.clone() for r in result)))
        return result

    monkeypatch.setattr(diffinv.inversion, "init_diff_tokens", init_spy)
    monkeypatch.setattr(diffinv.inversion, "noised_pair", noised_spy)
    config = fast_config(steps=1, n_tokens=n, init="random")  # non-zero D̃, so −D̃ ≠ +D̃
    fit_diff_tokens(backbone, clip, pair, config, torch.Generator().manual_seed(0), progress=False)

    (d0,) = inits
    d0 = d0[0]  # one pair
    (text,) = seen_text_input
    expected_ids, expected_mask = backbone.slot_ids([PROMPT_A_PRIME, PROMPT_A], n)
    assert torch.equal(text["ids"], expected_ids) and torch.equal(text["mask"], expected_mask)
    assert torch.allclose(text["embeddings"][0][expected_mask[0]], -d0)
    assert torch.allclose(text["embeddings"][1][expected_mask[1]], d0)

    ((latents, noisy, timesteps, targets),) = noised
    assert torch.equal(latents, pair.latents)  # row 0 = z_A, row 1 = z_A′
    alpha_bar = backbone.noise_scheduler.alphas_cumprod[timesteps].view(2, 1, 1, 1)
    assert torch.allclose(
        noisy[0], alpha_bar[0].sqrt() * pair.latents[0] + (1 - alpha_bar[0]).sqrt() * targets[0], atol=1e-5
    )
    assert torch.allclose(
        noisy[1], alpha_bar[1].sqrt() * pair.latents[1] + (1 - alpha_bar[1]).sqrt() * targets[1], atol=1e-5
    )
    (unet,) = seen_unet_input
    assert torch.equal(unet["noisy"], noisy) and torch.equal(unet["timesteps"], timesteps)


# ⑦ ------------------------------------------------------------------------------------------------
def test_clip_loss_is_a_cosine_distance(clip):
    diff = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    features = clip.slot_features(diff.detach())
    assert clip_loss(clip, diff, features, "text-tower").item() == pytest.approx(0.0, abs=1e-5)
    assert clip_loss(clip, diff, -features, "text-tower").item() == pytest.approx(2.0, abs=1e-5)
    mean = diff.detach().mean(dim=1)
    assert clip_loss(clip, diff, mean / mean.norm(), "token-mean").item() == pytest.approx(0.0, abs=1e-5)
    loss = clip_loss(clip, diff, torch.nn.functional.normalize(torch.randn(1, 32), dim=-1), "text-tower")
    loss.sum().backward()
    assert diff.grad is not None and diff.grad.abs().sum() > 0


def test_check_compatible_refuses_mismatched_widths(backbone, wide_di):
    wide_clip = wide_di.clip
    with pytest.raises(DiffinvError, match="token width 48"):
        check_compatible(backbone, wide_clip, fast_config())
    with pytest.raises(DiffinvError, match="token-mean"):
        check_compatible(backbone, wide_clip, fast_config(clip_loss_space="token-mean"))
    check_compatible(backbone, wide_clip, fast_config(use_clip_loss=False))


# The loop -----------------------------------------------------------------------------------------
def test_fitting_changes_only_the_diff_tokens(di, backbone, clip, images):
    parameters = module_parameters(backbone, clip)
    before = {name: p.detach().clone() for name, p in parameters.items()}
    buffers = {name: b.clone() for name, b in backbone.unet.named_buffers()}

    tokens = di.fit(
        images["a"], images["a_prime"], fast_config(steps=4), captions=(CAPTION_A, CAPTION_A_PRIME), progress=False
    )

    after = module_parameters(backbone, clip)
    assert after.keys() == before.keys()
    changed = [name for name, p in after.items() if not torch.equal(p.detach(), before[name])]
    assert changed == [], f"frozen parameters changed: {changed[:5]}"
    assert all(torch.equal(b, buffers[name]) for name, b in backbone.unet.named_buffers())
    assert [name for name, p in after.items() if p.requires_grad] == []
    assert [name for name, p in after.items() if p.grad is not None] == []
    # … while D̃ itself did move away from its zero start
    assert torch.count_nonzero(tokens.embeddings) > 0
    assert len(tokens.history["loss"]) == 4


def test_fit_diff_tokens_history_and_ablations(backbone, clip, pair):
    config = fast_config(steps=3)
    diff, history = fit_diff_tokens(backbone, clip, pair, config, torch.Generator().manual_seed(0), progress=False)
    assert diff.shape == (5, backbone.token_width) and not diff.requires_grad
    assert set(history) == {"loss", "loss_tc", "loss_clip"}
    for total, tc, cl in zip(history["loss"], history["loss_tc"], history["loss_clip"]):
        assert total == pytest.approx(config.lambda_tc * tc + config.lambda_clip * cl, rel=1e-5)
    # the CLIP loss goes down on this fixed target
    assert history["loss_clip"][-1] < history["loss_clip"][0]

    _, no_tc = fit_diff_tokens(backbone, clip, pair, fast_config(steps=1, use_token_consistency=False), progress=False)
    assert no_tc["loss_tc"] == [0.0]
    _, no_clip = fit_diff_tokens(backbone, clip, pair, fast_config(steps=1, use_clip_loss=False), progress=False)
    assert no_clip["loss_clip"] == [0.0] and no_clip["loss_tc"][0] > 0


def test_zero_steps_are_refused_before_any_work():
    # D̃ would stay at its zero start and B′ would be B redrawn, unedited.
    with pytest.raises(DiffinvError, match="steps must be an integer ≥ 1"):
        fast_config(steps=0)


@pytest.mark.parametrize("hard", [True, False])
def test_hard_tokens_reach_the_encoders_as_vocabulary_rows(backbone, clip, pair, seen_text_input, monkeypatch, hard):
    """At every step, with hard tokens, the text encoder gets ±(vocabulary rows) at the DIFF slots
    (−row for the "before" branch) and the CLIP loss encodes vocabulary rows; without, it does not."""
    clip_inputs = []
    original = clip.slot_features

    def spy(embeddings):
        clip_inputs.append(embeddings.detach().clone())
        return original(embeddings)

    monkeypatch.setattr(clip, "slot_features", spy)
    config = fast_config(steps=3, n_tokens=3, hard_tokens=hard, init="zeros" if hard else "random")
    fit_diff_tokens(backbone, clip, pair, config, torch.Generator().manual_seed(0), progress=False)

    vocabulary = backbone.vocabulary.detach()

    def vocabulary_rows(rows):  # (m, d) → whether each row is exactly some vocabulary row
        return (rows[:, None, :] == vocabulary[None]).all(dim=-1).any(dim=-1)

    assert len(seen_text_input) == len(clip_inputs) == 3
    for text, from_clip in zip(seen_text_input, clip_inputs):
        mask, embeddings = text["mask"], text["embeddings"]
        before, after = embeddings[0][mask[0]], embeddings[1][mask[1]]
        assert torch.equal(before, -after)
        assert vocabulary_rows(after).all() == hard and vocabulary_rows(after).any() == hard
        assert vocabulary_rows(from_clip[0]).all() == hard and vocabulary_rows(from_clip[0]).any() == hard


def test_progress_bar_shows_the_losses_regularly(backbone, clip, pair, monkeypatch):
    """About 25 updates over a run (the first and the last step included), not one, not every step
    (each syncs the host)."""
    shown = []

    class Bar:
        def __init__(self, iterable, **kwargs):
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, **values):
            shown.append(values)

    monkeypatch.setattr(diffinv.inversion, "tqdm", Bar)
    config = fast_config(steps=50, use_token_consistency=False)
    fit_diff_tokens(backbone, clip, pair, config, progress=True)
    assert 20 <= len(shown) <= 30 and set(shown[-1]) == {"tc", "clip"}
    shown.clear()
    fit_diff_tokens(backbone, clip, pair, config.replace(steps=3), progress=True)
    assert len(shown) == 3
    shown.clear()
    fit_diff_tokens(backbone, clip, pair, config, progress=False)
    assert shown == [], "no bar, no host syncs for it"


def test_same_seed_same_tokens(backbone, clip, pair):
    first, _ = fit_diff_tokens(
        backbone, clip, pair, fast_config(steps=2), torch.Generator().manual_seed(7), progress=False
    )
    second, _ = fit_diff_tokens(
        backbone, clip, pair, fast_config(steps=2), torch.Generator().manual_seed(7), progress=False
    )
    assert torch.equal(first, second)


# Several pairs in one optimisation ---------------------------------------------------------------
@pytest.fixture(scope="module")
def other_pair(backbone, images):
    """A second pair: other prompts, other latents (A′ and B), other target delta."""
    return PreparedPair(
        caption_a="a photo of a red square",
        caption_a_prime="a photo of a red circle",
        prompt_a="a red square",
        prompt_a_prime="a red circle",
        target_delta=torch.nn.functional.normalize(torch.randn(32, generator=torch.Generator().manual_seed(1)), dim=0),
        latents=backbone.encode_images([images["a_prime"], images["a"].transpose(0)]),
    )


def test_batched_token_consistency_loss_is_the_solo_loss_of_each_pair(backbone, pair, other_pair):
    """Rows 2k, 2k+1 of the batch are pair k's, and pair k's loss ignores every other D̃."""
    n = 3
    diff = torch.randn(2, n, backbone.token_width, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    latents = torch.cat([pair.latents, other_pair.latents])
    noisy, timesteps, targets = noised_pair(backbone, latents, torch.Generator().manual_seed(0))
    ids, slot_mask = backbone.slot_ids(
        [pair.prompt_a_prime, pair.prompt_a, other_pair.prompt_a_prime, other_pair.prompt_a], n
    )

    batched = token_consistency_loss(backbone, diff, ids, slot_mask, noisy, timesteps, targets)
    assert batched.shape == (2,)
    for k in range(2):
        rows = slice(2 * k, 2 * k + 2)
        solo = token_consistency_loss(
            backbone, diff[k : k + 1], ids[rows], slot_mask[rows], noisy[rows], timesteps[rows], targets[rows]
        )
        assert batched[k].item() == pytest.approx(solo.item(), rel=1e-4)
    (gradient,) = torch.autograd.grad(batched[0], diff)
    assert gradient[0].abs().sum() > 0 and torch.count_nonzero(gradient[1]) == 0


def test_batched_fit_equals_solo_fits_when_the_loss_is_deterministic(backbone, clip, pair, other_pair):
    """With the CLIP loss alone (no noise draws) K pairs fitted together end where each ends alone."""
    config = fast_config(steps=5, use_token_consistency=False)
    together, histories = fit_diff_tokens(backbone, clip, [pair, other_pair], config, progress=False)
    assert together.shape == (2, config.n_tokens, backbone.token_width) and len(histories) == 2
    for k, single in enumerate((pair, other_pair)):
        alone, history = fit_diff_tokens(backbone, clip, single, config, progress=False)
        assert torch.allclose(together[k], alone, atol=1e-5)
        assert histories[k]["loss_clip"] == pytest.approx(history["loss_clip"], rel=1e-4)
    assert not torch.allclose(together[0], together[1])


def test_batched_fit_refuses_pairs_of_different_sizes(backbone, clip, pair, images):
    wide = PreparedPair("", "", "a", "b", pair.target_delta, backbone.encode_images([images["b"], images["b"]]))
    with pytest.raises(DiffinvError, match="one size"):
        fit_diff_tokens(backbone, clip, [pair, wide], fast_config(steps=1), progress=False)


# The CLIP's text tower against the model's text encoder ------------------------------------------
def test_check_compatible_compares_the_token_embedding_tables(backbone, clip):
    """A CLIP whose text tower is another text encoder of the same shape breaks the text-tower
    CLIP loss: refused. The matching CLIP passes, also stored in fp16 / bf16."""
    import copy
    from types import SimpleNamespace

    from diffinv.clip_space import ClipSpace
    from diffinv.testing import tiny_clip_for, tiny_pipeline

    config = fast_config()
    check_compatible(backbone, clip, config)
    for dtype in (torch.float16, torch.bfloat16):
        check_compatible(backbone, ClipSpace(copy.deepcopy(clip.model).to(dtype), clip.tokenizer), config)

    other = tiny_clip_for(tiny_pipeline(seed=1))  # same shapes and tokenizer, another random text tower
    assert other.vocabulary.shape == backbone.vocabulary.shape
    with pytest.raises(DiffinvError, match="token embeddings differ from the model's text encoder's") as raised:
        check_compatible(backbone, other, config)
    assert "--clip-model" in str(raised.value) and "\n" not in str(raised.value)
    # one wrong row among the sampled ones is enough
    table = backbone.vocabulary.detach().clone()
    table[-1] += 1.0
    with pytest.raises(DiffinvError, match="differ"):
        check_compatible(backbone, SimpleNamespace(vocabulary=table, joint_width=clip.joint_width), config)
    bigger = torch.cat([backbone.vocabulary.detach(), torch.zeros(1, backbone.token_width)])
    with pytest.raises(DiffinvError, match=f"{bigger.shape[0]} token embeddings"):
        check_compatible(backbone, SimpleNamespace(vocabulary=bigger, joint_width=clip.joint_width), config)
    # only the text-tower loss needs the model's own text encoder
    check_compatible(backbone, other, fast_config(use_clip_loss=False))
    check_compatible(backbone, other, fast_config(clip_loss_space="token-mean"))


# Seeds across devices ----------------------------------------------------------------------------
def test_noised_pair_draws_timesteps_then_noise_on_the_cpu_in_float32(backbone):
    """The draws are the CPU generator's, in this order and in float32, whatever the latents' dtype
    (and device): one seed, one set of timesteps and noises (half-precision latents get them
    rounded). 120 values: for sizes that are not multiples of 16, torch draws half precision
    directly, and differently."""
    latents = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.Generator().manual_seed(3)
    timesteps = torch.randint(0, backbone.num_train_timesteps, (2,), generator=expected)
    noise = torch.randn(latents.shape, generator=expected)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        _, drawn_timesteps, targets = noised_pair(backbone, latents.to(dtype), torch.Generator().manual_seed(3))
        assert torch.equal(drawn_timesteps, timesteps)
        assert targets.dtype == dtype and torch.equal(targets, noise.to(dtype))  # ε-model: the target is ε


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noised_pair_draws_the_same_on_cuda(backbone, pair):
    cuda = torch.device("cuda")
    _, cpu_timesteps, cpu_noise = noised_pair(backbone, pair.latents, torch.Generator().manual_seed(5))
    backbone.pipe.to(cuda)
    try:
        _, timesteps, noise = noised_pair(backbone, pair.latents.to(cuda), torch.Generator().manual_seed(5))
    finally:
        backbone.pipe.to("cpu")
    assert timesteps.device.type == noise.device.type == "cuda"
    assert torch.equal(timesteps.cpu(), cpu_timesteps) and torch.equal(noise.cpu(), cpu_noise)


def test_fitting_is_seeded_with_a_cpu_generator_whatever_the_device(di, pair, monkeypatch):
    """`_fit_prepared` seeds fit_diff_tokens with a CPU generator, also for a model on another
    device (a device generator would draw other numbers on CUDA than on the CPU)."""
    import diffinv.pipeline
    from diffinv.backbones.sd import StableDiffusionBackbone

    seen = []

    def fake_fit(backbone, clip, pairs, config, generator=None, progress=True):
        seen.append(generator)
        zeros = torch.zeros(len(pairs), config.n_tokens, backbone.token_width)
        return zeros, [{"loss": [], "loss_tc": [], "loss_clip": []} for _ in pairs]

    monkeypatch.setattr(diffinv.pipeline, "fit_diff_tokens", fake_fit)
    monkeypatch.setattr(StableDiffusionBackbone, "device", property(lambda self: torch.device("meta")))
    (tokens,) = di._fit_prepared([pair], fast_config(), [11], progress=False)
    (generator,) = seen
    assert generator.device.type == "cpu" and generator.initial_seed() == 11
    assert tokens.n_tokens == fast_config().n_tokens


def test_in_context_features_equal_the_text_with_those_words(backbone, clip):
    """A slot holding the embedding of a word is the prompt with that word written out."""
    from diffinv.backbones.text_slots import slot_token_ids

    word = clip.tokenizer("blue", add_special_tokens=False).input_ids
    ids, mask = slot_token_ids(clip.tokenizer, [CAPTION_A], len(word), clip.text_model.config.max_position_embeddings)
    values = clip.vocabulary.detach()[torch.tensor(word)].unsqueeze(0)
    with torch.no_grad():
        slotted = clip.prompt_slot_features(ids, mask, values)
    assert torch.allclose(slotted, clip.text_features([CAPTION_A + " blue"]), atol=1e-5)


def test_in_context_clip_loss_is_per_pair_and_matches_its_definition(backbone, clip):
    from diffinv.inversion import PreparedPair, clip_loss, prompt_context

    torch.manual_seed(0)
    pairs = [
        PreparedPair(CAPTION_A, CAPTION_A_PRIME, CAPTION_A, CAPTION_A_PRIME, torch.randn(32), torch.zeros(2, 4, 4, 4)),
        PreparedPair(
            "a red square",
            "a big red square",
            "a red square",
            "a big red square",
            torch.randn(32),
            torch.zeros(2, 4, 4, 4),
        ),
    ]
    diff = torch.randn(2, 3, backbone.token_width) * 0.1
    targets = torch.stack([p.target_delta for p in pairs])
    batched = clip_loss(clip, diff, targets, "in-context", prompt_context(clip, pairs, 3))
    for k, pair in enumerate(pairs):
        context = prompt_context(clip, [pair], 3)
        solo = clip_loss(clip, diff[k : k + 1], targets[k : k + 1], "in-context", context)
        assert torch.allclose(batched[k], solo[0], atol=1e-5)
        plus = clip.prompt_slot_features(context.ids[1:], context.slot_mask[1:], diff[k : k + 1])  # prompt_A
        minus = clip.prompt_slot_features(context.ids[:1], context.slot_mask[:1], -diff[k : k + 1])  # prompt_A′
        by_hand = (
            2
            - F.cosine_similarity(plus - clip.text_features([pair.prompt_a]), targets[k : k + 1])
            - F.cosine_similarity(minus - clip.text_features([pair.prompt_a_prime]), -targets[k : k + 1])
        ) / 2
        assert torch.allclose(solo, by_hand, atol=1e-5)


def test_clip_loss_on_b_measures_what_the_tokens_do_to_prompt_b(backbone, clip, pair):
    from diffinv.inversion import clip_loss_on_b, prompt_b_context

    torch.manual_seed(0)
    pairs = [dataclasses.replace(pair, prompt_b="a red square"), dataclasses.replace(pair, prompt_b="a small circle")]
    diff = torch.randn(2, 3, backbone.token_width) * 0.1
    targets = torch.stack([pair.target_delta, -pair.target_delta])
    context = prompt_b_context(clip, pairs, 3)
    batched = clip_loss_on_b(clip, diff, targets, context)
    for k, prompt_b in enumerate(["a red square", "a small circle"]):
        moved = clip.prompt_slot_features(context.ids[k : k + 1], context.slot_mask[k : k + 1], diff[k : k + 1])
        by_hand = 1 - F.cosine_similarity(moved - clip.text_features([prompt_b]), targets[k : k + 1])
        assert torch.allclose(batched[k : k + 1], by_hand, atol=1e-5)
    # another B, another loss: the tokens are judged where they are used
    other = prompt_b_context(clip, [dataclasses.replace(pair, prompt_b="a red circle")] * 2, 3)
    assert not torch.allclose(clip_loss_on_b(clip, diff, targets, other), batched)


def test_fit_with_the_b_context_loss_needs_prompt_b_and_depends_on_it(backbone, clip, pair):
    config = fast_config(steps=3, lambda_clip_b=6.0)
    with pytest.raises(DiffinvError, match="prompt_B"):
        fit_diff_tokens(backbone, clip, pair, config, progress=False)
    fits = {}
    for prompt_b in ("a red square", "a small circle"):
        fits[prompt_b] = fit_diff_tokens(
            backbone,
            clip,
            dataclasses.replace(pair, prompt_b=prompt_b),
            config,
            torch.Generator().manual_seed(0),
            progress=False,
        )
    plain, plain_history = fit_diff_tokens(
        backbone, clip, pair, config.replace(lambda_clip_b=0.0), torch.Generator().manual_seed(0), progress=False
    )
    (square, square_history), (small, _) = fits.values()
    assert not torch.allclose(square, small) and not torch.allclose(square, plain)
    # the first step's total holds the B term, at D̃'s zero start, on top of the paper's two
    from diffinv.inversion import clip_loss_on_b, prompt_b_context

    context = prompt_b_context(clip, [dataclasses.replace(pair, prompt_b="a red square")], config.n_tokens)
    zero = torch.zeros(1, config.n_tokens, backbone.token_width)
    b_term = clip_loss_on_b(clip, zero, pair.target_delta.unsqueeze(0), context).item()
    first = config.lambda_tc * square_history["loss_tc"][0] + config.lambda_clip * square_history["loss_clip"][0]
    assert square_history["loss"][0] == pytest.approx(first + config.lambda_clip_b * b_term, rel=1e-4)
    assert plain_history["loss_tc"][0] == pytest.approx(square_history["loss_tc"][0], rel=1e-6)
