"""The class-incremental CSL stream: the finest subdomains arrive one at a time, each with its
pool samples and its specialist (`scenario=class_incremental`; docs/design.md).

Arrival t holds only the pool samples of one finest subdomain, in `scenario.order`, and brings
that subdomain's specialist (its finest-level teacher). The stream is cut with the benchmark's
labels, as every class-incremental benchmark is cut; the student never trains on them. The
level-0 generalist is there from the start, and the teachers that have arrived stay available,
frozen; the intermediate levels' teachers take no part.

Each arrival is two train experiences (`ArrivalExperience`), both relabelled by the
co-supervision plugin:

- phase `generalist`: the arrival's samples with the generalist's labels, not routed. The
  student has never seen these classes, so its predictions cannot route them yet (it would
  send them to old specialists and then agree with their wrong labels);
- phase `routed`: the same samples seen through the generalist and every arrived specialist.
  The student of the first phase routes them (with `class_partition`: over the union of the
  arrived specialists' subdomains; a unit no arrived specialist covers stays with the
  generalist), then the denoising, then the training.

`strategy=w2s` trains on the first phases only. `ground_truth_stream` holds the same arrivals
with the pool's true labels (the continual-learning ceiling, a diagnostic). The test stream is
the levels scenario's: one experience per finest subdomain, all of them from the start; so is
the validation stream, where there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream

from csl_avalanche.benchmarks.features import FeatureSet
from csl_avalanche.benchmarks.streams import (
    TeacherExperience,
    finest_subdomain_names,
    finest_test_experiences,
    labelled_dataset,
    validation_streams,
)
from csl_avalanche.core.errors import ConfigError

PHASES = ("generalist", "routed")


@dataclass(frozen=True)
class Arrival:
    """One arriving finest subdomain and what is available once it has arrived."""

    index: int  # its place in the stream
    subdomain: int  # its position in the hierarchy's finest level (and in the test stream)
    samples: torch.Tensor  # [n] the pool rows whose unit (class, or domain) it holds
    teachers: list[int]  # global indices: the generalist, then the arrived specialists in order
    owner: torch.Tensor  # [U] unit -> position in `teachers`; 0, the generalist, if none arrived


def arrival_order(setting: str | Sequence[int], names: Sequence[str], seed: int) -> list[int]:
    """The finest subdomains' positions in arrival order: `hierarchy` (0, 1, ...), `random`
    (a permutation drawn with `seed`), or an explicit list of every position once."""
    count = len(names)
    if setting == "hierarchy":
        return list(range(count))
    if setting == "random":
        return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    order = list(setting)
    if sorted(order) != list(range(count)):
        listed = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
        raise ConfigError(
            f"scenario.order must list each of the {count} finest subdomains once, by position "
            f"({listed}), got {order}; or use hierarchy or random"
        )
    return order


def plan_arrivals(features: FeatureSet, order: Sequence[int]) -> list[Arrival]:
    """One Arrival per finest subdomain, in `order` (positions in the finest level)."""
    hierarchy = features.hierarchy
    if hierarchy.num_levels < 2:
        raise ConfigError(
            "scenario=class_incremental brings one specialist per finest subdomain, but this "
            "hierarchy has only the level-0 generalist; give it a level of specialists"
        )
    finest = hierarchy.teacher_slice(hierarchy.num_levels - 1)
    units = features.units("train")
    teachers, owner = [0], torch.zeros(hierarchy.num_classes, dtype=torch.long)
    arrivals = []
    for index, position in enumerate(order):
        members = list(hierarchy.finest[position])
        samples = torch.isin(units, torch.tensor(members)).nonzero().flatten()
        if not len(samples):
            raise ConfigError(
                f"the transfer pool has no samples of finest subdomain {members}, so its arrival "
                "would be empty; give every finest subdomain pool samples"
            )
        teachers = [*teachers, finest.start + position]
        owner = owner.clone()
        owner[members] = len(teachers) - 1
        arrivals.append(Arrival(index, position, samples, teachers, owner))
    return arrivals


def phase_teachers(arrival: Arrival, phase: str) -> tuple[list[int], torch.Tensor]:
    """The teachers one phase of `arrival` sees, and its owner map: the generalist alone for
    `generalist`; the generalist and every arrived specialist for `routed`."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if phase == "routed":
        return arrival.teachers, arrival.owner
    return [0], torch.zeros_like(arrival.owner)


class ArrivalExperience(TeacherExperience):
    """One phase of an arrival (`generalist` or `routed`) over the arrival's pool samples."""

    def __init__(self, *, features: FeatureSet, arrival: Arrival, phase: str, subdomain: str):
        teachers, owner = phase_teachers(arrival, phase)
        super().__init__(
            features=features,
            teachers=teachers,
            owner=owner,
            routed=phase == "routed",
            stage=arrival.index,
            label=f"arrival {arrival.index} ({subdomain}, {phase})",
            samples=arrival.samples,
        )
        self.arrival = arrival.index
        self.arrived = arrival
        self.subdomain = subdomain
        self.phase = phase

    def rehearsal(self, samples: torch.Tensor, *, routed: bool) -> TeacherExperience:
        """Pool rows `samples` of earlier arrivals seen, whatever this phase, through the
        generalist and every arrived specialist, routed by the student (`routed`), or through
        the generalist alone: what co-supervised replay relabels its buffer with."""
        teachers, owner = phase_teachers(self.arrived, "routed" if routed else "generalist")
        return TeacherExperience(
            features=self.features,
            teachers=teachers,
            owner=owner,
            routed=routed,
            stage=self.stage,
            label=f"{self.label}, rehearsed rows",
            samples=samples,
        )


class GroundTruthArrival(DatasetExperience):
    """An arrival's pool samples with their true labels (the ground-truth diagnostic only)."""

    def __init__(self, *, dataset, arrival: Arrival, subdomain: str):
        super().__init__(dataset=dataset, current_experience=arrival.index)
        self.arrival = self.stage = arrival.index
        self.subdomain = subdomain
        self.label = f"arrival {arrival.index} ({subdomain}, ground truth)"


@dataclass
class ArrivalBenchmark:
    """The class-incremental Avalanche scenario: `train_stream` (two phases per arrival),
    `ground_truth_stream` (one experience per arrival, true labels), `test_stream` (one per
    finest subdomain, in the hierarchy's order, named by `subdomain_names`), `val_stream` (the
    validation split, or None)."""

    scenario: CLScenario
    features: FeatureSet
    arrivals: list[Arrival]
    subdomain_names: list[str]

    @property
    def train_stream(self):
        return self.scenario.train_stream

    @property
    def ground_truth_stream(self):
        return self.scenario.ground_truth_stream

    @property
    def test_stream(self):
        return self.scenario.test_stream

    @property
    def val_stream(self):
        """The validation split's stream, or None without one."""
        return getattr(self.scenario, "val_stream", None)

    def arrived_at(self) -> list[int]:
        """For each finest subdomain (test stream order), the arrival that brings it."""
        at = [0] * len(self.arrivals)
        for arrival in self.arrivals:
            at[arrival.subdomain] = arrival.index
        return at

    def order(self) -> list[str]:
        """The subdomains' names in arrival order."""
        return [self.subdomain_names[arrival.subdomain] for arrival in self.arrivals]


def make_arrival_benchmark(features: FeatureSet, order: Sequence[int]) -> ArrivalBenchmark:
    """The class-incremental stream of `features`' finest subdomains in `order` (positions)."""
    names = finest_subdomain_names(features, features.hierarchy)
    arrivals = plan_arrivals(features, order)
    train, truth = [], []
    for arrival in arrivals:
        name = names[arrival.subdomain]
        train += [
            ArrivalExperience(features=features, arrival=arrival, phase=phase, subdomain=name)
            for phase in PHASES
        ]
        truth_dataset = labelled_dataset(features.train_x, features.train_y, rows=arrival.samples)
        truth.append(GroundTruthArrival(dataset=truth_dataset, arrival=arrival, subdomain=name))
    scenario = CLScenario(
        [
            EagerCLStream("train", train),
            EagerCLStream("ground_truth", truth),
            EagerCLStream("test", finest_test_experiences(features)),
            *validation_streams(features),
        ]
    )
    return ArrivalBenchmark(scenario, features, arrivals, names)


def by_arrival(experiences: Sequence) -> list[list]:
    """Experiences grouped by their `arrival`, in stream order."""
    groups: dict[int, list] = {}
    for experience in experiences:
        groups.setdefault(experience.arrival, []).append(experience)
    return list(groups.values())
