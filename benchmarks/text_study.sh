#!/usr/bin/env bash
# The WordNet study of docs/text.md: the paper's CSL, w2s, oracle routing and the options beyond
# the paper, then the class-incremental stream; seeds 0, 1, 2; then the reports.
#   apt-get install wordnet-base && pip install '.[text]'
#   OMP_NUM_THREADS=1 bash benchmarks/text_study.sh [key=value ...]
# Each variant is one Hydra multirun in its own folder under multirun/text/wordnet/
# (levels/: the paper's protocol; class-incremental/); extra arguments (e.g. cache_dir=...) go
# to every run.
set -euo pipefail
extra=("$@")
out=multirun/text/wordnet

variant() {  # variant FOLDER OVERRIDE...: one multirun over the seeds
  local folder=$1
  shift
  python -m csl_avalanche.run -m benchmark=wordnet seed=0,1,2 progress=false \
    "hydra.sweep.dir=$out/$folder" "$@" "${extra[@]}"
}

variant levels/csl
variant levels/w2s strategy=w2s
variant levels/oracle strategy=oracle
variant levels/logconf strategy.loss=logconf
variant levels/auto benchmark.hierarchy=auto 'benchmark.auto_levels=[3,6]'
variant levels/posterior strategy.assignment=posterior
variant levels/reassign strategy.reassign_every=2
variant levels/logconf-reassign strategy.loss=logconf strategy.reassign_every=2
variant class-incremental/csl scenario=class_incremental scenario.joint_reference=false
variant class-incremental/csl-replay scenario=class_incremental 'plugins=[replay]'
variant class-incremental/w2s-replay scenario=class_incremental 'plugins=[replay]' strategy=w2s \
  scenario.joint_reference=false
python -m csl_avalanche.evaluation.report "$out/levels"
python -m csl_avalanche.evaluation.report "$out/class-incremental"
python benchmarks/level_diagnostics.py "$out/levels"
