#!/usr/bin/env bash
# The shipped study (issue: "the assignment at 5 seeds with the fast defaults, plus the
# learning-rate × BN and batch-size × BN sweeps"), every command in the order it is run.
# Each sweep resumes: run this again and completed (or diverged) trials are skipped.
#   bash study/commands.sh [PART...]      parts: assignment seeds-mlp seeds-cnn seeds-cnn-rest mlp-lr cnn-lr mlp-bs batch-stats
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${BNRUN_STUDY_DB:-bnrun.db}
bnrun() { .venv/bin/bnrun "$@"; }
# Two trials at a time, one core each, on a local Ray cluster (2 cores here).
PAR=(--executor ray --cpus-per-trial 1)
parts=("${@:-assignment seeds-mlp mlp-lr mlp-bs cnn-lr batch-stats seeds-cnn}")
parts=(${parts[*]})

for part in "${parts[@]}"; do
  case $part in
    assignment)  # run ids 1-12: the assignment's 12 trials, so that `bnrun eval --run-id 12` keeps its meaning
      bnrun train --arch mlp,cnn --bn pre,post --seeds 3 --diagnostics --db "$DB" ;;
    seeds-mlp)  # 5 seeds of every MLP group, the torch.nn reference included
      bnrun train --arch mlp --bn none,pre,post --seeds 5 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --arch mlp --bn pre,post --bn-impl torch --seeds 5 --diagnostics "${PAR[@]}" --db "$DB" ;;
    seeds-cnn)  # the CNN groups; the torch.nn reference and no BN at 3 and 2 seeds (the session's budget)
      bnrun train --arch cnn --bn pre,post --seeds 5 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --arch cnn --bn pre,post --bn-impl torch --seeds 3 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --arch cnn --bn none --seeds 2 --diagnostics "${PAR[@]}" --db "$DB" ;;
    seeds-cnn-rest)  # not run yet: takes the CNN's torch.nn and no-BN groups to 5 seeds (about 40 min here)
      bnrun train --arch cnn --bn pre,post --bn-impl torch --seeds 5 --diagnostics "${PAR[@]}" --db "$DB"
      bnrun train --arch cnn --bn none --seeds 5 --diagnostics "${PAR[@]}" --db "$DB" ;;
    mlp-lr)  # learning rate × BN: peak learning rates 0.003 to 3 (half-decade steps), 3 seeds, 10 epochs
      bnrun train --arch mlp --bn none,pre,post --lr 0.003,0.01,0.03,0.1,0.3,1,3 --epochs 10 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    mlp-bs)  # batch size × BN on the MLP, learning rate fixed at 0.05 for every batch size, 10 epochs
      bnrun train --arch mlp --bn none,pre,post --batch-size 16,32,64,128,256,512 --epochs 10 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    cnn-lr)  # learning rate × BN on the CNN: 2 epochs on the first 10,000 training images
      bnrun train --arch cnn --bn none,pre,post --lr 0.01,0.03,0.1,0.3,1,3 --epochs 2 --train-subset 10000 --seeds 3 \
        --no-checkpoint "${PAR[@]}" --db "$DB" ;;
    batch-stats)  # prediction with the statistics of each test batch, on the assignment's models
      for id in $(seq 1 12); do
        bnrun eval --run-id "$id" --batch-stats 2,4,8,16,32,64,128,256,512 --db "$DB" > /dev/null
      done ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
