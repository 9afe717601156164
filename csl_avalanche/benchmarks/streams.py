"""The CSL stream on Avalanche: train experiences are hierarchy levels, test experiences are
the finest subdomains (class sets, or input domains). Where the features carry a validation
split (`benchmarks.validation`), the `val` stream is one experience holding it, with ground
truth, for evaluation only.

Every dataset here yields `[x, y, task]`, `y` the hard label, or `[x, y, soft_target, task]`
when training on soft labels (a probability vector over classes); with learned teacher weights
a column of sample keys sits before the task (`labelled_dataset`). Train datasets only ever hold
teacher labels; ground truth appears in the test stream and in the separate
`ceiling` stream that trains the ground-truth ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)

from csl_avalanche.benchmarks.columns import COLUMNS, Columns
from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.estep import chunk_rows, level_results
from csl_avalanche.core.hierarchy import Hierarchy


def labelled_dataset(
    x: torch.Tensor,
    labels: torch.Tensor,
    *extra: torch.Tensor | None,
    rows: torch.Tensor | None = None,
) -> TaskAwareSupervisedClassificationDataset:
    """An Avalanche dataset of `[x, y, task]`, or `[x, y, soft_target, task]` with soft targets.

    `extra`: columns between `y` and the task label, where they survive Avalanche's subset,
    concat and replay: the soft targets, then (`strategy.assignment=learned`) the sample keys
    (`training.plugins.learned_weights`); a None is left out. `rows` [n]: the dataset holds
    only these rows of the columns (a level's kept samples, a subdomain's test samples), as an
    Avalanche subset: nothing is copied. The dataset carries its columns (`columns.COLUMNS`), so
    that StudentTemplate's loader gathers batches from them directly.
    """
    columns = [x, labels, *(column for column in extra if column is not None)]
    if len({len(column) for column in columns}) != 1:
        raise ValueError(
            f"x, labels and the other columns disagree in length: {[len(c) for c in columns]}"
        )
    dataset = _make_taskaware_tensor_classification_dataset(*columns, task_labels=0, targets=labels)
    if rows is not None:  # Python ints: Avalanche lists the indices (~1 KB per tensor element)
        dataset = dataset.subset(rows.tolist())
    task = torch.zeros(1, dtype=torch.long).expand(len(x))  # task label 0, without memory
    setattr(dataset, COLUMNS, Columns((*columns, task), rows))
    return dataset


class TeacherExperience(DatasetExperience):
    """Pool samples seen through a set of frozen teachers: what the co-supervision plugin
    relabels.

    `teachers`: global teacher indices (a slice for a level, so that cached outputs are read as
    a view). `owner` [U]: for each unit (class, or domain), the position in `teachers` of the
    teacher that owns it (read by `class_partition` and `oracle` assignment and the assignment
    statistics). `samples`: the pool rows it covers (None: the whole pool). `routed`: the
    previous student routes the samples among the teachers (the E-step, then the denoising);
    otherwise every sample goes to the first teacher and all are kept. `stage`: the row of the
    accuracy matrix its evaluation fills (its level, or its arrival); `label` names it in
    messages.

    Before the E-step its dataset holds the samples with the teacher labels routed by the
    generalist's prediction (`generalist_routed_labels`), computed when first read: CSL never
    reads them, since the co-supervision plugin replaces the dataset with the kept, relabelled
    samples on the copy CSLStrategy trains on (`experience.logging()`), so the stream itself
    stays untouched: the setter is for that copy.
    """

    def __init__(
        self,
        *,
        features: FeatureSet,
        teachers: slice | list[int],
        owner: torch.Tensor,
        routed: bool,
        stage: int,
        label: str,
        samples: torch.Tensor | None = None,
    ):
        super().__init__(dataset=None, current_experience=stage)
        self.features = features
        self.teachers = teachers
        self.owner = owner
        self.routed = routed
        self.stage = stage
        self.label = label
        self.samples = samples
        self.num_teachers = teacher_count(teachers)

    @property
    def dataset(self):
        if self._dataset is None:
            labels = generalist_routed_labels(
                self.features, self.teachers, self.owner, self.samples
            )
            self._dataset = labelled_dataset(pool_inputs(self.features, self.samples), labels)
        return self._dataset

    @dataset.setter
    def dataset(self, value) -> None:
        self._dataset = value


class LevelExperience(TeacherExperience):
    """The whole transfer pool seen through one level's teachers; from level 1 on, the previous
    level's student routes it."""

    def __init__(self, *, features: FeatureSet, level: int):
        hierarchy = features.hierarchy
        super().__init__(
            features=features,
            teachers=hierarchy.teacher_slice(level),
            owner=hierarchy.class_to_teacher(level),
            routed=level > 0,
            stage=level,
            label=f"level {level}",
        )
        self.level = level


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

    @property
    def val_stream(self):
        """The validation split's stream, or None without one."""
        return getattr(self.scenario, "val_stream", None)

    def subdomain_names(self) -> list[str]:
        return finest_subdomain_names(self.features, self.hierarchy)


def subdomain_name(members: tuple[int, ...], kind: str = "classes") -> str:
    return f"{kind}_" + "-".join(str(c) for c in members)


def finest_subdomain_names(features: FeatureSet, hierarchy: Hierarchy) -> list[str]:
    """The names of the finest subdomains, in the hierarchy's (and the test stream's) order."""
    kind = "domains" if features.by_domain else "classes"
    return [subdomain_name(sub, kind) for sub in hierarchy.finest]


def teacher_count(teachers: slice | list[int]) -> int:
    """How many teachers `teachers` names (a level's slice, or a list of global indices)."""
    return teachers.stop - teachers.start if isinstance(teachers, slice) else len(teachers)


def pool_inputs(features: FeatureSet, samples: torch.Tensor | None) -> torch.Tensor:
    """The pool's inputs of the rows `samples` (None: the whole pool, not copied)."""
    return features.train_x if samples is None else features.train_x[samples]


def generalist_routed_labels(
    features: FeatureSet,
    teachers: slice | list[int],
    owner: torch.Tensor,
    samples: torch.Tensor | None = None,
) -> torch.Tensor:
    """The label of one of `teachers` (global indices; `owner`: unit -> position among them)
    for each pool sample of `samples` (None: all), routed by the generalist's argmax.

    This is the student-free default label of a teacher experience; CSL's E-step replaces it.
    With domain subdomains no teacher owns a class: the teacher most likely to give that class
    is chosen. Computed a chunk of rows at a time, like the E-step (the generalist plays the
    student).
    """
    return level_results(
        features,
        teachers,
        lambda rows: features.teacher_probs("train", [0], rows)[0],
        rule="likelihood" if features.by_domain else "class_partition",
        labels="hard",
        criterion="all",
        class_to_teacher=owner,
        samples=samples,
        chunk_size=chunk_rows(teacher_count(teachers) + 1, features.num_classes),
    ).labels


def finest_test_experiences(features: FeatureSet) -> list[DatasetExperience]:
    """One experience per finest subdomain: its test samples with their ground truth."""
    experiences, test_units = [], features.units("test")
    for index, subdomain in enumerate(features.hierarchy.finest):
        members = torch.isin(test_units, torch.tensor(subdomain)).nonzero().flatten()
        if not len(members):
            raise ConfigError(
                f"the test split has no samples of finest subdomain {list(subdomain)}, so its "
                "accuracy cannot be measured; give every finest subdomain test samples"
            )
        experiences.append(
            DatasetExperience(
                dataset=labelled_dataset(features.test_x, features.test_y, rows=members),
                current_experience=index,
            )
        )
    return experiences


def validation_streams(features: FeatureSet) -> list[EagerCLStream]:
    """[the `val` stream: one experience of the validation split with its ground truth], or []
    where the features have no validation split."""
    if not features.has_validation:
        return []
    dataset = labelled_dataset(features.val_x, features.val_y)
    return [EagerCLStream("val", [DatasetExperience(dataset=dataset, current_experience=0)])]


def make_csl_benchmark(features: FeatureSet) -> CSLBenchmark:
    """train_stream: one experience per level; test_stream: one per finest subdomain;
    ceiling_stream: the pool with ground truth (for the ceiling baseline only); val_stream
    (where the features have a validation split): the validation split."""
    hierarchy = features.hierarchy
    x = features.train_x
    train = [
        LevelExperience(features=features, level=level) for level in range(hierarchy.num_levels)
    ]
    ceiling = [
        DatasetExperience(dataset=labelled_dataset(x, features.train_y), current_experience=0)
    ]
    scenario = CLScenario(
        [
            EagerCLStream("train", train),
            EagerCLStream("test", finest_test_experiences(features)),
            EagerCLStream("ceiling", ceiling),
            *validation_streams(features),
        ]
    )
    return CSLBenchmark(scenario=scenario, features=features, hierarchy=hierarchy)
