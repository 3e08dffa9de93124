#!/usr/bin/env bash
# Rerun every benchmark into docs/results/, then bench/plots.py for the PNGs and docs/results/README.md.
# Each writes its own JSON (commit, versions, machine first) and .md. Not a test: hours on 2 CPU cores, and
# the figures are only comparable on an otherwise idle machine. Times below were measured on this 2-core,
# no-GPU machine (some under load); a GPU machine is faster.
#   bash bench/run_all.sh            # everything (about 4 hours here)
#   bash bench/run_all.sh engine     # only the named ones, in the order given
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 WANDB_MODE=offline
ALL=(search_vs_rft search_quality critic_quality self_improvement engine scaling scaling_publish learner_overhead)
run() {
    echo "== bench/run_all.sh: $1 ($(date -u +%H:%M) UTC)"
    case "$1" in
        search_vs_rft) "$PY" bench/search_vs_rft.py --seeds 0,1 ;;                      # 4 arbor train runs, ~1-2 h
        # on round 6 of search_vs_rft's search run, seed 0 (the loop's recipe), temperatures tuned on dev problems
        search_quality) "$PY" bench/search_quality.py --checkpoint runs/search_vs_rft/search_seed0 --n 200 \
                            --dev-n 80 --budgets 192,384 --tune-budget 192 --sections trained \
                            --methods greedy,sc,bon,mcts,astar ;;                       # ~40 min
        critic_quality) "$PY" bench/critic_quality.py ;;                                  # ~30 min
        self_improvement) "$PY" bench/self_improvement.py ;;                              # ~30 min
        engine) "$PY" bench/engine.py ;;                                                  # a few minutes
        scaling) "$PY" bench/scaling.py ;;                                                # ~20 min, idle machine
        scaling_publish) "$PY" bench/scaling_publish.py ;;                                # a few minutes
        learner_overhead) "$PY" bench/learner_overhead.py ;;                              # ~20 min
        *) echo "bench/run_all.sh: unknown benchmark '$1' (known: ${ALL[*]})" >&2; exit 2 ;;
    esac
}
if [ $# -gt 0 ]; then NAMES=("$@"); else NAMES=("${ALL[@]}"); fi
for name in "${NAMES[@]}"; do
    case " ${ALL[*]} " in *" $name "*) ;; *) echo "bench/run_all.sh: unknown benchmark '$name' (known: ${ALL[*]})" >&2; exit 2 ;; esac
done
for name in "${NAMES[@]}"; do run "$name"; done
"$PY" bench/plots.py
