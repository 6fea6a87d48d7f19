"""Training a DIFF-token encoder (`diff_encoder.DiffEncoder`) for any model, on any before/after pairs.

The encoder maps the CLIP image features of a pair, (E_I(A), E_I(A′)), to n DIFF tokens D̃
(`diff_encoder`). It is trained on many pairs with everything else frozen, with the loss the
model's kind calls for:

- **An instruction editor** (InstructPix2Pix, the bundled `shapes-editor`): the loss the shapes world
  has always trained its encoder with. Per sampled pair (before, after), the squared error of the
  editor's prediction for z_after,t, given the image `before` and the instruction {"", D̃} with
  D̃ = encoder(before, after), summed over the latent, averaged over the batch. That is L_tc's
  "after" branch; the "before" branch is taught by the pair turned round (`both_ways`: after → before,
  with the encoder's prediction for that order).
- **A text-to-image model** (SD 1.x / 2.x, SDXL): the paper's token-consistency loss, both branches
  (eqs. 7–9, `inversion.token_consistency_loss`), with D̃ = encoder(A, A′) in place of fitted tokens:
  z_A,t denoised with {prompt_A′, −D̃} and z_A′,t with {prompt_A, +D̃}, where the prompts are the pair's
  captions (given with the data, or the model's captioner's). Each branch's squared error is summed
  over the latent (as the editor's), the two added, averaged over the batch. `both_ways` adds each
  pair turned round as one more pair.

Neither uses the CLIP loss: the encoder is trained to make tokens that denoise, and a fit started
from its prediction (`init="encoder"` with steps > 0) adds L_clip for the pair at hand.

Optimisation: AdamW (weight decay 1e-4) on the encoder alone; a cosine learning rate after 100
warm-up steps (`schedules.cosine_lr`). Each step draws `batch` pairs with replacement, then a
timestep and noise per latent, all from one CPU generator. Latents and CLIP features of every pair
are computed once before the loop (each process encodes its share, all keep the whole set in CPU
memory; each batch goes to the device as it is used).

Data parallel (`accelerate launch`): every process draws the same global batch from the same
generator and computes the loss on its own slice of `batch / processes` rows; accelerate's DDP
averages the gradients, so N processes take the step one process takes (up to float rounding), and
a checkpoint written by one count of processes resumes under another. Only the main process writes.

Checkpoints (`checkpoint`, a directory): every `checkpoint_every` steps and on Ctrl-C (the step
under way is finished first; a second Ctrl-C, seconds later, stops at once), `state.json` (the step
reached and the settings that decide the result) naming `encoder-<step>.safetensors` (the weights)
and `training-<step>.safetensors` (AdamW's state and the generator's). `state.json` is replaced last, so
an interruption while saving leaves the previous checkpoint whole. Called again with the same
settings, training resumes there and ends where an uninterrupted run ends; other settings are refused.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .diff_encoder import DiffEncoder, DiffEncoderConfig
from .errors import DiffinvError, Interrupted
from .inversion import token_consistency_loss
from .schedules import cosine_lr

CHECKPOINT_FORMAT = "diffinv.encoder-checkpoint/1"
STATE_NAME = "state.json"
ENCODE_CHUNK = 256  # images per VAE / CLIP call while the pairs are encoded before the loop
WEIGHT_DECAY, WARMUP = 1e-4, 100

# An image, or a function that reads one: a large data set is read a chunk at a time.
ImageItem = Image.Image | Callable[[], Image.Image]


def train_diff_encoder(
    backbone,
    clip,
    befores: Sequence[ImageItem],
    afters: Sequence[ImageItem],
    steps: int,
    n_tokens: int = 5,
    batch: int = 32,
    learning_rate: float = 1e-3,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    generator: torch.Generator | None = None,
    progress: bool = True,
    both_ways: bool = True,
    prompts: Sequence[tuple[str, str]] | None = None,
    accelerator=None,
    log: Callable[[int, float], None] | None = None,
    log_every: int = 100,
    warmup: int = WARMUP,
) -> DiffEncoder:
    """Train a `DiffEncoder` for `backbone` on the pairs (befores[i] → afters[i]); see the module's
    docstring for the loss of each kind of model, the data parallelism and the checkpoints.

    Args:
        backbone: the frozen model (`backbones`): an instruction editor or a text-to-image model.
        clip: the CLIP whose image features the encoder reads (`clip_space.ClipSpace`).
        befores, afters: P images each (all of one size, the working size of the model), or
            functions returning them.
        steps: optimisation steps in all (a resumed run counts the steps already done).
        batch: pairs per step, across all processes (a multiple of the number of processes).
        checkpoint: the checkpoint directory (None: no checkpoints, Ctrl-C stops as usual).
        generator: CPU generator of every draw (None: one seeded with 0); its state is checkpointed.
        both_ways: also train each pair turned round (after → before); off where the way back must
            not be learned (an edit type held out, `shapes.world.SPLIT`).
        prompts: a text-to-image model's (prompt of before, prompt of after) per pair; not read for
            an editor, whose instruction is the DIFF tokens alone.
        accelerator: an `accelerate.Accelerator` (None: one made here, which `accelerate launch`
            configures); the backbone must be on its device.
        log: called on the main process with (steps done, mean loss since the last call) every
            `log_every` steps and at the end.
        warmup: steps of the learning rate's linear warm-up (the world's 100).
    Returns the trained encoder (eval mode, no gradients), on the backbone's device.
    """
    kind = "editor" if backbone.takes_instructions else "text-to-image"
    _check_arguments(befores, afters, steps, batch, learning_rate, checkpoint_every, warmup, prompts, kind)
    if accelerator is None:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=backbone.device.type == "cpu", device_placement=False)
    processes = accelerator.num_processes
    if batch % processes:
        raise DiffinvError(f"the batch ({batch} pairs) must be a multiple of the number of processes ({processes})")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = backbone.device

    pool = _encoded_pool(backbone, clip, befores, afters, both_ways, accelerator)
    if kind == "text-to-image":
        ordered = [(after, before) for before, after in prompts]  # L_tc's rows: {prompt_A′, −D̃}, {prompt_A, +D̃}
        if both_ways:
            ordered += [(before, after) for before, after in prompts]
        ids, slot_mask = backbone.slot_ids([text for row in ordered for text in row], n_tokens)
    else:
        ids, slot_mask = backbone.slot_ids([""] * (batch // processes), n_tokens)

    encoder = DiffEncoder(DiffEncoderConfig(clip.joint_width, n_tokens, backbone.token_width)).to(device)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=learning_rate, weight_decay=WEIGHT_DECAY)
    settings = dict(
        kind=kind,
        pairs=len(befores),
        both_ways=both_ways,
        steps=steps,
        batch=batch,
        learning_rate=learning_rate,
        warmup=warmup,
        n_tokens=n_tokens,
        token_width=backbone.token_width,
        joint_width=clip.joint_width,
    )
    start = 0
    if checkpoint is not None:
        start = load_checkpoint(Path(checkpoint), settings, encoder, optimizer, generator)
    model, optimizer = accelerator.prepare(encoder, optimizer)

    per_process = batch // processes
    mine = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)
    scale = backbone.vae.config.scaling_factor
    main = accelerator.is_main_process
    running, counted = torch.zeros((), device=device), 0
    bar = tqdm(
        range(start, steps), desc="DIFF-token encoder", initial=start, total=steps, disable=not (progress and main)
    )
    with _CtrlCDeferred(checkpoint is not None) as stop:
        for step in bar:
            cosine_lr(optimizer, step, steps, learning_rate, warmup=warmup)
            index = torch.randint(len(pool.sources), (batch,), generator=generator)
            if kind == "editor":
                loss = _editor_loss(backbone, model, pool, index, mine, ids, slot_mask, scale, generator)
            else:
                loss = _text_to_image_loss(backbone, model, pool, index, mine, ids, slot_mask, generator)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            done = step + 1
            running, counted = running + loss.detach(), counted + 1
            if done % log_every == 0 or done == steps:
                mean = (accelerator.reduce(running, "mean") if processes > 1 else running).item() / counted
                running, counted = torch.zeros((), device=device), 0
                bar.set_postfix(loss=f"{mean:.3f}")
                if log is not None and main:
                    log(done, mean)
            stopping = _agreed(accelerator, stop.requested, device)
            if checkpoint is not None and main and (stopping or (done % checkpoint_every == 0 and done < steps)):
                save_checkpoint(
                    Path(checkpoint), done, settings, accelerator.unwrap_model(model), optimizer, generator
                )
            if stopping:
                accelerator.wait_for_everyone()
                raise Interrupted(
                    f"stopped after step {done} of {steps}; checkpoint in {checkpoint}, the same command resumes"
                )
    return accelerator.unwrap_model(model).eval().requires_grad_(False)


# --- the two losses -----------------------------------------------------------------------------------
class _Pool:
    """Every training row, encoded once: latents (R, C, h, w) scaled, CLIP features (R, D), on CPU.
    Row r is the pair sources[r] → targets[r]; with both ways the P pairs turned round follow."""

    def __init__(self, sources, targets, features_source, features_target):
        self.sources, self.targets = sources, targets
        self.features_source, self.features_target = features_source, features_target


def _editor_loss(backbone, model, pool, index, mine, ids, slot_mask, scale, generator) -> torch.Tensor:
    """The editor's loss on this process's rows `mine` of the global batch `index` (see the module).
    The noise and timesteps of the whole batch are drawn, in this order, whatever the rows."""
    device = backbone.device
    clean = pool.targets[index]
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, backbone.num_train_timesteps, (len(index),), generator=generator)
    clean = clean[mine].to(device)
    noise, timesteps = noise[mine].to(device, clean.dtype), timesteps[mine].to(device)  # the model's dtype
    rows = index[mine]
    tokens = model(pool.features_source[rows].to(device), pool.features_target[rows].to(device))
    text_states = backbone.encode_prompt(ids, slot_mask, tokens)
    noisy = backbone.add_noise(clean, noise, timesteps)
    prediction = backbone.predict(noisy, timesteps, text_states, pool.sources[rows].to(device) / scale)
    target = backbone.loss_target(clean, noise, timesteps)
    return (prediction.float() - target.float()).pow(2).sum(dim=(1, 2, 3)).mean()


def _text_to_image_loss(backbone, model, pool, index, mine, ids, slot_mask, generator) -> torch.Tensor:
    """L_tc, both branches, on this process's rows `mine` of the global batch `index` (see the module):
    latents interleaved as z_A, z_A′ per pair, a timestep and noise drawn for each."""
    device = backbone.device
    latents = torch.stack([pool.sources[index], pool.targets[index]], dim=1).flatten(0, 1)  # (2B, C, h, w)
    timesteps = torch.randint(0, backbone.num_train_timesteps, (latents.shape[0],), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    rows = index[mine]
    latent_rows = slice(2 * mine.start, 2 * mine.stop)
    latents, noise = latents[latent_rows].to(device, backbone.dtype), noise[latent_rows].to(device, backbone.dtype)
    timesteps = timesteps[latent_rows].to(device)
    noisy = backbone.add_noise(latents, noise, timesteps)
    targets = backbone.loss_target(latents, noise, timesteps)
    tokens = model(pool.features_source[rows].to(device), pool.features_target[rows].to(device))
    text_rows = torch.stack([2 * rows, 2 * rows + 1], dim=1).flatten().to(ids.device)
    loss = token_consistency_loss(
        backbone, tokens, ids[text_rows], slot_mask[text_rows], noisy, timesteps, targets, reduction="sum"
    )
    return loss.mean()


def _encoded_pool(backbone, clip, befores, afters, both_ways: bool, accelerator=None) -> _Pool:
    """Latents and CLIP features of every pair, a chunk of images at a time. With several processes
    each encodes every N-th pair and all gather the results (each then holds the whole pool)."""
    processes = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    share = range(rank, len(befores), processes)
    with torch.no_grad():
        encoded = []  # latents and features of the befores, then of the afters: this process's share
        for images in (befores, afters):
            mine = [images[i] for i in share]
            chunks = [_read(mine[i : i + ENCODE_CHUNK]) for i in range(0, len(mine), ENCODE_CHUNK)]
            encoded.append(torch.cat([backbone.encode_images(chunk).cpu() for chunk in chunks]))
            encoded.append(torch.cat([clip.image_features(chunk).float().cpu() for chunk in chunks]))
    if processes > 1:
        encoded = [_gathered(accelerator, tensor, len(befores)) for tensor in encoded]
    latents_before, features_before, latents_after, features_after = encoded
    if not both_ways:
        return _Pool(latents_before, latents_after, features_before, features_after)
    return _Pool(  # each pair also teaches the edit back
        torch.cat([latents_before, latents_after]),
        torch.cat([latents_after, latents_before]),
        torch.cat([features_before, features_after]),
        torch.cat([features_after, features_before]),
    )


def _gathered(accelerator, rows: torch.Tensor, total: int) -> torch.Tensor:
    """The rows of all processes in pair order: process r holds pairs r, r + N, r + 2N, … (`share`)."""
    processes, per_process = accelerator.num_processes, -(-total // accelerator.num_processes)
    padded = torch.zeros((per_process, *rows.shape[1:]), dtype=rows.dtype)
    padded[: len(rows)] = rows
    everyone = accelerator.gather(padded.to(accelerator.device)).cpu().view(processes, per_process, *rows.shape[1:])
    return everyone.transpose(0, 1).reshape(processes * per_process, *rows.shape[1:])[:total]


def _read(items: Sequence[ImageItem]) -> list[Image.Image]:
    return [item if isinstance(item, Image.Image) else item() for item in items]


def _check_arguments(befores, afters, steps, batch, learning_rate, checkpoint_every, warmup, prompts, kind) -> None:
    if len(befores) != len(afters) or not befores:
        raise DiffinvError("a DIFF-token encoder needs as many 'after' images as 'before' images, at least one")
    for name, value in (
        ("steps", steps),
        ("batch", batch),
        ("checkpoint_every", checkpoint_every),
        ("warmup", warmup),
    ):
        if not isinstance(value, int) or value < 1:
            raise DiffinvError(f"{name} must be an integer ≥ 1, got {value!r}")
    if not learning_rate > 0:
        raise DiffinvError(f"the learning rate must be > 0, got {learning_rate!r}")
    if kind == "text-to-image" and (prompts is None or len(prompts) != len(befores)):
        raise DiffinvError(
            "a text-to-image model's encoder is trained with the paper's token-consistency loss, which needs a "
            "(before, after) prompt for every pair"
        )


# --- Ctrl-C and checkpoints -----------------------------------------------------------------------------
class _StopRequest:
    requested_at: float | None = None  # time.monotonic() of the first Ctrl-C

    @property
    def requested(self) -> bool:
        return self.requested_at is not None


class _CtrlCDeferred:
    """While active (and `enabled`, on the main thread): the first Ctrl-C only sets `requested`, so the
    step under way ends and is checkpointed; another one more than `REPEAT_WINDOW` seconds later
    interrupts at once. Within the window it is taken for the same Ctrl-C: under `accelerate launch`
    (torchrun) a worker gets the terminal's SIGINT and then the launcher's, which passes it on."""

    REPEAT_WINDOW = 3.0

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.request = _StopRequest()
        self.previous = None

    def __enter__(self) -> _StopRequest:
        if self.enabled:
            self.previous = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                now = time.monotonic()
                if self.request.requested_at is None:
                    self.request.requested_at = now
                elif now - self.request.requested_at > self.REPEAT_WINDOW:
                    raise KeyboardInterrupt

            signal.signal(signal.SIGINT, handler)
        return self.request

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)


def _agreed(accelerator, requested: bool, device) -> bool:
    """Whether any process was asked to stop: all processes stop after the same step."""
    if accelerator.num_processes == 1:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def save_checkpoint(directory: Path, step: int, settings: dict, encoder, optimizer, generator) -> None:
    """The state after `step` steps into `directory` (see the module); older files go once it is whole."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    save_file(weights, str(directory / f"encoder-{step}.safetensors"))
    state = optimizer.state_dict()["state"]
    tensors = {
        f"adamw.{i}.{key}": value.detach().cpu().contiguous() for i, s in state.items() for key, value in s.items()
    }
    tensors["generator"] = generator.get_state()
    save_file(tensors, str(directory / f"training-{step}.safetensors"))
    temporary = directory / (STATE_NAME + ".tmp")
    temporary.write_text(json.dumps({"format": CHECKPOINT_FORMAT, "step": step, "settings": settings}, indent=1))
    os.replace(temporary, directory / STATE_NAME)
    for old in directory.glob("*-*.safetensors"):
        if old.name not in (f"encoder-{step}.safetensors", f"training-{step}.safetensors"):
            old.unlink(missing_ok=True)


def read_checkpoint_state(directory: Path) -> dict | None:
    """The checkpoint's `state.json` ({"step", "settings"}), or None where there is no checkpoint."""
    path = directory / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {state.get('format')!r}")
        return state
    except (ValueError, AttributeError) as error:
        raise DiffinvError(f"{path}: not a DIFF-token encoder checkpoint ({error})") from None


def load_checkpoint(directory: Path, settings: dict, encoder, optimizer, generator) -> int:
    """Restore the checkpoint in `directory` (if any) into the encoder, AdamW and the generator;
    returns the steps done (0 with none). A checkpoint of other settings is refused, naming one."""
    state = read_checkpoint_state(directory)
    if state is None:
        return 0
    differing = [key for key in settings if state["settings"].get(key) != settings[key]]
    if differing:
        key = differing[0]
        raise DiffinvError(
            f"{directory}: a checkpoint of another training run ({key} {state['settings'].get(key)!r}, not "
            f"{settings[key]!r}); train with its settings to resume it, or start afresh elsewhere"
        )
    step = state["step"]
    try:
        encoder.load_state_dict(load_file(str(directory / f"encoder-{step}.safetensors")))
        tensors = load_file(str(directory / f"training-{step}.safetensors"))
    except (OSError, RuntimeError, ValueError) as error:
        raise DiffinvError(f"{directory}: the checkpoint of step {step} is unreadable ({error})") from None
    generator.set_state(tensors.pop("generator"))
    adamw: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        adamw.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": adamw, "param_groups": optimizer.state_dict()["param_groups"]})
    return step


def remove_checkpoint(directory: Path) -> None:
    """The checkpoint's files, then the directory if nothing else is left in it."""
    for name in [STATE_NAME, *(p.name for p in directory.glob("*-*.safetensors"))]:
        (directory / name).unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
