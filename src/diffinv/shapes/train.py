"""Training the shapes world's models from scratch on CPU: `diffinv shapes train`.

Stages, each saved as soon as it is done and skipped when `training.json` says it finished (so
an interrupted run resumes at the stage it was in; the denoisers also resume from their last
checkpoint, and leave a usable pipeline in the directory at each one):

1. classifier  — attribute classifier on fresh renders (evaluation only); world v2: also the
                 shape's centre, and the layout threshold chosen from its own error
2. clip        — `CLIPModel` (image + text towers), contrastive on renders and caption variants
3. vae         — `AutoencoderKL`, 32×32×3 → 8×8×4; then vae_decoder: the decoder alone refined
                 with the encoder frozen (sharper small details, unchanged latents)
4. unet        — `UNet2DConditionModel`, v-prediction, on pre-encoded latents, conditioned on
                 the frozen CLIP text tower (which becomes the pipeline's text encoder)
5. editor      — (v2) the world's InstructPix2Pix: the UNet with 8 input channels (noisy latent +
                 the input picture's latent), on (B, instruction, B′) pairs, started from stage 4
                 with zero weights on the new channels, as InstructPix2Pix started from SD
6. inpainting  — (v2) an SD-style inpainting UNet with 9 input channels (noisy latent + mask +
                 masked-picture latent) on 2×2 grids of world pictures (64×64) with one cell
                 masked and that cell's caption, started from stage 4 likewise
7. clip_vision — (v2) the CLIP's image tower trained further with its text tower frozen (better
                 retrieval of v2's pictures; the text encoder every denoiser reads is unchanged)
8. vae_grids   — (v2) the VAE decoder again, encoder frozen, on single pictures and 2×2 grids in
                 turn: grids' latents are not their cells' latents side by side
9. diff_encoder — (v2) the editor's DIFF-token encoder (`diffinv.diff_encoder`, `init="encoder"`),
                 on the editor's own training pairs, into `editor/diff_encoder/`, by the loop of
                 `diffinv encoder train` (`diffinv.encoder_training`)

The output directory is a standard Stable Diffusion directory (`StableDiffusionPipeline.
from_pretrained` loads it) with `clip/` and `classifier/` beside the usual components, and for v2
`editor/` (`StableDiffusionInstructPix2PixPipeline`) and `inpainting/`
(`StableDiffusionInpaintPipeline`), each a complete pipeline directory of its own.

Here: one function per stage (what it reads from earlier stages, what it writes), the table of
stages, and the driver. The networks are built in `networks`, trained by the loops in `loops` on
the data of `data`; the settings and the descriptors written at the end are in `descriptor`.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPModel, CLIPTextModel

from ..errors import DiffinvError
from ..model_card import write_descriptor
from .data import (
    TrainingData,
    caption_batches,
    edit_pairs,
    editor_batches,
    grid_pictures,
    inpainting_batches,
    inpainting_grids,
    split_edit_pairs,
)
from .descriptor import (
    BENCH_MODELS,
    EDITOR_DIR,
    INPAINTING_DIR,
    TrainingPlan,
    editor_descriptor,
    world_descriptor,
)
from .loops import refine_clip_vision, refine_vae_decoder, train_classifier, train_clip, train_denoiser, train_vae
from .networks import build_unet, encode_captions, encode_pictures, sampling_scheduler, widened_from
from .world import RESOLUTION, SPLIT, all_scenes, canonical_caption, render


# --- the stages: each (plan, out, data) → None, reading earlier stages' outputs from `out` -----------
def classifier_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """The attribute classifier, on the plan's renders, into classifier/."""
    train_classifier(data.scenes, data.images, plan).save(out / "classifier")


def clip_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """CLIP and the world's tokenizer, into clip/."""
    clip = train_clip(data.scenes, data.images, data.tokenizer, plan)
    clip.save_pretrained(out / "clip")
    data.tokenizer.save_pretrained(out / "clip")


def vae_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """The VAE, into vae/."""
    train_vae(data.images, plan).save_pretrained(out / "vae")


def vae_decoder_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """vae/'s decoder refined on single pictures, in place."""
    vae = refine_vae_decoder(AutoencoderKL.from_pretrained(out / "vae"), data.images, plan)
    vae.save_pretrained(out / "vae")


def unet_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """The text-to-image UNet on clip/'s text tower and vae/'s latents: the directory becomes a
    `StableDiffusionPipeline`."""

    def batches(vae, states_of):
        return caption_batches(data.scenes, encode_pictures(vae, data.images), states_of, plan)

    _denoiser_stage(plan, out, data, "unet", StableDiffusionPipeline, build_unet, batches)


def editor_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """The instruction editor, started from unet/, into editor/ (an InstructPix2Pix pipeline)."""

    def batches(vae, states_of):
        pairs = edit_pairs(plan.n_edit_pairs, plan.stream("edit pairs", 1), plan.layout_range)
        return editor_batches(pairs, vae, states_of, plan)

    def unet():
        return widened_from(UNet2DConditionModel.from_pretrained(out / "unet"), 8, RESOLUTION // 4)

    _denoiser_stage(plan, out, data, "editor", StableDiffusionInstructPix2PixPipeline, unet, batches)


def inpainting_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """The inpainting model, started from unet/, into inpainting/ (an SD inpainting pipeline)."""

    def batches(vae, states_of):
        grids = inpainting_grids(plan.n_grids, plan.stream("inpainting grids", 2), plan.layout_range)
        return inpainting_batches(grids, vae, states_of, plan)

    def unet():
        return widened_from(UNet2DConditionModel.from_pretrained(out / "unet"), 9, 2 * RESOLUTION // 4)

    _denoiser_stage(plan, out, data, "inpainting", StableDiffusionInpaintPipeline, unet, batches)


def clip_vision_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """clip/'s image tower refined, in place."""
    clip = refine_clip_vision(CLIPModel.from_pretrained(out / "clip"), data.scenes, data.images, data.tokenizer, plan)
    clip.save_pretrained(out / "clip")


def vae_grids_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """vae/'s decoder refined on pictures and grids, into every pipeline directory there is."""
    grids = grid_pictures(inpainting_grids(plan.n_grids, plan.stream("VAE grids", 3), plan.layout_range))
    vae = refine_vae_decoder(AutoencoderKL.from_pretrained(out / "vae"), data.images, plan, grids)
    # every pipeline directory of the world holds a copy of the VAE
    for directory in (out, out / EDITOR_DIR, out / INPAINTING_DIR):
        if (directory / "vae").is_dir():
            vae.save_pretrained(directory / "vae")


def diff_encoder_stage(plan: TrainingPlan, out: Path, data: TrainingData) -> None:
    """The editor's DIFF-token encoder, on editor/ and clip/, into editor/diff_encoder/."""
    from ..backbones.editor import InstructPix2PixBackbone  # the core's models, loaded only for this stage
    from ..clip_space import ClipSpace
    from ..diff_encoder import ENCODER_DIR
    from ..encoder_training import remove_checkpoint, train_diff_encoder  # `diffinv encoder train`'s loop

    backbone = InstructPix2PixBackbone.from_pretrained(str(out / EDITOR_DIR), "cpu", torch.float32)
    clip = ClipSpace.from_pretrained(str(out / "clip"), "cpu", torch.float32)
    if plan.diff_encoder_split == "all":  # the editor's own training pairs, each used both ways round
        pairs = [
            (before, after)
            for before, after, _ in edit_pairs(plan.n_edit_pairs, plan.stream("edit pairs", 1), plan.layout_range)
        ]
        both_ways = True
    else:  # pairs of the split's edit types only, from a stream no triplet is drawn from
        pairs = split_edit_pairs(
            plan.n_edit_pairs, f"diff_encoder/{plan.seed}", plan.layout_range, SPLIT[plan.diff_encoder_split]
        )
        both_ways = False  # the way back is another edit type, which may be unseen
    partial = out / "diff_encoder-partial"  # the checkpoint directory
    encoder = train_diff_encoder(
        backbone,
        clip,
        [render(before) for before, _ in pairs],
        [render(after) for _, after in pairs],
        plan.diff_encoder_steps,
        both_ways=both_ways,
        checkpoint=partial,
        checkpoint_every=plan.checkpoint_every,
        generator=torch.Generator().manual_seed(plan.seed + 4),
    )
    encoder.save_pretrained(out / EDITOR_DIR / ENCODER_DIR)
    remove_checkpoint(partial)


# The denoiser stages: the plan field that counts their steps, and the directory of their pipeline.
DENOISER_STAGES = {
    "unet": ("unet_steps", "."),
    "editor": ("editor_steps", EDITOR_DIR),
    "inpainting": ("inpainting_steps", INPAINTING_DIR),
}


def _denoiser_stage(
    plan: TrainingPlan, out: Path, data: TrainingData, name: str, pipeline_class, make_unet, make_batches
) -> None:
    """Train the UNet `make_unet()` on `make_batches(vae, states_of)` (states_of: texts → text
    states of the frozen text tower), resuming from `{name}-partial.safetensors`, and save it as a
    complete `pipeline_class` directory at each checkpoint and at the end."""
    field, subdirectory = DENOISER_STAGES[name]
    directory = out / subdirectory
    # the frozen CLIP text tower, as the class a pipeline's text encoder has
    clip = CLIPModel.from_pretrained(out / "clip")
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder.eval()
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    # The editor and the inpainting model repeat the world's VAE and text encoder (each is a
    # complete pipeline directory): their UNets are stored in float16 to keep the bundle small.
    save = functools.partial(
        _save_pipeline, out, directory, pipeline_class, text_encoder, data.tokenizer, half=directory != out
    )
    partial = out / f"{name}-partial.safetensors"
    next_batch = make_batches(vae, lambda texts: encode_captions(text_encoder, data.tokenizer, texts))
    unet = train_denoiser(make_unet(), next_batch, getattr(plan, field), plan, partial, name, on_checkpoint=save)
    save(unet)
    partial.unlink(missing_ok=True)


def _save_pipeline(out: Path, directory: Path, pipeline_class, text_encoder, tokenizer, unet, *, half: bool) -> None:
    """A complete pipeline around `unet` in `directory`; `half`: the UNet's weights stored in float16
    (diffusers loads them into a float32 model by default). The VAE is read from the world's
    directory at each save: another process's `vae_grids` stage may have refined its decoder since
    this stage began."""
    pipeline_class(
        vae=AutoencoderKL.from_pretrained(out / "vae").eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=copy.deepcopy(unet).half() if half else unet,
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(directory)


# --- the table of stages and the driver -----------------------------------------------------------
class Stage(NamedTuple):
    train: Callable[[TrainingPlan, Path, TrainingData], None]
    needs: tuple[str, ...]  # the stages whose outputs it reads
    world: int  # the first world version that has it


# In training order, except clip_vision and vae_grids (v2), which came last into the plan: they
# change no latent and no text state, so they may run before or after the denoisers. A stage's
# position seeds its draws, so new stages go at the end.
STAGES = {
    "classifier": Stage(classifier_stage, needs=(), world=1),
    "clip": Stage(clip_stage, needs=(), world=1),
    "vae": Stage(vae_stage, needs=(), world=1),
    "vae_decoder": Stage(vae_decoder_stage, needs=("vae",), world=1),
    "unet": Stage(unet_stage, needs=("clip", "vae_decoder"), world=1),
    "editor": Stage(editor_stage, needs=("unet",), world=2),
    "inpainting": Stage(inpainting_stage, needs=("unet",), world=2),
    "clip_vision": Stage(clip_vision_stage, needs=("clip",), world=2),
    "vae_grids": Stage(vae_grids_stage, needs=("vae_decoder",), world=2),
    "diff_encoder": Stage(diff_encoder_stage, needs=("editor", "clip_vision", "vae_grids"), world=2),
}
# Stages the text-to-image world does not wait for: it is described (benches, checks) without them.
BESIDE_THE_WORLD = (*BENCH_MODELS, "diff_encoder")


def train_world(out: Path, plan: TrainingPlan | None = None, stages: list[str] | None = None) -> dict:
    """Train (or resume) every stage into `out` — or only `stages`, whose prerequisites must be
    done; returns the seconds each finished stage took. Several processes may train different
    stages of one directory at once (`training.json` is updated under a lock). plan: None resumes
    `out` by the plan its `training.json` records, or starts a new world by today's `TrainingPlan()`."""
    if plan is None:
        plan = recorded_plan(out) or TrainingPlan()
    known = tuple(name for name, stage in STAGES.items() if plan.world >= stage.world)
    unknown = [name for name in stages or () if name not in known]
    if unknown:
        raise DiffinvError(f"unknown stage(s) {', '.join(unknown)}; the stages: {', '.join(known)}")
    out.mkdir(parents=True, exist_ok=True)
    # Tiny weights and softmax gradients drift into subnormal floats, which x86 CPUs compute
    # tens of times slower; flushing them to zero changes nothing measurable in the result.
    torch.set_flush_denormal(True)
    torch.manual_seed(plan.seed)
    timings = finished_stages(out)
    for name in stages or ():
        missing = [need for need in STAGES[name].needs if need not in timings and need not in stages]
        if missing:
            raise DiffinvError(f"stage {name} needs {', '.join(missing)} trained first")
    data = TrainingData.for_plan(plan)
    for position, name in enumerate(STAGES):
        if name not in known or name in timings or (stages and name not in stages):  # finished, or not asked for
            continue
        torch.manual_seed(plan.seed + position)  # each stage's draws independent of how the run was split
        start = time.time()
        STAGES[name].train(plan, out, data)
        timings = _record_finished(out, plan, timings, name, round(time.time() - start, 1))
    timings = finished_stages(out)
    _describe(out, plan, known, timings)
    return timings


def recorded_plan(out: Path) -> TrainingPlan | None:
    """The plan the world in `out` was trained by, as its `training.json` records it (None: no record)."""
    with _lock(out):
        path = out / "training.json"
        return TrainingPlan.from_record(json.loads(path.read_text())["plan"]) if path.exists() else None


def finished_stages(out: Path) -> dict:
    """The seconds each finished stage of the world in `out` took, as `training.json` records them."""
    with _lock(out):
        path = out / "training.json"
        return json.loads(path.read_text())["seconds"] if path.exists() else {}


def _record_finished(out: Path, plan: TrainingPlan, timings: dict, name: str, seconds: float) -> dict:
    """Add stage `name` to `training.json` and return the timings as recorded. Another process may
    have finished a stage meanwhile, and other keys (notes) are kept: the file is read under the lock."""
    with _lock(out):
        path = out / "training.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        timings = {**timings, **record.get("seconds", {}), name: seconds}
        record.update(plan=asdict(plan), seconds=timings)
        path.write_text(json.dumps(record, indent=1))
    return timings


def _lock(out: Path) -> FileLock:
    return FileLock(str(out / "training.json.lock"))


def _describe(out: Path, plan: TrainingPlan, known: tuple[str, ...], timings: dict) -> None:
    """Once its text-to-image models are done the directory is a world (benches and checks can run
    while the editor and the inpainting model still train): describe it, and again as they finish."""
    if all(name in timings for name in known if name not in BESIDE_THE_WORLD):
        (out / "captions.txt").write_text(
            "\n".join(canonical_caption(s) for s in all_scenes()) + "\n", encoding="utf-8"
        )
        write_descriptor(out, **world_descriptor(plan, trained=timings))
    if "editor" in timings:
        write_descriptor(out / EDITOR_DIR, **editor_descriptor(plan, trained=timings))


def extend_stage(out: Path, name: str, steps: int) -> TrainingPlan:
    """Make a finished denoiser stage of the world in `out` ready for another leg, to `steps` in all.

    Its saved UNet (the EMA weights, float32 again if stored in float16) becomes the stage's
    checkpoint at the step it had reached, as both online and EMA weights (the optimiser starts
    afresh); the stage leaves `training.json`, where a note records the leg. Returns the plan
    `training.json` recorded, with the stage's steps raised to `steps`: `train_world(out, plan,
    [name])` then trains steps reached … steps − 1 of a `steps`-step cosine schedule. Called again
    while that leg is unfinished (interrupted), it changes nothing and returns the same plan, so
    the same command resumes the leg.
    """
    if name not in DENOISER_STAGES:
        raise DiffinvError(f"only a denoiser stage can be extended ({', '.join(DENOISER_STAGES)}), not {name!r}")
    field, directory = DENOISER_STAGES[name]
    timings_path, partial = out / "training.json", out / f"{name}-partial.safetensors"
    with _lock(out):
        record = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        if name not in record.get("seconds", {}):
            if not partial.exists():
                raise DiffinvError(f"stage {name} has not been trained in {out}; train it first")
            with safe_open(str(partial), framework="pt") as handle:
                reached = int(handle.metadata()["step"]) + 1
            if not isinstance(steps, int) or steps <= reached:
                raise DiffinvError(f"stage {name} is at step {reached}; extend it to more than that, not {steps!r}")
            return replace(TrainingPlan.from_record(record["plan"]), **{field: steps})  # an unfinished leg: resume it
        plan = TrainingPlan.from_record(record["plan"])
        reached = getattr(plan, field)
        if not isinstance(steps, int) or steps <= reached:
            raise DiffinvError(f"stage {name} has had {reached} steps; extend it to more than that, not {steps!r}")
        unet = UNet2DConditionModel.from_pretrained(out / directory / "unet").float()
        weights = {k: v.contiguous() for k, v in unet.state_dict().items()}
        checkpoint = {f"online.{k}": v for k, v in weights.items()} | {
            f"ema.{k}": v.clone() for k, v in weights.items()
        }
        save_file(checkpoint, str(partial), metadata={"step": str(reached - 1)})
        del record["seconds"][name]
        leg = f"resumed from the {reached}-step weights for steps {reached}-{steps - 1} of a {steps}-step schedule"
        notes = record.setdefault("notes", {})
        notes[name] = f"{notes[name]}; then {leg}" if name in notes else leg
        timings_path.write_text(json.dumps(record, indent=1))
    return replace(plan, **{field: steps})


if __name__ == "__main__":
    import sys

    print(train_world(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("shapes-model")))
