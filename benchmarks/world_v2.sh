#!/usr/bin/env bash
# The world-v2 runs behind docs/results.md (sections 7 and 8) and docs/shapes.md, by name.
#
#   bash benchmarks/world_v2.sh STEP        STEP: train-base | train-denoisers | check | bundle | heldout | heldout-mask | heldout-steps | heldout-editor | dev-editor | train-encoder | dev-encoder | heldout-encoder | heldout-encoder-baselines | train-encoder-seen | dev-split | heldout-split | dev-examples | heldout-unseen | dev-unseen-variants | dev-auto | heldout-auto | heldout-auto-k3 | dev-t2i-encoder | paper-hard | baselines | keep RUN
#
# Every step resumes where it stopped. A bench step may run in two shells at once (the two
# processes share the run directory and take different triplets), one thread each.
# WORLD (default runs/world-v2) is the directory the training steps write; MODEL (default shapes,
# the bundled world) is the world the bench steps measure.
#
# Each bench step runs the methods of its record in docs/runs/ with the configs they had then
# (tests/test_records.py holds them equal): where a default has moved since, the step says the old
# value (--set for the text-to-image model's, the spec's fields for the editor's), and a spec that
# had to be spelled out is named otherwise than in the record, which keeps the name it ran under.
# The editor's specs name their start and budget: before the DIFF-token encoder (heldout-encoder),
# the editor's "on-editor" was a fit from zeros, at 100 steps and weight decay 0.01 until the
# seed-150 report (heldout-editor) and at 200 steps and weight decay 1 after it; drop init, steps
# and weight_decay where the record does not have them to get the record's name.
set -euo pipefail
WORLD=${WORLD:-runs/world-v2}
MODEL=${MODEL:-shapes}
BENCH=(diffinv bench run --model "$MODEL" --threads 1 --quiet)

case "${1:-}" in
  train-base)  # the classifier and CLIP beside the VAE, then the text-to-image UNet on both cores
    diffinv shapes train --out "$WORLD" --stage classifier --stage clip --threads 1 &
    diffinv shapes train --out "$WORLD" --stage vae --stage vae_decoder --threads 1
    wait
    diffinv shapes train --out "$WORLD" --stage unet --stage clip_vision --stage vae_grids ;;
  train-denoisers)  # the editor beside the inpainting model (each only needs the UNet)
    diffinv shapes train --out "$WORLD" --stage editor --threads 1 &
    diffinv shapes train --out "$WORLD" --stage inpainting --threads 1
    wait ;;
  check)
    diffinv shapes check --model-dir "$WORLD" ;;
  bundle)  # the checked world into the package, as `--model shapes`: training's partial checkpoints, locks
    # and a denoiser still training (its directory not yet named in diffinv.json) left out
    dest=src/diffinv/shapes/model
    rm -rf "$dest" && mkdir -p "$dest"
    training=$(python -c "import json, sys; bench = json.load(open(sys.argv[1]))['bench']
print(' '.join(d for d in ('editor', 'inpainting') if d not in bench))" "$WORLD/diffinv.json")
    (cd "$WORLD" && find . -type f ! -name '*-partial.safetensors' ! -name '*.lock' -print0 |
      xargs -0 cp --parents -t "$OLDPWD/$dest")
    for directory in $training; do rm -rf "${dest:?}/$directory"; done
    du -sh "$dest" ;;
  heldout)  # issue 11: the choice frozen on development seeds 1-4, reported once on seed 120
    # Run on the world's second training run (--model runs/world-v2 then, not kept), whose defaults
    # were 200 steps and img2img at strength 0.8, guidance 4; the --set gives them to the bundled world.
    "${BENCH[@]}" --out runs/heldout-v2-s120 --n 200 --triplet-seed 120 \
      --set steps=200,guidance_scale=4,strength=0.8,sampling_mode=img2img \
      --method paper --method difference-inversion --method "inversion:strength=0.6,guidance_scale=2.5" ;;
  heldout-mask)  # issue 11: the edit mask, frozen on development seeds 5-6, reported once on seed 130
    # (the world fitted in 200 steps then)
    "${BENCH[@]}" --out runs/heldout-v2-s130 --n 200 --triplet-seed 130 --set steps=200 \
      --method paper --method difference-inversion --method "difference-inversion:edit_mask=0.3" ;;
  heldout-steps)  # issue 9: the fit at 100 steps, equal to 200 on development seeds 5-8, reported once on seed 140
    # (the world fitted in 200 steps then: the run's base config; each method names its own steps)
    "${BENCH[@]}" --out runs/heldout-v2-s140 --n 200 --triplet-seed 140 --set steps=200 \
      --method "difference-inversion:steps=200" --method "difference-inversion:steps=100" \
      --method "paper:steps=200" --method "paper:steps=100" ;;
  heldout-editor)  # issue 11: DI on the editor, frozen on development seeds 7-9 (200 steps, weight decay 1), once on seed 150
    # recorded as "on-editor" (the probe's configuration) and "on-editor:steps=200,weight_decay=1"
    "${BENCH[@]}" --out runs/heldout-v2-s150 --n 200 --triplet-seed 150 \
      --method paper --method difference-inversion --method on-editor:init=zeros,steps=100,weight_decay=0.01 \
      --method on-editor:init=zeros,steps=200,weight_decay=1 ;;
  dev-editor)  # issue 11: the development rows of DI on the editor, seeds 7 and 8 (50 triplets each) and 9
    # Made while the editor's default was the probe's configuration (P: the records' "on-editor";
    # 100 steps, weight decay 0.01); S and F are the records' "on-editor:steps=200" and the frozen
    # row "on-editor:steps=200,weight_decay=1". Each spec here is the record's with init=zeros and the
    # fit's steps and weight decay spelled out.
    P=on-editor:init=zeros,steps=100,weight_decay=0.01
    S=on-editor:init=zeros,steps=200,weight_decay=0.01
    F=on-editor:init=zeros,steps=200,weight_decay=1
    for seed in 7 8; do
      "${BENCH[@]}" --out "runs/ed-dev2-s$seed" --n 50 --triplet-seed "$seed" --method difference-inversion \
        --method $P --method $P,use_clip_loss=false --method $P,candidates=4 \
        --method $P,negative_diff=true --method $P,image_guidance_scale=5 \
        --method $S --method on-editor:init=zeros,steps=400,weight_decay=0.01 --method $S,learning_rate=0.02 \
        --method $S,alpha=1 --method $S,n_tokens=8 \
        --method $S,n_tokens=3 --method $S,lambda_tc=0.03 \
        --method $S,lambda_clip_b=2 --method $S,lambda_clip_b=6 \
        --method on-editor:init=zeros,steps=100,weight_decay=1 --method on-editor:init=zeros,steps=100,weight_decay=2 \
        --method on-editor:init=zeros,steps=200,weight_decay=0.3 --method on-editor:init=zeros,steps=200,weight_decay=0.6 \
        --method $F --method on-editor:init=zeros,steps=200,weight_decay=1.5 \
        --method on-editor:init=zeros,steps=200,weight_decay=3 --method difference-inversion:weight_decay=1
    done
    for seed in 7 8; do  # after the held-out report: variants of the frozen row
      "${BENCH[@]}" --out "runs/ed-dev2-s$seed" --n 50 --triplet-seed "$seed" \
        --method $F,candidates=4 --method $F,lambda_tc=0.03 --method $F,lambda_clip=3 --method $F,image_guidance_scale=4
    done
    "${BENCH[@]}" --out runs/ed-dev2-s9 --n 50 --triplet-seed 9 \
      --method $S --method $F --method difference-inversion
    for seed in 7 8; do  # what is left, the attributes: more variants of the frozen row
      "${BENCH[@]}" --out "runs/ed-dev2-s$seed" --n 50 --triplet-seed "$seed" \
        --method $F,n_tokens=2 --method $F,n_tokens=4 --method $F,alpha=0.5 --method $F,clip_loss_space=text-tower \
        --method $F,lambda_tc=0.003 --method on-editor:init=zeros,steps=300,weight_decay=1.5 --method $F,edit_strength=0.7 \
        --method $F,guidance_scale=3 --method $F,sampling_steps=40
    done ;;
  train-encoder)  # issue 11: the DIFF-token encoder of the bundled world's editor (diffinv.diff_encoder)
    diffinv shapes train --out src/diffinv/shapes/model --stage diff_encoder ;;
  dev-encoder)  # issue 11: the encoder's tokens as they are, and as the fit's start, on seeds 7 and 8
    # The second is recorded as "on-editor:init=encoder" (the editor's 200 steps at weight decay 1 then).
    for seed in 7 8; do
      "${BENCH[@]}" --out "runs/ed-dev2-s$seed" --n 50 --triplet-seed "$seed" \
        --method on-editor:init=encoder,steps=0 --method on-editor:init=encoder,steps=200,weight_decay=1
    done ;;
  heldout-encoder)  # issue 11: the frozen choice once on held-out seed 160, 200 triplets (two shells at once)
    # The editor's 200-step fit from zeros at weight decay 1 was its default then, recorded as
    # "on-editor" in docs/runs/heldout-v2-s160; today's on-editor is the encoder's D̃, so the fit is named in full.
    "${BENCH[@]}" --out runs/heldout-v2-s160 --n 200 --triplet-seed 160 \
      --method on-editor:init=encoder,steps=0 --method on-editor:init=zeros,steps=200,weight_decay=1 --method paper \
      --method difference-inversion ;;
  heldout-encoder-baselines)  # issue 11: the paper's baselines beside it, first 100 triplets of seed 160
    "${BENCH[@]}" --out runs/heldout-v2-s160-baselines --n 100 --triplet-seed 160 \
      --method on-editor:init=encoder,steps=0 --method sdedit --method analogist --method instructpix2pix --method visii ;;
  train-encoder-seen)  # issue 25: the DIFF-token encoder again, on the seen half of the edit types only
    diffinv shapes train --out "$WORLD" --stage diff_encoder ;;
  dev-split)  # issue 25: the seen-trained encoder against the per-pair fit, development seed 1, 30 per split
    # (the record names the encoder's D̃ "on-editor": the editor's default when it ran)
    "${BENCH[@]}" --out runs/dev-split-s1 --n 30 --triplet-seed 1 --split all \
      --method on-editor:init=encoder --method on-editor:init=zeros,steps=200,weight_decay=1 ;;
  heldout-split)  # issue 25: once on held-out seed 200, 200 triplets per split (two shells at once): the
    # encoder's D̃ (the record's "on-editor"), the per-pair fit on the same editor, the text-to-image route
    "${BENCH[@]}" --out runs/heldout-split-s200 --n 200 --triplet-seed 200 --split all \
      --method on-editor:init=encoder --method on-editor:init=zeros,steps=200,weight_decay=1 \
      --method difference-inversion ;;
  dev-examples)  # issue 25: several example pairs of one edit, development seed 1, unseen split, K = 1 and 3
    for k in 1 3; do
      "${BENCH[@]}" --out runs/examples-k$k-s1 --n 30 --triplet-seed 1 --split unseen --examples $k \
        --method on-editor:init=zeros,steps=200,weight_decay=1 --method on-editor:init=encoder,steps=0
    done ;;
  heldout-unseen)  # issue 25: unseen edits once more on held-out seed 210 (200 triplets), K = 1 then K = 3
    # (two shells at once); the K = 3 run's triplets are the K = 1 run's, each with two further pairs
    "${BENCH[@]}" --out runs/heldout-unseen-s210 --n 200 --triplet-seed 210 --split unseen \
      --method on-editor:init=encoder --method on-editor:init=zeros,steps=200,weight_decay=1 \
      --method difference-inversion
    "${BENCH[@]}" --out runs/heldout-unseen-k3-s210 --n 200 --triplet-seed 210 --split unseen --examples 3 \
      --method on-editor:init=encoder,steps=0 --method on-editor:init=zeros,steps=200,weight_decay=1 ;;
  dev-unseen-variants)  # issue 25: the fit held nearer D_inter, shrunk harder, or shorter (seed 1, unseen), each
    # paired with dev-examples' K = 1 fit (same triplets, same seeds)
    "${BENCH[@]}" --out runs/dev-unseen-variants-s1 --n 30 --triplet-seed 1 --split unseen \
      --method on-editor:init=zeros,steps=200,weight_decay=1,lambda_clip=20 \
      --method on-editor:init=zeros,steps=200,weight_decay=3 --method on-editor:init=zeros,steps=100,weight_decay=1 ;;
  dev-auto)  # issue 25: both routes on development seed 2 (30 per split), for init="auto"'s tolerance (with
    # dev-split's seed 1: python benchmarks/encoder_check_dev.py)
    "${BENCH[@]}" --out runs/dev-gate-s2 --n 30 --triplet-seed 2 --split all \
      --method on-editor:init=encoder,steps=0 --method on-editor:init=zeros,steps=200,weight_decay=1 ;;
  heldout-auto)  # issue 25: init="auto" (tolerance 0.3) once on held-out seed 220, never drawn, 200 per split
    # (two shells at once), beside the per-pair fit, the encoder's D̃ and the text-to-image route
    "${BENCH[@]}" --out runs/heldout-auto-s220 --n 200 --triplet-seed 220 --split all \
      --method on-editor:init=auto --method on-editor:init=zeros,steps=200,weight_decay=1 \
      --method on-editor:init=encoder,steps=0 --method difference-inversion ;;
  heldout-auto-k3)  # issue 25: the unseen triplets of heldout-auto shown three example pairs (two shells at once);
    # paired with heldout-auto's K = 1 rows of the same methods
    "${BENCH[@]}" --out runs/heldout-auto-k3-s220 --n 200 --triplet-seed 220 --split unseen --examples 3 \
      --method on-editor:init=auto --method on-editor:init=encoder,steps=0 ;;
  dev-t2i-encoder)  # issue 25: a DIFF-token encoder for the text-to-image route (the paper's L_tc, both
    # branches), on the editor's encoder's seen pairs, 3000 steps; then development seed 1, 30 per split
    python benchmarks/t2i_encoder_pairs.py runs/t2i-encoder-pairs
    diffinv encoder train --model "$MODEL" --data runs/t2i-encoder-pairs -o runs/t2i-encoder --steps 3000 --one-way \
      --threads 2 --log-every 250
    rm -rf runs/shapes-t2i-enc && cp -r src/diffinv/shapes/model runs/shapes-t2i-enc
    cp -r runs/t2i-encoder runs/shapes-t2i-enc/diff_encoder
    python -c "import json, pathlib; p = pathlib.Path('runs/shapes-t2i-enc/diffinv.json'); d = json.loads(p.read_text()); \
      d['learned_split'] = 'seen'; p.write_text(json.dumps(d, indent=1))"
    diffinv bench run --model runs/shapes-t2i-enc --threads 1 --quiet --out runs/dev-t2i-encoder-s1 --n 30 \
      --triplet-seed 1 --split all --method difference-inversion --method difference-inversion:init=encoder,steps=0 \
      --method difference-inversion:init=auto ;;
  paper-hard)  # the paper's hard-prompt manner (Sec. 2) against the paper preset's soft tokens, once, seed 170
    "${BENCH[@]}" --out runs/paper-hard-s170 --n 100 --triplet-seed 170 \
      --method paper --method paper:hard_tokens=true ;;
  baselines)  # issue 10: Difference Inversion beside the five baselines of the paper, seed 110
    # (the world fitted in 200 steps then)
    "${BENCH[@]}" --out runs/v2-baselines-s110 --n 100 --triplet-seed 110 --set steps=200 \
      --method difference-inversion --method paper --method copy-b --method sdedit --method instructpix2pix \
      --method analogist --method visii --method dia --method oracle-instruction
    for method in paper sdedit instructpix2pix analogist visii dia; do  # the pairwise protocol, truth as judge
      diffinv bench judge runs/v2-baselines-s110 --against "$method" --judge truth --quiet
    done ;;
  keep)  # a finished run's records into docs/runs/ (small, in git), so that its tables can be rebuilt
    run=${2:?give a run directory}
    mkdir -p "docs/runs/$(basename "$run")"
    cp "$run/run.json" "$run/results.jsonl" "$run/summary.md" "docs/runs/$(basename "$run")/"
    find "$run" -maxdepth 1 -name 'judge-*.md' -exec cp -t "docs/runs/$(basename "$run")/" {} + ;;
  *)
    sed -n 2,9p "$0"
    exit 2 ;;
esac
