#!/usr/bin/env bash
# The paper's CSL against each option beyond it, seeds 0, 1 and 2, then the two reports:
#   bash benchmarks/beyond_paper.sh fashion_mnist   (or digits) [key=value ...]
# Each variant is one Hydra multirun in its own folder under multirun/beyond-paper/<benchmark>/
# (options/: the E-step and loss options; hierarchy/: where the subdomains come from); extra
# arguments (e.g. cache_dir=...) go to every run.
set -euo pipefail
benchmark=${1:-fashion_mnist}
shift || true
extra=("$@")
out=multirun/beyond-paper/$benchmark
# The hand-picked sizes, 1 -> 2 -> 5 teachers, as contiguous class blocks.
contiguous='benchmark.hierarchy=[[[0,1,2,3,4,5,6,7,8,9]],[[0,1,2,3,4,5],[6,7,8,9]],[[0,1],[2,3],[4,5],[6,7],[8,9]]]'

variant() {  # variant FOLDER OVERRIDE...: one multirun over the seeds
  local folder=$1
  shift
  python -m csl_avalanche.run -m "benchmark=$benchmark" seed=0,1,2 progress=false \
    "hydra.sweep.dir=$out/$folder" "$@" "${extra[@]}"
}

variant options/paper
variant options/posterior strategy.assignment=posterior
variant options/reassign strategy.reassign_every=1,2
variant options/logconf strategy.loss=logconf
variant options/combined strategy.loss=logconf strategy.reassign_every=2
variant hierarchy/hand-picked
variant hierarchy/auto benchmark.hierarchy=auto 'benchmark.auto_levels=[2,5]'
if [ "$benchmark" != digits ]; then  # digits' hand-picked hierarchy is contiguous blocks
  variant hierarchy/contiguous "$contiguous"
fi
python -m csl_avalanche.evaluation.report "$out/options"
python -m csl_avalanche.evaluation.report "$out/hierarchy"
