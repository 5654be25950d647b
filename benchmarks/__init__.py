"""The gmkernels benchmark suite, installed as ``gmkernels.benchmarks``; ``gmk bench`` runs it."""
