"""Training a DIFF-token encoder (`encoder_training`, `diffinv encoder train`) and its data (`pair_data`),
on tiny models of the real classes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffinv
from conftest import run_cli, shape_image
from diffinv.backbones.editor import InstructPix2PixBackbone
from diffinv.diff_encoder import DiffEncoder, DiffEncoderConfig
from diffinv.encoder_training import STATE_NAME, _encoded_pool, _text_to_image_loss, train_diff_encoder
from diffinv.errors import DiffinvError, Interrupted
from diffinv.pair_data import find_pairs
from diffinv.schedules import cosine_lr
from diffinv.testing import tiny_instruct_pix2pix

COLOURS = ("red", "blue", "green", "yellow")


def tiny_pairs(n: int = 3):
    """n pairs of 32² pictures, a circle whose colour changes, with their captions as prompts."""
    colours = [(COLOURS[i % 4], COLOURS[(i + 1) % 4]) for i in range(n)]
    befores = [shape_image((32, 32), before, seed=i) for i, (before, _) in enumerate(colours)]
    afters = [shape_image((32, 32), after, seed=i) for i, (_, after) in enumerate(colours)]
    prompts = [(f"a photo of a {before} circle", f"a photo of a {after} circle") for before, after in colours]
    return befores, afters, prompts


def weights(encoder: DiffEncoder) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in encoder.state_dict().items()}


# --- the loop --------------------------------------------------------------------------------------------
def test_one_process_learns_a_text_to_image_models_token_consistency(backbone, clip):
    """L_tc of a fixed draw (same pairs, timesteps and noise) is lower with the trained encoder's
    tokens than with the untrained one's, which are the paper's zero start."""
    befores, afters, prompts = tiny_pairs()
    pool = _encoded_pool(backbone, clip, befores, afters, both_ways=False)
    ids, slot_mask = backbone.slot_ids([text for before, after in prompts for text in (after, before)], 5)

    def fixed_loss(encoder) -> float:
        generator = torch.Generator().manual_seed(123)
        with torch.no_grad():
            draws = [
                _text_to_image_loss(
                    backbone,
                    encoder,
                    pool,
                    torch.randint(3, (6,), generator=generator),
                    slice(0, 6),
                    ids,
                    slot_mask,
                    generator,
                )
                for _ in range(2)
            ]
        return torch.stack(draws).mean().item()

    untrained = DiffEncoder(DiffEncoderConfig(clip.joint_width, 5, backbone.token_width))
    torch.manual_seed(0)
    trained = train_diff_encoder(
        backbone,
        clip,
        befores,
        afters,
        5,
        batch=2,
        learning_rate=3e-2,
        both_ways=False,
        prompts=prompts,
        progress=False,
        warmup=1,
    )
    before, after = fixed_loss(untrained), fixed_loss(trained)
    # A random tiny UNet reads little of its text: 2–2.5 % lower here, at several learning rates and seeds
    assert after < 0.99 * before, (before, after)


def test_an_interrupted_run_resumes_to_the_uninterrupted_runs_weights(backbone, clip, tmp_path):
    """Ctrl-C after step 1 of 3 checkpoints that step (weights, AdamW, generator); the same call
    then ends with the weights of a run never interrupted. Other settings are refused."""
    befores, afters, prompts = tiny_pairs()
    common = dict(batch=2, learning_rate=1e-2, prompts=prompts, progress=False, warmup=2, log_every=1)

    def run(checkpoint=None, log=None, steps=3):
        torch.manual_seed(0)
        return train_diff_encoder(
            backbone,
            clip,
            befores,
            afters,
            steps,
            checkpoint=checkpoint,
            log=log,
            generator=torch.Generator().manual_seed(5),
            **common,
        )

    uninterrupted = weights(run())

    def ctrl_c_at_step_1(step, loss):
        if step == 1:
            signal.raise_signal(signal.SIGINT)

    checkpoint = tmp_path / "checkpoint"
    with pytest.raises(Interrupted, match="stopped after step 1 of 3"):
        run(checkpoint, ctrl_c_at_step_1)
    assert json.loads((checkpoint / STATE_NAME).read_text())["step"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Ctrl-C again
    with pytest.raises(DiffinvError, match="another training run .steps 3, not 4"):
        run(checkpoint, steps=4)
    resumed = weights(run(checkpoint))
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    assert any(value.abs().sum() > 0 for value in resumed.values())


def world_recipe_as_it_was(backbone, clip, befores, afters, steps, batch, generator, both_ways):
    """The shapes world's encoder training as `diff_encoder.train_diff_encoder` did it before it moved
    into `encoder_training` (commit 718d42e), less its checkpoints: the reference for the numbers."""
    with torch.no_grad():
        latents_before, latents_after = backbone.encode_images(befores), backbone.encode_images(afters)
        features_before, features_after = clip.image_features(befores).float(), clip.image_features(afters).float()
    sources, targets, features_source, features_target = latents_before, latents_after, features_before, features_after
    if both_ways:
        sources, targets = torch.cat([latents_before, latents_after]), torch.cat([latents_after, latents_before])
        features_source = torch.cat([features_before, features_after])
        features_target = torch.cat([features_after, features_before])
    encoder = DiffEncoder(DiffEncoderConfig(clip.joint_width, 5, backbone.token_width))
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3, weight_decay=1e-4)
    ids, slot_mask = backbone.slot_ids([""] * batch, 5)
    scale = backbone.vae.config.scaling_factor
    for step in range(steps):
        cosine_lr(optimizer, step, steps, 1e-3, warmup=100)
        index = torch.randint(len(sources), (batch,), generator=generator)
        clean = targets[index]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, backbone.num_train_timesteps, (batch,), generator=generator)
        text_states = backbone.encode_prompt(ids, slot_mask, encoder(features_source[index], features_target[index]))
        noisy = backbone.add_noise(clean, noise, timesteps)
        prediction = backbone.predict(noisy, timesteps, text_states, sources[index] / scale)
        loss = (prediction - backbone.loss_target(clean, noise, timesteps)).pow(2).sum(dim=(1, 2, 3)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return encoder


@pytest.mark.parametrize("both_ways", [True, False])
def test_an_editors_encoder_is_trained_as_the_world_trained_it(editor, clip, both_ways):
    """Same seed, same weights, bit for bit, as the loop the world's stage used before."""
    befores, afters, _ = tiny_pairs()
    torch.manual_seed(3)
    reference = world_recipe_as_it_was(
        editor, clip, befores, afters, 2, 3, torch.Generator().manual_seed(7), both_ways
    )
    torch.manual_seed(3)
    trained = train_diff_encoder(
        editor,
        clip,
        befores,
        afters,
        2,
        batch=3,
        generator=torch.Generator().manual_seed(7),
        progress=False,
        both_ways=both_ways,
    )
    for name, value in weights(reference).items():
        assert torch.equal(value, trained.state_dict()[name]), name


def test_the_worlds_stage_trains_through_this_loop(editor, clip, tmp_path, monkeypatch):
    from diffinv import encoder_training
    from diffinv.shapes.descriptor import TrainingPlan
    from diffinv.shapes.train import diff_encoder_stage

    editor.pipe.save_pretrained(tmp_path / "editor")
    clip.model.save_pretrained(tmp_path / "clip")
    clip.tokenizer.save_pretrained(tmp_path / "clip")
    calls = []
    real = encoder_training.train_diff_encoder

    def spy(*args, **kwargs):
        calls.append(kwargs)
        calls.append(real(*args, **{**kwargs, "batch": 2}))  # the stage's 32 pairs a step cost seconds here
        return calls[-1]

    monkeypatch.setattr(encoder_training, "train_diff_encoder", spy)
    plan = TrainingPlan(n_edit_pairs=4, diff_encoder_steps=2)
    diff_encoder_stage(plan, tmp_path, data=None)
    arguments, trained = calls
    assert arguments["both_ways"] is False and arguments["checkpoint"] == tmp_path / "diff_encoder-partial"
    assert not arguments["checkpoint"].exists()  # removed once the encoder is saved
    saved = DiffEncoder.from_pretrained(tmp_path / "editor" / "diff_encoder")
    for name, value in saved.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name])


def test_a_bfloat16_model_trains_a_float32_encoder():
    """bfloat16, the models' dtype on a GPU: latents, noise and the image condition in the model's
    dtype, the encoder in float32 (checked on CPU, both kinds of model)."""
    from diffinv.backbones.sd import StableDiffusionBackbone
    from diffinv.testing import tiny_clip_for, tiny_pipeline

    pipe = tiny_pipeline()
    clip = tiny_clip_for(pipe)
    editor_pipe = tiny_instruct_pix2pix(pipe)
    for module in (pipe, editor_pipe):
        module.to(dtype=torch.bfloat16)
    befores, afters, prompts = tiny_pairs(2)
    for model in (StableDiffusionBackbone(pipe, "bf16"), InstructPix2PixBackbone(editor_pipe, "bf16-editor")):
        encoder = train_diff_encoder(
            model, clip, befores, afters, 1, batch=2, prompts=prompts, progress=False, warmup=1
        )
        assert all(p.dtype == torch.float32 and p.isfinite().all() for p in encoder.parameters())
        assert any(p.abs().sum() > 0 for p in encoder.net[-1].parameters())  # a step was taken


def test_bad_arguments_are_refused_in_one_line(backbone, editor, clip):
    befores, afters, prompts = tiny_pairs(2)
    with pytest.raises(DiffinvError, match="needs a .before, after. prompt for every pair"):
        train_diff_encoder(backbone, clip, befores, afters, 2, progress=False)
    with pytest.raises(DiffinvError, match="as many 'after' images"):
        train_diff_encoder(editor, clip, befores, afters[:1], 2, progress=False)
    with pytest.raises(DiffinvError, match="batch must be an integer ≥ 1"):
        train_diff_encoder(editor, clip, befores, afters, 2, batch=0, progress=False)


# --- the data ----------------------------------------------------------------------------------------------
def pair_folders(root: Path, n: int = 2, captions: bool = True) -> Path:
    for i in range(n):
        folder = root / f"pair{i}"
        folder.mkdir(parents=True)
        shape_image((40, 32), COLOURS[i], seed=i).save(folder / "before.png")
        shape_image((40, 32), COLOURS[i + 1], seed=i).save(folder / "after.jpg")
        if captions:
            (folder / "captions.txt").write_text(
                f"before: a photo of a {COLOURS[i]} circle\nafter: a photo of a {COLOURS[i + 1]} circle\n"
            )
    return root


def instructpix2pix_copy(root: Path) -> Path:
    for name, seeds in (("0001", ("11", "12")), ("0002", ("13",))):
        folder = root / name
        folder.mkdir(parents=True)
        prompt = {"input": f"a red circle {name}", "edit": "make it blue", "output": f"a blue circle {name}"}
        (folder / "prompt.json").write_text(json.dumps(prompt))
        for seed in seeds:
            shape_image((32, 32), "red").save(folder / f"{seed}_0.jpg")
            shape_image((32, 32), "blue").save(folder / f"{seed}_1.jpg")
    return root


def test_pair_folders_are_read_with_their_captions(tmp_path):
    root = pair_folders(tmp_path / "data")
    (root / "notes").mkdir()  # not a pair folder: skipped
    layout, pairs = find_pairs(root)
    assert layout == "folders" and [pair.id for pair in pairs] == ["pair0", "pair1"]
    assert pairs[1].after.name == "after.jpg"
    assert (pairs[0].caption_before, pairs[0].caption_after) == ("a photo of a red circle", "a photo of a blue circle")


def test_an_instructpix2pix_copy_is_read_with_its_input_and_output_captions(tmp_path):
    layout, pairs = find_pairs(instructpix2pix_copy(tmp_path / "ip2p"))
    assert layout == "instructpix2pix" and len(pairs) == 3
    assert (pairs[2].caption_before, pairs[2].caption_after) == ("a red circle 0002", "a blue circle 0002")
    assert pairs[0].before.name == "11_0.jpg" and pairs[0].after.name == "11_1.jpg"


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (lambda root: (root / "pair1" / "after.jpg").unlink(), "pair1: a pair folder without its 'after' image"),
        (lambda root: (root / "pair0" / "before.png").write_bytes(b""), "before.png: the file is empty"),
        (lambda root: (root / "pair0" / "before.png").write_text("not a picture"), "before.png: not an image"),
    ],
)
def test_bad_pair_folders_are_refused_naming_the_file(tmp_path, spoil, fragment):
    root = pair_folders(tmp_path / "data")
    spoil(root)
    with pytest.raises(DiffinvError, match=fragment):
        find_pairs(root)


def test_a_partial_instructpix2pix_copy_or_no_data_is_refused(tmp_path):
    root = instructpix2pix_copy(tmp_path / "ip2p")
    (root / "0001" / "12_1.jpg").unlink()
    with pytest.raises(DiffinvError, match="12_0.jpg: a 'before' image without its 'after'"):
        find_pairs(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffinvError, match="no pairs found"):
        find_pairs(tmp_path / "empty")
    with pytest.raises(DiffinvError, match="no such directory"):
        find_pairs(tmp_path / "missing")


# --- the command -------------------------------------------------------------------------------------------
def test_the_command_trains_resumes_refuses_and_the_fit_starts_from_its_encoder(
    capsys, tmp_path, model_args, image_files
):
    data = pair_folders(tmp_path / "data")
    out = tmp_path / "encoder"
    train = ["encoder", "train", "--data", data, "-o", out, "--steps", "2", "--batch", "2", *model_args]
    code, stdout, err = run_cli(capsys, train)
    assert code == 0, err
    record = json.loads((out / "encoder_training.json").read_text())
    assert record["finished"] and record["kind"] == "text-to-image" and record["run"]["pairs"] == 2
    assert [step for step, _ in record["losses"]] == [2]
    assert not (out / "checkpoint").exists()
    encoder = DiffEncoder.from_pretrained(out)
    assert encoder.config.n_tokens == 5 and any(p.abs().sum() > 0 for p in encoder.parameters())

    code, stdout, err = run_cli(capsys, train)  # the same command again: nothing to do
    assert code == 0 and "nothing to do" in stdout
    code, _, err = run_cli(capsys, [*train[: -len(model_args)], "--steps", "3", *model_args])
    assert code == 2 and "other settings (steps 2, not 3)" in err and len(err.splitlines()) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, [*train[:5], tmp_path / "other", *train[6:]])
    assert code == 2 and "is not a DIFF-token encoder's training run" in err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, [*train[:5], tmp_path / "other", *train[6:], "--overwrite"])
    assert code == 0, err  # the encoder written beside the user's file, which stays
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert DiffEncoder.from_pretrained(tmp_path / "other").config == encoder.config

    tokens = tmp_path / "tokens.safetensors"
    fit = ["fit", image_files["a"], image_files["a_prime"], "-o", tokens, "--steps", "0"]  # --encoder: init encoder
    code, _, err = run_cli(capsys, [*fit, "--encoder", tmp_path / "data", *model_args])
    assert code == 2 and "--encoder" in err and "no DIFF-token encoder there" in err
    code, _, err = run_cli(capsys, [*fit, "--encoder", out, *model_args])
    assert code == 0, err
    from diffinv.tokens import DiffTokens

    fitted = DiffTokens.load(tokens)
    assert fitted.config.init == "encoder" and fitted.embeddings.abs().sum() > 0  # the encoder's prediction

    auto = [*fit[:-2], "--init", "auto", "--steps", "1", "--encoder", out, "--overwrite"]
    auto += ["--caption-a", "a red circle", "--caption-a-prime", "a blue circle", *model_args]  # a fit needs them
    code, stdout, err = run_cli(capsys, auto)
    assert code == 0, err
    check = DiffTokens.load(tokens).encoder_check  # the route the check took is said, and kept in the file
    said = "D̃ from the DIFF-token encoder" if check["accepted"] else "D̃ fitted: the DIFF-token encoder's"
    assert said in stdout and f"tolerance {check['tolerance']}" in stdout


def test_the_command_refuses_bad_data_and_flags_before_loading(capsys, tmp_path, model_args):
    data = pair_folders(tmp_path / "data")
    (data / "pair1" / "before.png").unlink()
    code, _, err = run_cli(capsys, ["encoder", "train", "--data", data, "-o", tmp_path / "out", *model_args])
    assert code == 2 and "pair1: a pair folder without its 'before' image" in err
    code, _, err = run_cli(
        capsys, ["encoder", "train", "--data", data, "-o", tmp_path / "o", "--steps", "0", *model_args]
    )
    assert code == 2 and "--steps must be at least 1" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_processes_under_accelerate_take_the_steps_of_one(tmp_path, tiny_model_dir):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU: each process works on half of each batch; the
    encoder equals the one-process run's up to float rounding, and only one process wrote."""
    model_dir, clip_dir = tiny_model_dir
    data = pair_folders(tmp_path / "data", n=3)
    env = {**os.environ, "PYTHONPATH": str(Path(diffinv.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    flags = ["--data", data, "--steps", "3", "--batch", "4", "--model", model_dir, "--clip-model", clip_dir, "--quiet"]
    # accelerate's --cpu runs one process (several need MPI); --multi_gpu starts them through torchrun,
    # and the command then asks accelerate for CPU processes (gloo), there being no GPU here.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two = subprocess.run(
        [*launch, "-m", "diffinv.cli", "encoder", "train", "-o", tmp_path / "two", "--device", "cpu", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run(
        [sys.executable, "-m", "diffinv.cli", "encoder", "train", "-o", tmp_path / "one", "--device", "cpu", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.stdout.count("wrote") == 1
    record = json.loads((tmp_path / "two" / "encoder_training.json").read_text())
    assert record["processes"] == 2
    encoder_one, encoder_two = (
        DiffEncoder.from_pretrained(tmp_path / "one"),
        DiffEncoder.from_pretrained(tmp_path / "two"),
    )
    for name, value in encoder_one.state_dict().items():
        torch.testing.assert_close(encoder_two.state_dict()[name], value, rtol=1e-4, atol=1e-6)
    assert any(value.abs().sum() > 0 for value in encoder_two.state_dict().values())


def test_the_command_interrupted_resumes_with_its_whole_loss_curve(capsys, tmp_path, model_args, monkeypatch):
    from diffinv.cli import encoder as encoder_command

    data, out = pair_folders(tmp_path / "data"), tmp_path / "encoder"
    train = ["encoder", "train", "--data", data, "-o", out, "--steps", "3", "--batch", "2", "--log-every", "1"]
    write = encoder_command._write_record

    def write_then_ctrl_c(directory, record):  # Ctrl-C as step 2's loss is recorded
        write(directory, record)
        if [step for step, _ in record.get("losses", [])] == [1, 2]:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(encoder_command, "_write_record", write_then_ctrl_c)
    code, _, err = run_cli(capsys, [*train, "--checkpoint-every", "1", *model_args])
    assert code == 130 and "interrupted; stopped after step 2 of 3" in err
    monkeypatch.setattr(encoder_command, "_write_record", write)
    code, _, err = run_cli(capsys, [*train, "--checkpoint-every", "2", *model_args])  # not a setting of the result
    assert code == 0, err
    record = json.loads((out / "encoder_training.json").read_text())
    assert record["finished"] and [step for step, _ in record["losses"]] == [1, 2, 3]
    assert not (out / "checkpoint").exists()
