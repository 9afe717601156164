"""Benchmark sources; importing this package registers the built-in ones."""

from csl_avalanche.benchmarks.sources import (  # noqa: F401 - registers sources
    cifar100,
    digits,
    domainnet,
    fashion_mnist,
    features_file,
    imagefolder,
    imagenet,
    text_file,
    wordnet,
)
