"""A learned map from CLIP's joint space to DIFF tokens, for an instruction editor (beyond the paper).

The paper's Sec. 6 names it as future work: instead of (or before) fitting D̃ to one pair, predict
it from the pair's CLIP image features. Fitted to one pair, D̃ may carry whatever costs the pair's
loss nothing: a background edit's tokens may also say "green" when A's shape is green, since A and
A′ are green already, and B′ then turns green (docs/results.md §7, "What is left"). Nothing in one
pair can tell that leak from the edit; a map trained on many pairs, where the kept attributes vary
independently of the edit, can: tokens that spelled out a pair's kept content would miss on every
other pair with the same edit.

`DiffEncoder` maps (E_I(A), E_I(A′)) — unit CLIP image features — to n tokens; it is trained on
many (before, after) pairs by `encoder_training.train_diff_encoder` (`diffinv encoder train`): on an
instruction editor with the editor's own loss, the "after" branch of L_tc, both ways round; on a
text-to-image model with the paper's L_tc, both branches. `InversionConfig.init = "encoder"` starts
D̃ at its prediction (with `steps = 0`, D̃ is the prediction).

Files: `diff_encoder.json` (the widths) and `diff_encoder.safetensors`, in a `diff_encoder/` folder
of the model's directory (where `DifferenceInversion.from_pretrained` finds it), or anywhere else
given as `diff_encoder=` (`--encoder DIR`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import DiffinvError

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
