"""The shapes world's tuned numbers: what `diffinv shapes train` spends on each stage (`TrainingPlan`),
how the world's denoisers draw, and what training writes into each model directory's `diffinv.json`
(`world_descriptor`, `editor_descriptor`; read back by `diffinv.model_card`).

Each value says in a line why it is what it is and where that was measured; how it was found is
told in docs/shapes.md (training, gates) and docs/results.md (§4, §6, §7: the methods' defaults).
Nothing here needs torch: `diffinv defaults` and the tests read these without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DiffinvError
from .world import LAYOUT_RANGES, RESOLUTION

DATA_STREAMS = ("keyed", "integer")  # `TrainingPlan.data_streams`


@dataclass
class TrainingPlan:
    """Every setting of `diffinv shapes train`. world 1 trains v1 (stages classifier … unet, ±1.5 px
    jitter); world 2 trains v2 (every stage, offsets within ±`world.LAYOUT_RANGE`). Step counts as
    measured in docs/shapes.md."""

    seed: int = 0
    world: int = 2
    n_images: int = 12000
    classifier_steps: int = 2000  # v1: 1000; v2's wider layout left the shape head at 99.0 % after 1000
    clip_steps: int = 1000
    clip_vision_steps: int = 1000  # v2 only: retrieval of v2's pictures was 93.0 % after the CLIP stage
    vae_steps: int = 800
    vae_decoder_steps: int = 1500
    vae_grid_steps: int = 1500  # v2: the decoder again, on single pictures and 2×2 grids in turn
    unet_steps: int = 6000  # v1: 4000 (of a 6000-step schedule, see docs/shapes.md); v2 needed 6000
    editor_steps: int = 8000  # 2000 kept the other attributes in 42 % of development edits, 6000 in 86 %
    n_edit_pairs: int = 12000
    inpainting_steps: int = 10000  # 2000 gave 68 %, 6000 85 %, 10000 89 % (its gate: 90 %)
    n_grids: int = 6000
    diff_encoder_steps: int = 10000  # v2 only: the DIFF-token encoder (diffinv.diff_encoder), on the editor's pairs
    # Which edit types the encoder learns from (world.SPLIT): "seen" keeps the unseen half out of its
    # training, so that figures on unseen edits are honest; "all" is the editor's own pairs, as the
    # first bundled encoder was trained (held-out seed 160 of results.md §7).
    diff_encoder_split: str = "seen"
    inpainting_batch: int = 32
    checkpoint_every: int = 500
    batch: int = 64
    clip_batch: int = 128
    classifier_batch: int = 128
    vae_batch: int = 32  # pictures per VAE step; the decoder's grid steps take a quarter as many grids
    layout_check_renders: int = 1000  # fresh renders the layout threshold is chosen on (world v2)
    # How the scenes a stage trains on are drawn: "keyed", from random.Random(f"{name}/{seed}"), a
    # stream no triplet of `world.triplets` is drawn from (those are integer-seeded, or keyed by a
    # split: "seen/7"); or "integer", from random.Random(seed + k), as every world trained before this
    # field was, the bundled one included, whose renders, edit pairs and grids are thus the scenes of
    # the unsplit triplets of seeds 0-3 (`shapes.data.training_scenes`; the layout check's, seed 7's).
    data_streams: str = "keyed"

    def __post_init__(self) -> None:
        if self.data_streams not in DATA_STREAMS:
            raise DiffinvError(f"data_streams must be one of {DATA_STREAMS}, got {self.data_streams!r}")

    @classmethod
    def from_record(cls, values: dict) -> TrainingPlan:
        """The plan a `training.json` records; one written before `data_streams` existed drew its
        scenes from integer-seeded streams."""
        return cls(**{"data_streams": "integer", **values})

    def stream(self, name: str, offset: int) -> int | str:
        """The seed of the data stream `name` for `random.Random`: f"{name}/{seed}" (keyed), or
        seed + `offset`, the stream's place in the integer-seeded plans."""
        return self.seed + offset if self.data_streams == "integer" else f"{name}/{self.seed}"

    @property
    def layout_range(self) -> float:
        return LAYOUT_RANGES[self.world]


# How the world's editor and inpainting model draw, in their gates (`shapes.evaluate`) and as
# baselines: the world's text-to-image settings, and image guidance 3.0 for the editor — the
# smallest within a point of the best on development edits (seeds 1006-1007; docs/shapes.md),
# where InstructPix2Pix's published 1.5 dropped the dot or the colour in 8-12 % of them.
SAMPLING_STEPS, GUIDANCE, IMAGE_GUIDANCE = 20, 4.0, 3.0

# The world's diffinv.json. The fit's budget is tuned for this world (docs/shapes.md); the method
# is "in-context" (docs/results.md §6); captions come from exact CLIP retrieval among the world's
# canonical captions, so PEZ is not needed; "bench" holds what `diffinv bench` uses by default.
DESCRIPTOR = dict(
    name="shapes",
    config=dict(
        prompt_source="caption",
        steps=200,
        learning_rate=1e-2,
        sampling_steps=20,
        guidance_scale=4.0,
        strength=0.8,
        clip_loss_space="in-context",
        tc_reduction="sum",
    ),
    captioner={"kind": "clip-retrieval", "captions": "captions.txt"},
    bench={"batch": 8, "embedders": ["clip"], "classifier": "classifier"},
)
# v2's changes to it (v1 keeps DESCRIPTOR's values, as measured there: docs/results.md §4, §6):
# draw B′ from B's DDIM inversion, not img2img at 0.8 and guidance 4: dev seeds 1-4, held-out seed 120 (§7)
V2_SAMPLING = {"sampling_mode": "inversion", "strength": 0.6, "guidance_scale": 2.5}
# 100 fit steps, not 200: equal on dev seeds 5-8 and held-out seed 140, in half the time (§7)
V2_FIT = {"steps": 100}
# The budget v2's baselines run at in `diffinv bench` (docs/results.md §8, "Deviations"): the world's
# sampling, not the published models'; everything not named keeps each baseline's published value.
V2_BASELINE_BUDGETS = {
    "sdedit": {"steps": 20, "guidance_scale": 4.0},
    "instructpix2pix": {"steps": 20, "guidance_scale": 4.0, "image_guidance_scale": IMAGE_GUIDANCE},
    "visii": {
        "steps": 200,  # with lr 1e-2: Difference Inversion's fit when §8 was measured (V2_FIT halved it since)
        "learning_rate": 1e-2,
        "pez_steps": 300,  # its PEZ start: a tenth of its published 3000 steps
        "train_guidance_scale": 4.0,
        "sample_steps": 20,
        "guidance_scale": 4.0,
        "image_guidance_scale": IMAGE_GUIDANCE,
    },
    "analogist": {
        "steps": 20,
        "guidance_scale": 4.0,
        "resolution": 2 * RESOLUTION,  # the inpainting model's grids: 64 px, without gutters
        "gutter": 0,
        "added_prompt": "",  # its English quality phrases: no word of them is in the world's vocabulary
        "negative_prompt": "",
    },
    "dia": {"guidance_scale": 4.0},
}

# The world's models besides text-to-image, and their directories; each is named in the world's
# descriptor once its stage is done.
EDITOR_DIR, INPAINTING_DIR = "editor", "inpainting"
BENCH_MODELS = {"editor": EDITOR_DIR, "inpainting": INPAINTING_DIR}


def world_descriptor(plan: TrainingPlan, trained=None) -> dict:
    """The world's `diffinv.json` values for `plan`'s version. trained: the stages done (default:
    all); the editor and the inpainting model are named only once their stage is."""
    descriptor = dict(DESCRIPTOR)
    if plan.world >= 2:
        descriptor["world"] = {"version": plan.world, "layout_range": plan.layout_range}
        descriptor["config"] = {**DESCRIPTOR["config"], **V2_FIT, **V2_SAMPLING}
        descriptor["bench"] = {
            **DESCRIPTOR["bench"],
            **{name: directory for name, directory in BENCH_MODELS.items() if trained is None or name in trained},
            "baselines": V2_BASELINE_BUDGETS,
        }
        descriptor["learned_split"] = "none"  # Difference Inversion here learns nothing across pairs
    return descriptor


# The editor as a Difference Inversion model of its own ("shapes-editor", `backbones.editor`): the
# world's method at its learning rate, drawn as its InstructPix2Pix baseline draws.
# 200 fit steps and AdamW weight decay 1: dev seeds 7-9, held-out seed 150 (docs/results.md §7)
EDITOR_FIT = {"steps": 200, "weight_decay": 1.0}
# An encoder trained on every edit type made D̃ its prediction, no fit, the default: dev seeds 7-8,
# held-out seed 160 (§7); a fit from zeros or a random start (`--init`, every preset) kept
# EDITOR_FIT's step budget.
EDITOR_ENCODER = {"init": "encoder", "steps": 0}
EDITOR_FIT_BUDGETS = {init: {"steps": EDITOR_FIT["steps"]} for init in ("zeros", "random")}
# An encoder trained on the seen edit types only falls far behind the per-pair fit on unseen ones
# (development seed 1, 30 per split: 23 % against 53 % correct), but leads on seen ones: the default
# keeps its D̃ where it redraws A as A′ and fits otherwise (init "auto"; development seeds 1-2,
# held-out seed 220: +10.2 points against always fitting), and `--init encoder` is its D̃ alone, no
# fit: results.md §10.
EDITOR_AUTO = {"init": "auto"}
ENCODER_BUDGET = {"encoder": {"steps": 0}}
EDITOR_DESCRIPTOR = dict(
    name="shapes-editor",
    config=dict(
        {
            key: DESCRIPTOR["config"][key]
            for key in ("prompt_source", "learning_rate", "clip_loss_space", "tc_reduction")
        },
        **EDITOR_FIT,
        sampling_mode="editor",
        sampling_steps=SAMPLING_STEPS,
        guidance_scale=GUIDANCE,
        image_guidance_scale=IMAGE_GUIDANCE,
    ),
    # the world's captions, CLIP and classifier, one directory up
    captioner={**DESCRIPTOR["captioner"], "captions": "../" + DESCRIPTOR["captioner"]["captions"]},
    clip="../clip",
    bench={**DESCRIPTOR["bench"], "classifier": "../" + DESCRIPTOR["bench"]["classifier"]},
)


def editor_descriptor(plan: TrainingPlan, trained=None) -> dict:
    """The editor directory's `diffinv.json` values (world v2 and later). trained: the stages done
    (default: all). Once stage diff_encoder is done, an encoder trained on every edit type gives the
    default D̃; one trained on the seen edit types gives it where it redraws A as A′, and the fit
    otherwise (init "auto")."""
    descriptor = {**EDITOR_DESCRIPTOR, "world": {"version": plan.world, "layout_range": plan.layout_range}}
    if trained is None or "diff_encoder" in trained:
        if plan.diff_encoder_split == "all":
            descriptor["config"] = {**descriptor["config"], **EDITOR_ENCODER}
            descriptor["init_budgets"] = EDITOR_FIT_BUDGETS
        else:
            descriptor["config"] = {**descriptor["config"], **EDITOR_AUTO}
            descriptor["init_budgets"] = ENCODER_BUDGET
        # the edit types its learned analogy component trained on (`diffinv bench run --split` needs it)
        descriptor["learned_split"] = plan.diff_encoder_split
    return descriptor
