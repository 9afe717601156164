"""The CSL stream on Avalanche: train experiences are hierarchy levels, test experiences are
the finest subdomains.

Every dataset here yields `[x, y, target, task]`: `y` the hard label, `target` a probability
vector over classes (the teacher's soft label, or the one-hot of `y`). Train datasets only
ever hold teacher labels; ground truth appears in the test stream and in the separate
`ceiling` stream that trains the ground-truth ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)

from csl_avalanche.data.features import FeatureSet
from csl_avalanche.hierarchy import Hierarchy


def labelled_dataset(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, targets: torch.Tensor | None = None
) -> TaskAwareSupervisedClassificationDataset:
    """An Avalanche dataset of `[x, y, target, task]`; `target` defaults to one-hot(y)."""
    if targets is None:
        targets = F.one_hot(labels, num_classes).float()
    if not len(x) == len(labels) == len(targets):
        raise ValueError(
            f"x, labels and targets disagree in length: {len(x)}, {len(labels)}, {len(targets)}"
        )
    return _make_taskaware_tensor_classification_dataset(
        x, labels, targets, task_labels=0, targets=labels
    )


class LevelExperience(DatasetExperience):
    """The transfer pool seen through one level's teachers.

    Before the level's E-step its dataset holds the pool with the teacher labels routed by the
    generalist's prediction; the co-supervision plugin replaces it with the kept, relabelled
    samples (on the strategy's private copy, so the stream itself stays untouched).
    """

    def __init__(self, *, dataset, level: int, num_teachers: int):
        super().__init__(dataset=dataset, current_experience=level)
        self.level = level
        self.num_teachers = num_teachers

    @property
    def dataset(self):
        return self._dataset

    @dataset.setter
    def dataset(self, value) -> None:
        self._dataset = value


@dataclass
class CSLBenchmark:
    """The Avalanche scenario plus the tensors the co-supervision plugin works on."""

    scenario: CLScenario
    features: FeatureSet
    hierarchy: Hierarchy

    @property
    def train_stream(self):
        return self.scenario.train_stream

    @property
    def test_stream(self):
        return self.scenario.test_stream

    @property
    def ceiling_stream(self):
        return self.scenario.ceiling_stream

    def subdomain_names(self) -> list[str]:
        return [subdomain_name(sub) for sub in self.hierarchy.finest]


def subdomain_name(classes: tuple[int, ...]) -> str:
    return "classes_" + "-".join(str(c) for c in classes)


def generalist_routed_labels(
    features: FeatureSet, hierarchy: Hierarchy, level: int
) -> torch.Tensor:
    """Level `level`'s teacher label for each pool sample, routed by the generalist's argmax.

    This is the student-free default label of a level; CSL's E-step replaces it.
    """
    probs = features.teacher_train_probs
    owner = hierarchy.class_to_teacher(level)[probs[0].argmax(dim=1)]
    teacher = hierarchy.teacher_slice(level).start + owner
    return probs[teacher, torch.arange(probs.shape[1])].argmax(dim=1)


def make_csl_benchmark(features: FeatureSet) -> CSLBenchmark:
    """train_stream: one experience per level; test_stream: one per finest subdomain;
    ceiling_stream: the pool with ground truth (for the ceiling baseline only)."""
    hierarchy = features.hierarchy
    x, c = features.train_x, features.num_classes
    train = [
        LevelExperience(
            dataset=labelled_dataset(x, generalist_routed_labels(features, hierarchy, level), c),
            level=level,
            num_teachers=len(hierarchy.levels[level]),
        )
        for level in range(hierarchy.num_levels)
    ]
    test = []
    for index, classes in enumerate(hierarchy.finest):
        members = torch.isin(features.test_y, torch.tensor(classes))
        if not members.any():
            raise ValueError(f"the test split has no samples of finest subdomain {list(classes)}")
        test.append(
            DatasetExperience(
                dataset=labelled_dataset(features.test_x[members], features.test_y[members], c),
                current_experience=index,
            )
        )
    ceiling = [
        DatasetExperience(dataset=labelled_dataset(x, features.train_y, c), current_experience=0)
    ]
    scenario = CLScenario(
        [
            EagerCLStream("train", train),
            EagerCLStream("test", test),
            EagerCLStream("ceiling", ceiling),
        ]
    )
    return CSLBenchmark(scenario=scenario, features=features, hierarchy=hierarchy)
