"""A learned map from CLIP's joint space to DIFF tokens, for an instruction editor (beyond the paper).

The paper's Sec. 6 names it as future work: instead of (or before) fitting D̃ to one pair, predict
it from the pair's CLIP image features. Fitted to one pair, D̃ may carry whatever costs the pair's
loss nothing: a background edit's tokens may also say "green" when A's shape is green, since A and
A′ are green already, and B′ then turns green (docs/results.md §7, "What is left"). Nothing in one
pair can tell that leak from the edit; a map trained on many pairs, where the kept attributes vary
independently of the edit, can: tokens that spelled out a pair's kept content would miss on every
other pair with the same edit.

`DiffEncoder` maps (E_I(A), E_I(A′)) — unit CLIP image features — to n tokens; it is trained
(`train_diff_encoder`) with the editor's own loss, the "after" branch of L_tc: z_A′,t denoised with
the image A and the instruction {"", encoder(A, A′)}, on many (before, after) pairs, both ways round.
`InversionConfig.init = "encoder"` starts D̃ at its prediction (with `steps = 0`, D̃ is the prediction).

Files: `diff_encoder.json` (the widths) and `diff_encoder.safetensors`, in a `diff_encoder/` folder
of the editor's model directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .errors import DiffinvError
from .schedules import cosine_lr

ENCODER_DIR = "diff_encoder"
CONFIG_NAME, WEIGHTS_NAME = "diff_encoder.json", "diff_encoder.safetensors"


@dataclass(frozen=True)
class DiffEncoderConfig:
    """joint_width: CLIP's joint width D; n_tokens, token_width: the D̃ it makes, (n, d)."""

    joint_width: int
    n_tokens: int
    token_width: int
    hidden: int = 256


class DiffEncoder(torch.nn.Module):
    """(E_I(A), E_I(A′)), each (K, D), → D̃ (K, n, d): an MLP on [E_I(A), E_I(A′) − E_I(A)].

    The last layer starts at zero, so an untrained encoder gives the paper's zero start."""

    def __init__(self, config: DiffEncoderConfig):
        super().__init__()
        self.config = config
        width = config.hidden
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2 * config.joint_width, width),
            torch.nn.GELU(),
            torch.nn.Linear(width, width),
            torch.nn.GELU(),
            torch.nn.Linear(width, config.n_tokens * config.token_width),
        )
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, features_a: torch.Tensor, features_a_prime: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([features_a, features_a_prime - features_a], dim=-1).to(self.net[0].weight.dtype)
        return self.net(inputs).view(-1, self.config.n_tokens, self.config.token_width)

    def save_pretrained(self, directory: str | Path) -> None:
        """Both files, each written to a temporary name and then moved into place."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        temporary = directory / (WEIGHTS_NAME + ".tmp")
        save_file(weights, str(temporary))
        os.replace(temporary, directory / WEIGHTS_NAME)
        temporary = directory / (CONFIG_NAME + ".tmp")
        temporary.write_text(json.dumps(asdict(self.config), indent=1))
        os.replace(temporary, directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DiffEncoder:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise DiffinvError(f"{directory}: no DIFF-token encoder there ({CONFIG_NAME} and {WEIGHTS_NAME})")
        try:
            config = DiffEncoderConfig(**json.loads((directory / CONFIG_NAME).read_text()))
            encoder = cls(config)
            encoder.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        except (TypeError, ValueError, RuntimeError, OSError) as error:
            raise DiffinvError(f"{directory}: not a readable DIFF-token encoder ({error})") from None
        return encoder.eval().requires_grad_(False)


def pool_predictions(predictions: torch.Tensor) -> torch.Tensor:
    """One D̃ (n, d) from the encoder's predictions for K example pairs of one edit (K, n, d): their
    mean. Chosen over pooling the CLIP features before the MLP because each prediction is what the
    encoder says of a whole pair (its kept content included), and the mean is the D̃ closest to all
    of them in squared distance: what the pairs agree on (the edit) adds up, what each says of its
    own kept content is averaged down. For K = 1 it is the prediction itself."""
    return predictions.mean(dim=0)


def check_encoder_fits(encoder: DiffEncoder, n_tokens: int, token_width: int, joint_width: int, where: str) -> None:
    """Refuse an encoder made for another model, CLIP or token count, before any work is done."""
    c = encoder.config
    if (c.n_tokens, c.token_width, c.joint_width) != (n_tokens, token_width, joint_width):
        raise DiffinvError(
            f"{where}: the DIFF-token encoder makes {c.n_tokens} tokens of width {c.token_width} from CLIP "
            f"features of width {c.joint_width}, but this fit needs {n_tokens} of width {token_width} from "
            f"{joint_width}; use n_tokens={c.n_tokens} or another init"
        )


def train_diff_encoder(
    backbone,
    clip,
    befores: list,
    afters: list,
    steps: int,
    n_tokens: int = 5,
    batch: int = 32,
    learning_rate: float = 1e-3,
    checkpoint: Path | None = None,
    checkpoint_every: int = 500,
    generator: torch.Generator | None = None,
    progress: bool = True,
    both_ways: bool = True,
) -> DiffEncoder:
    """Train a `DiffEncoder` for the instruction editor `backbone` on image pairs (before → after),
    each used both ways round. Loss: per sampled pair, the squared error of the editor's
    prediction for z_after,t given the image `before` and {"", encoder(before, after)}, summed
    over the latent (L_tc's "after" branch with `tc_reduction="sum"`). AdamW (weight decay 1e-4),
    cosine learning rate after 100 warm-up steps.

    Every `checkpoint_every` steps the weights go to `checkpoint` (safetensors, with the step);
    a run started again with the same arguments resumes there, with a fresh optimiser.
    both_ways: also train each pair backwards (after → before); off where the way back must not be
    learned (an edit type held out of the encoder's training, `shapes.world.SPLIT`).
    """
    if not backbone.takes_instructions:
        raise DiffinvError(f"{backbone.model_id}: a DIFF-token encoder is trained on an instruction editor")
    if len(befores) != len(afters) or not befores:
        raise DiffinvError("train_diff_encoder needs as many 'after' images as 'before' images, at least one")
    with torch.no_grad():
        chunks = range(0, len(befores), 256)
        latents_before = torch.cat([backbone.encode_images(befores[i : i + 256]) for i in chunks])
        latents_after = torch.cat([backbone.encode_images(afters[i : i + 256]) for i in chunks])
        features_before = torch.cat([clip.image_features(befores[i : i + 256]) for i in chunks]).float()
        features_after = torch.cat([clip.image_features(afters[i : i + 256]) for i in chunks]).float()
    sources, targets = latents_before, latents_after
    features_source, features_target = features_before, features_after
    if both_ways:  # each pair also teaches the edit back
        sources = torch.cat([latents_before, latents_after])
        targets = torch.cat([latents_after, latents_before])
        features_source = torch.cat([features_before, features_after])
        features_target = torch.cat([features_after, features_before])

    config = DiffEncoderConfig(clip.joint_width, n_tokens, backbone.token_width)
    encoder = DiffEncoder(config).to(backbone.device)
    start = 0
    if checkpoint is not None and checkpoint.exists():
        encoder.load_state_dict(load_file(str(checkpoint)))
        with safe_open(str(checkpoint), framework="pt") as handle:
            start = int(handle.metadata()["step"]) + 1
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=learning_rate, weight_decay=1e-4)
    ids, slot_mask = backbone.slot_ids([""] * batch, n_tokens)
    scale = backbone.vae.config.scaling_factor
    bar = tqdm(range(start, steps), desc="DIFF-token encoder", initial=start, total=steps, disable=not progress)
    for step in bar:
        cosine_lr(optimizer, step, steps, learning_rate, warmup=100)
        index = torch.randint(len(sources), (batch,), generator=generator)
        clean = targets[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, backbone.num_train_timesteps, (batch,), generator=generator)
        tokens = encoder(features_source[index], features_target[index])
        text_states = backbone.encode_prompt(ids, slot_mask, tokens)
        noisy = backbone.add_noise(clean, noise, timesteps)
        prediction = backbone.predict(noisy, timesteps, text_states, sources[index] / scale)
        target = backbone.loss_target(clean, noise, timesteps)
        loss = (prediction.float() - target.float()).pow(2).sum(dim=(1, 2, 3)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            weights = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
            save_file(weights, str(checkpoint), metadata={"step": str(step)})
    return encoder.eval().requires_grad_(False)
