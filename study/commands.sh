#!/usr/bin/env bash
# The shipped study, every command in the order it is run: the assignment at 5 seeds (the CNN's
# placements at 12), learning-rate × BN and batch-size × BN sweeps, depth × BN and training-set
# size × dropout × BN studies, prediction with batch statistics.
# Each part resumes: run it again and completed (or diverged) trials are skipped.
#   bash study/commands.sh [PART...]
# parts: assignment seeds-mlp seeds-cnn seeds-cnn-rest seeds-cnn-12 mlp-lr cnn-lr mlp-bs batch-stats
#        mlp-depth mlp-depth-lr mlp-reg
# the referee's parts (tagged with --study where they re-run stored options): referee-cnn
#        depth-kaiming depth32-lr ghost reg-matched; its second round: headline-mlp headline-cnn-none
#        placement-robust reg-matched-fit depth32-tuned (each at the commit its comment names, from a worktree of it)
# Every part pins the options whose default depends on the machine or the version (precision,
# fused kernel, memory layout), so that it resumes into the same trials anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${BNRUN_STUDY_DB:-bnrun.db}
# Pinned: --precision fp32 everywhere, --channels-last for the CNN, --fused wherever the custom BN
# trains (the options bnrun refuses where they have no effect: the layout for the MLP, the kernel
# for BN none).
bnrun() { .venv/bin/bnrun "$1" --precision fp32 "${@:2}"; }
evaluate() { .venv/bin/bnrun eval --save "$@"; }
# Two trials at a time, one core each, on a local Ray cluster (2 cores here).
PAR=(--executor ray --cpus-per-trial 1)
parts=("${@:-assignment seeds-mlp mlp-lr mlp-bs cnn-lr batch-stats seeds-cnn}")
parts=(${parts[*]})

for part in "${parts[@]}"; do
  case $part in
    assignment)  # run ids 1-12: the assignment's 12 trials, so that `bnrun eval --run-id 12` keeps its meaning
      bnrun train --channels-last --fused --arch mlp,cnn --bn pre,post --seeds 3 --diagnostics --db "$DB" ;;
    seeds-mlp)  # 5 seeds of every MLP group, the torch.nn reference included
      bnrun train --fused --arch mlp --bn none,pre,post --seeds 5 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --arch mlp --bn pre,post --bn-impl torch --seeds 5 --diagnostics "${PAR[@]}" --db "$DB" ;;
    seeds-cnn)  # the CNN groups; the torch.nn reference and no BN at 3 and 2 seeds (completed by seeds-cnn-rest)
      bnrun train --channels-last --fused --arch cnn --bn pre,post --seeds 5 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --channels-last --arch cnn --bn pre,post --bn-impl torch --seeds 3 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --channels-last --arch cnn --bn none --seeds 2 --diagnostics "${PAR[@]}" --db "$DB" ;;
    seeds-cnn-rest)  # the CNN's torch.nn and no-BN groups to 5 seeds
      bnrun train --channels-last --arch cnn --bn pre,post --bn-impl torch --seeds 5 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --channels-last --arch cnn --bn none --seeds 5 --diagnostics "${PAR[@]}" --db "$DB" ;;
    seeds-cnn-12)  # the CNN's custom placements to 12 seeds: pre − post to a CI of about ±0.1 points
      bnrun train --channels-last --fused --arch cnn --bn pre,post --seeds 12 --diagnostics --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    mlp-depth)  # depth × BN: 1 to 32 hidden layers of 128 units, 10 epochs, learning rate fixed at 0.05
      bnrun train --fused --arch mlp --bn none,pre,post --depth 1,2,4,8,16,32 --width 128 --epochs 10 --seeds 3 \
        --diagnostics --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    mlp-depth-lr)  # at depth 16: would a learning rate of its own change the answer? (0.05 is mlp-depth's)
      bnrun train --fused --arch mlp --bn none,pre,post --depth 16 --width 128 --lr 0.01,0.2,0.5 --epochs 10 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    mlp-reg)  # training-set size × dropout × BN: 2 hidden layers of 128 units, 30 epochs whatever the size
      bnrun train --fused --arch mlp --bn none,pre,post --depth 2 --width 128 --dropout 0,0.3 \
        --train-subset 1000,5000,15000,55000 --epochs 30 --seeds 3 --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    mlp-lr)  # learning rate × BN: peak learning rates 0.003 to 3 (half-decade steps), 3 seeds, 10 epochs
      bnrun train --fused --arch mlp --bn none,pre,post --lr 0.003,0.01,0.03,0.1,0.3,1,3 --epochs 10 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    mlp-bs)  # batch size × BN on the MLP, learning rate fixed at 0.05 for every batch size, 10 epochs
      bnrun train --fused --arch mlp --bn none,pre,post --batch-size 16,32,64,128,256,512 --epochs 10 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    cnn-lr)  # learning rate × BN on the CNN: 2 epochs on the first 10,000 training images
      bnrun train --channels-last --fused --arch cnn --bn none,pre,post --lr 0.01,0.03,0.1,0.3,1,3 --epochs 2 --train-subset 10000 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    referee-cnn)  # the referee's CNN check: the default recipe, custom (fused) and torch.nn × pre, post × 12 seeds,
      # as new trials beside seeds-cnn's (--fused applies to the custom BN; the torch.nn trials run without it)
      bnrun train --channels-last --fused --arch cnn --bn pre,post --bn-impl custom,torch --seeds 12 --study referee-cnn \
        --diagnostics --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    depth-kaiming)  # mlp-depth's grid with He-normal initialization: is the plain MLP's failure at depth its init's?
      bnrun train --fused --arch mlp --bn none,pre,post --depth 1,2,4,8,16,32 --width 128 --epochs 10 --seeds 3 \
        --init kaiming --diagnostics --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    depth32-lr)  # BN at depth 32 with He-normal init: a learning rate of its own, with warm-up (onecycle) and without
      bnrun train --fused --arch mlp --bn pre,post --depth 32 --width 128 --init kaiming \
        --lr 0.005,0.01,0.02,0.05,0.1,0.2,0.5 --schedule onecycle,constant --epochs 10 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    ghost)  # ghost batch norm: statistics over chunks of 8 to 128 examples of each SGD batch of 128, 10 epochs, on
      # 1,000 images and on all; chunks of 128 are the plain trial (on all images, mlp-bs's batch-128 trials)
      bnrun train --fused --arch mlp --bn pre,post --batch-size 128 --ghost-batch 8,16,32,64,128 --epochs 10 \
        --train-subset 1000 --seeds 3 --no-checkpoint "${PAR[@]}" --db "$DB"
      bnrun train --fused --arch mlp --bn pre,post --batch-size 128 --ghost-batch 8,16,32,64,128 --epochs 10 \
        --seeds 3 --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    reg-matched)  # mlp-reg's model trained to the same training loss (0.02), capped at 300 epochs: the gap at matched
      # fit; a constant learning rate, so that where a trial stops does not depend on the cap (onecycle spans the cap)
      bnrun train --fused --arch mlp --bn none,pre,post --depth 2 --width 128 --train-subset 1000,5000 \
        --target-loss 0.02 --epochs 300 --schedule constant --seeds 3 --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    headline-mlp)  # the referee's second round, part 1 (commit 7640316): the MLP headline on one commit, 12 seeds
      bnrun train --fused --arch mlp --bn pre,post --bn-impl custom,torch --seeds 12 --study headline-mlp \
        --diagnostics --no-checkpoint --db "$DB"
      bnrun train --arch mlp --bn none --seeds 12 --study headline-mlp --diagnostics --no-checkpoint --db "$DB" ;;
    headline-cnn-none)  # part 1 (commit 3ab5336): the CNN without BN joins referee-cnn's 12 seeds
      bnrun train --channels-last --arch cnn --bn none --seeds 12 --study referee-cnn --diagnostics --no-checkpoint \
        --db "$DB" ;;
    placement-robust)  # part 3 (commit 570b592): what each placement-robustness claim of study/claims.toml lacks
      for claim in robust-mlp-lr0003 robust-mlp-lr01 robust-mlp-lr1 robust-mlp-ghost8 robust-mlp-batch32 \
                   robust-mlp-batch16; do
        bnrun train --claim "$claim" --fused --no-checkpoint --db "$DB"
      done
      for claim in robust-cnn-lr001 robust-cnn-lr1; do
        bnrun train --claim "$claim" --fused --channels-last --no-checkpoint --db "$DB"
      done ;;
    reg-matched-fit)  # part 2 (commit 5754b12): BN × dropout × batch × data size, each trial to a training loss of
      # 0.35, the lowest round value that every arm of a pilot (5,000 images, dropout 0.3, one seed, 150 epochs)
      # reached: BN after the activation at batch 32 levelled off at 0.28 and BN before it at batch 128 at 0.30; the
      # rate 0.05 × batch/128 (at 0.05 the plain net with dropout at batch 32 never went below 0.72)
      for n in 1000 5000; do
        for b in 32 128; do
          bnrun train --fused --arch mlp --bn none,pre,post --depth 2 --width 128 --dropout 0,0.3 --train-subset $n \
            --batch-size $b --lr "$(python3 -c "print($b * 0.05 / 128)")" --target-loss 0.35 --epochs 600 \
            --schedule constant --seeds 5 --study reg-matched-fit --no-checkpoint --db "$DB"
        done
      done ;;
    depth32-tuned)  # part 4 (commit 5754b12): depth 32, He init, 4 peak rates × 4 schedules that add warm-up,
      # anneal and momentum cycling one at a time, 3 seeds, 10,000 images, 6 epochs
      bnrun train --fused --arch mlp --bn none,pre,post --depth 32 --width 128 --init kaiming --train-subset 10000 \
        --epochs 6 --lr 0.001,0.003,0.01,0.05 --schedule constant,warmup,onecycle-flat,onecycle --seeds 3 \
        --study depth32-tuned --no-checkpoint --db "$DB" ;;
    batch-stats)  # prediction with the statistics of each test batch, on the assignment's models
      for id in $(seq 1 12); do
        evaluate --run-id "$id" --batch-stats 2,4,8,16,32,64,128,256,512 --db "$DB" > /dev/null
      done ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
