"""Algorithm 1 step by step: frozen models, D̃ ← 0, the ± pairing of eqs. 7–8, the noising of
step ⑤, the CLIP loss, and the fitting loop."""

from contextlib import contextmanager

import pytest
import torch

import diffinv.backbone
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
    original = diffinv.backbone.replaced_token_embeddings

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

    monkeypatch.setattr(diffinv.backbone, "replaced_token_embeddings", spy)
    return records


@pytest.fixture
def seen_unet_input(monkeypatch, backbone):
    records = []
    original = backbone.predict

    def spy(noisy, timesteps, text_states):
        records.append(
            {
                "noisy": noisy.detach().clone(),
                "timesteps": timesteps.clone(),
                "text_states": text_states.detach().clone(),
            }
        )
        return original(noisy, timesteps, text_states)

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


def test_zero_steps_return_the_zero_start(backbone, clip, pair):
    diff, history = fit_diff_tokens(backbone, clip, pair, fast_config(steps=0), progress=False)
    assert torch.count_nonzero(diff) == 0
    assert history == {"loss": [], "loss_tc": [], "loss_clip": []}


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
