"""Methods `diffinv bench` compares, named by specs: the registered methods and the variants of
Difference Inversion.

A spec is a name, optionally followed by config changes, ``name:field=value,field=value``. The
names are those of the one registry, `method.METHODS`:

    difference-inversion   the full method (the model's default config)
    on-editor              Difference Inversion fitted on, and drawn by, an instruction editor
                           (`backbones.editor`): --baseline-model instructpix2pix=MODEL, else the
                           model card's editor (a shapes world's own), else timbrooks/instruct-pix2pix.
                           Its changes apply to that editor's defaults, not to the run's base config.
    copy-b                 reference: B′ = B (no change at all)
    oracle-caption         reference: B′ drawn from the ground-truth caption of B′, no DIFF
                           tokens, exactly as Difference Inversion draws (needs that caption)
    sdedit, instructpix2pix, visii, analogist, dia, oracle-instruction
                           the paper's baselines and a reference on InstructPix2Pix (`bench.build`);
                           their spec's changes are fields of the method's own config (``sdedit:strength=0.6``)

and the named variants of Difference Inversion below (`VARIANTS`: the paper's ablations, its
sweeps of n and α, and the points it leaves open), each a set of config changes on
`difference-inversion`. A spec becomes a method through the registry (`bench.build.MethodBuilder`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..config import PRESETS as CONFIG_PRESETS  # named methods; METHOD_SETS below are sets of methods
from ..config import InversionConfig, resolve_config
from ..errors import DiffinvError
from ..method import METHODS, Registered

# Named changes of `difference-inversion`'s config (the registered name itself is not a variant).
VARIANTS: dict[str, dict] = {
    # the named presets of config.PRESETS (`MethodSpec.preset`): their method on the model's budget
    **{name: {} for name in CONFIG_PRESETS},
    # the ablations of Fig. 5
    "no-token-consistency": {"use_token_consistency": False},
    "image-delta-only": {"alpha": 0.0},
    "text-delta-only": {"alpha": 1.0},
    "random-init": {"init": "random"},
    "no-clip-loss": {"use_clip_loss": False},
    # the sweeps of Fig. 6 and 7
    **{f"n={n}": {"n_tokens": n} for n in (1, 3, 5, 8)},
    **{f"alpha={a:g}": {"alpha": a} for a in (0.0, 0.5, 0.8, 1.0)},
    # the points the paper leaves open
    "clip-loss-token-mean": {"clip_loss_space": "token-mean"},
    "hard-tokens": {"hard_tokens": True},
    "sample-from-noise": {"sampling_mode": "noise"},
    # apply-time options that may keep more of B in B′
    **{f"edit-strength={s:g}": {"edit_strength": s} for s in (0.5, 1.5, 2.0)},
    "negative-diff": {"negative_diff": True},
    "diff-guidance": {"diff_guidance": True},
    "edit-mask": {"sampling_mode": "inversion", "edit_mask": 0.3},  # the threshold measured best, results.md §7
    "direct-inversion": {"sampling_mode": "inversion", "direct_inversion": True},
    "inversion": {"sampling_mode": "inversion"},
    "edit-friendly": {"sampling_mode": "edit-friendly"},
    "candidates=4": {"candidates": 4},
}
# the registered baselines on the bench's models (the paper's five, then oracle-instruction), in the
# registry's order, and those on a model of their own (today's editors: tens of GB each, a large GPU)
BASELINES = [name for name, entry in METHODS.items() if entry.kind == "baseline" and entry.model != "own"]
OWN_MODEL_BASELINES = [name for name, entry in METHODS.items() if entry.kind == "baseline" and entry.model == "own"]

METHOD_SETS: dict[str, list[str]] = {
    "fig5": [
        "difference-inversion",
        "copy-b",
        "oracle-caption",
        "no-token-consistency",
        "image-delta-only",
        "text-delta-only",
        "random-init",
        "no-clip-loss",
    ],
    "n-sweep": ["n=1", "n=3", "n=5", "n=8"],
    "alpha-sweep": ["alpha=0", "alpha=0.5", "alpha=0.8", "alpha=1"],
    "open-choices": ["difference-inversion", "clip-loss-token-mean", "hard-tokens", "sample-from-noise"],
    "baselines": ["difference-inversion", "paper", "copy-b", *BASELINES],
    "recent-editors": ["difference-inversion", "copy-b", *OWN_MODEL_BASELINES],
    "keep-b": [
        "difference-inversion",
        "copy-b",
        "edit-strength=0.5",
        "edit-strength=1.5",
        "edit-strength=2",
        "negative-diff",
        "diff-guidance",
        "edit-mask",
        "inversion",
        "edit-friendly",
        "candidates=4",
    ],
}


def parse_value(text: str):
    """'3' → 3, '0.5' → 0.5, 'true' → True, anything else stays text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_changes(text: str, known: set[str] | None = None, owner: str = "InversionConfig") -> dict:
    """'alpha=0.5,n_tokens=3' → {'alpha': 0.5, 'n_tokens': 3}, checked against the fields of
    InversionConfig (or `known`, the fields of `owner`; None there: checked later)."""
    if known is None and owner == "InversionConfig":
        known = {f.name for f in fields(InversionConfig)}
    changes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or (known is not None and name not in known):
            raise DiffinvError(
                f"bad config change {item!r}: expected field=value with a field of {owner}"
                + (f" ({', '.join(sorted(known))})" if known is not None else "")
            )
        changes[name] = parse_value(value.strip())
    return changes


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec: a registered method (`base`) and the changes to its config."""

    spec: str
    base: str  # its name in `method.METHODS`
    changes: dict
    preset: str | None = None  # a named method of config.PRESETS, applied before `changes`

    @property
    def registered(self) -> Registered:
        return METHODS[self.base]

    @property
    def fits_tokens(self) -> bool:
        """Whether it is Difference Inversion (its config an `InversionConfig` it fits DIFF tokens with)."""
        return self.registered.kind == "difference-inversion"

    @property
    def on_editor(self) -> bool:
        """Difference Inversion on the instruction editor, from the editor's defaults."""
        return self.fits_tokens and self.registered.model == "editor"

    @property
    def is_baseline(self) -> bool:
        """A method with a config of its own (a baseline, or a reference built on one)."""
        return self.registered.kind == "baseline"

    def config(
        self,
        base_config: InversionConfig,
        editor_config: InversionConfig | None = None,
        init_budgets: dict | None = None,
        explicit: frozenset[str] | set[str] = frozenset(),
    ) -> InversionConfig:
        """The `InversionConfig` of a Difference Inversion method or a reference drawn as it draws:
        its preset and changes on `base_config`, or on `editor_config` (the editor's defaults) for
        an `on_editor` method, with the model's budget for the start of D̃ the method chooses
        (`config.resolve_config`; init_budgets: that model card's; explicit: the fields of
        `base_config` the user set, which no budget replaces)."""
        if self.on_editor:
            if editor_config is None:
                raise DiffinvError(f"{self.spec} runs on an instruction editor, and none was given")
            base_config = editor_config
        return resolve_config(
            base_config, preset_name=self.preset, changes=self.changes, init_budgets=init_budgets, explicit=explicit
        )


def parse_method(spec: str) -> MethodSpec:
    """`NAME[:field=value,…]` → a `MethodSpec`: NAME a variant of Difference Inversion (`VARIANTS`,
    its changes fields of `InversionConfig`) or a registered method (`method.METHODS`; a
    reference takes no changes, a baseline's are checked against its config when it is built)."""
    name, _, extra = spec.partition(":")
    name = name.strip()
    if name in VARIANTS:
        preset = name if name in CONFIG_PRESETS else None
        return MethodSpec(spec, "difference-inversion", {**VARIANTS[name], **parse_changes(extra)}, preset)
    if name not in METHODS:
        raise DiffinvError(
            f"unknown method {name!r}; choose from {', '.join([*METHODS, *VARIANTS])} "
            f"(or a set: {', '.join(METHOD_SETS)})"
        )
    entry = METHODS[name]
    if entry.kind == "reference":
        if extra:
            raise DiffinvError(f"the reference {name!r} takes no config changes")
        return MethodSpec(spec, name, {})
    if entry.kind == "baseline":
        return MethodSpec(spec, name, parse_changes(extra, known=None, owner=f"{name}'s config"))
    return MethodSpec(spec, name, parse_changes(extra))


def expand_methods(specs: list[str]) -> list[MethodSpec]:
    """Method specs and set names (`METHOD_SETS`) → unique methods, in the order given."""
    out: list[MethodSpec] = []
    for spec in specs:
        for item in METHOD_SETS.get(spec, [spec]):
            method = parse_method(item)
            if method.spec not in {m.spec for m in out}:
                out.append(method)
    if not out:
        raise DiffinvError("no methods given")
    return out
