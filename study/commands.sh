#!/usr/bin/env bash
# The shipped study (issue: "the assignment at 5 seeds with the fast defaults, plus the
# learning-rate × BN and batch-size × BN sweeps"), every command in the order it is run.
# Each sweep resumes: run this again and completed (or diverged) trials are skipped.
#   bash study/commands.sh [PART...]      parts: assignment seeds mlp-lr cnn-lr mlp-bs batch-stats
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${BNRUN_STUDY_DB:-study/bnrun.db}
bnrun() { .venv/bin/bnrun "$@"; }
parts=("${@:-assignment seeds mlp-lr cnn-lr mlp-bs batch-stats}")
parts=(${parts[*]})

for part in "${parts[@]}"; do
  case $part in
    assignment)  # run ids 1-12: the assignment's 12 trials, so that `bnrun eval --run-id 12` keeps its meaning
      bnrun train --arch mlp,cnn --bn pre,post --seeds 3 --diagnostics --db "$DB" ;;
    seeds)  # 5 seeds of every group, the torch.nn reference included; the MLP first (cheap)
      bnrun train --arch mlp --bn none,pre,post --seeds 5 --diagnostics --db "$DB"
      bnrun train --arch mlp --bn pre,post --bn-impl torch --seeds 5 --diagnostics --db "$DB"
      bnrun train --arch cnn --bn none,pre,post --seeds 5 --diagnostics --db "$DB"
      bnrun train --arch cnn --bn pre,post --bn-impl torch --seeds 5 --diagnostics --db "$DB" ;;
    mlp-lr)  # learning rate × BN: peak learning rates 0.01 to 3 (half-decade steps), 3 seeds
      bnrun train --arch mlp --bn none,pre,post --lr 0.01,0.03,0.1,0.3,1,3 --seeds 3 --db "$DB" ;;
    cnn-lr)  # the same on the CNN, 3 epochs per trial (not the default 10)
      bnrun train --arch cnn --bn none,pre,post --lr 0.01,0.03,0.1,0.3,1,3 --epochs 3 --seeds 3 --db "$DB" ;;
    mlp-bs)  # batch size × BN on the MLP, learning rate fixed at 0.05 for every batch size
      bnrun train --arch mlp --bn none,pre,post --batch-size 16,32,64,128,256,512 --seeds 3 --db "$DB" ;;
    batch-stats)  # prediction with the statistics of each test batch, on the assignment's models
      for id in $(seq 1 12); do
        bnrun eval --run-id "$id" --batch-stats 2,4,8,16,32,64,128,256,512 --db "$DB" > /dev/null
      done ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
