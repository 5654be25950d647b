#!/bin/bash
# old/new alternated three times, one thread each, same ops
OPS=actnorm,causal_conv,flows,gated,invconv,logistic_mixture,masked_conv
for round in 1 2 3; do
  for tree in pre10 post10; do
    cd /work/$tree
    start=$(date +%s)
    OMP_NUM_THREADS=1 /work/venv/bin/python -m gmkernels bench --device cpu --quick --ops $OPS --no-plots --repeats 100 --out /work/bench10/$tree-$round > /work/bench10/$tree-$round.log 2>&1
    echo "$tree round $round rc=$? $(( $(date +%s) - start )) s load $(cut -d' ' -f1-3 /proc/loadavg)" >> /work/bench10/progress.txt
  done
done
