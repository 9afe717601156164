"""`benchmark=domainnet`: `<root>/<domain>/<class>/<image>`, one folder per domain as the
official zips unpack. Subdomains are domains, not classes: one generalist on every domain, then
(optionally) groups of domains, then one specialist per domain, each knowing every class.

Every (domain, class) is split by seed into teacher training, transfer pool and test images; the
test stream has one experience per domain. Teacher assignment by class (`class_partition`) does
not apply: use `strategy.assignment=likelihood` or `kl`.
"""

from __future__ import annotations

import os

import torch

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.image_features import ImageSplits, build_image_feature_set
from csl_avalanche.benchmarks.images import (
    DatasetError,
    ImageFiles,
    require_root,
    scan_class_folders,
    split_images,
)
from csl_avalanche.benchmarks.registry import SourceContext, register_source
from csl_avalanche.benchmarks.settings import DomainNetSettings
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError

WHAT = "benchmark=domainnet"
LAYOUT = "<domain>/<class>/<image> (e.g. clipart/airplane/clipart_001_000001.jpg)"
HOW_TO_GET = (
    "Download the domain zips (clipart.zip, infograph.zip, painting.zip, quickdraw.zip, "
    "real.zip, sketch.zip) from https://ai.bu.edu/M3SDA/ and unzip them all into data.root."
)


def scan_domains(root, domains: list[str] | None) -> tuple[ImageFiles, list[str], list[str]]:
    """All images of the chosen domains, with class labels (sorted union of class folders)
    and domain indices (in `domains` order); returns (images, domain names, class names)."""
    found = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    domains = list(domains) if domains else found
    missing = [d for d in domains if d not in found]
    if not domains or missing:
        raise DatasetError(
            f"{WHAT}: data.root={root} lacks domain folders {missing or '(none found)'}; "
            f"expected {root}/{LAYOUT}. {HOW_TO_GET}"
        )
    scanned = [scan_class_folders(root / d, what=WHAT, how_to_get=HOW_TO_GET) for d in domains]
    classes = sorted({name for names, _, _ in scanned for name in names})
    index = {name: i for i, name in enumerate(classes)}
    paths, labels, domain_of = [], [], []
    for d, (names, files, file_labels) in enumerate(scanned):
        paths += [f"{domains[d]}/{file}" for file in files]
        labels += [index[names[label]] for label in file_labels]
        domain_of += [d] * len(files)
    images = ImageFiles(root, tuple(paths), torch.tensor(labels), domains=torch.tensor(domain_of))
    return images, domains, classes


@register_source("domainnet")
def domainnet_features(settings: DomainNetSettings, context: SourceContext) -> FeatureSet:
    root = require_root(settings.data.root, what=WHAT, layout=LAYOUT, how_to_get=HOW_TO_GET)
    wanted = settings.benchmark.domains or None
    images, domains, classes = scan_domains(root, wanted)
    groups = settings.benchmark.domain_groups or []
    try:
        hierarchy = Hierarchy.from_groups(
            [[domains], *groups, [[d] for d in domains]], len(domains), domains
        )
    except HierarchyError as err:
        raise ConfigError(f"benchmark.domain_groups: {err}") from None
    parts = split_images(
        images,
        settings.benchmark.splits,
        context.seed,
        what="benchmark.splits",
        parts=("teachers", "pool", "test"),
    )
    return build_image_feature_set(ImageSplits(**parts), hierarchy, len(classes), settings, context)
