"""The typed settings a benchmark source takes: one dataclass per config section.

A source receives a `SourceSettings` subclass (its `benchmark`, `data`, `teacher` and
`student` sections) built and checked from the run's config by the experiments floor; every
field carries its rule and one-line description (`core.rules.setting`). A field with a default
may be left out of the shipped configs (`+student.image_size=...` adds it). `SOURCE_SETTINGS`
names each source's settings class, so the settings are checked before any source (or
Avalanche) is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from csl_avalanche.core.clustering import (
    AUTO,
    DEFAULT_HOLDOUT,
    HOLDOUT_KEY,
    LEVELS_KEY,
    AutoHierarchy,
    check_sizes,
)
from csl_avalanche.core.errors import ConfigError
from csl_avalanche.core.hierarchy import Hierarchy, HierarchyError, is_levels
from csl_avalanche.core.rules import (
    BOOLEAN,
    FILE,
    FRACTION,
    FRACTIONS,
    GROUPS,
    LEARNING_RATE,
    NAME,
    NAMES,
    Rule,
    list_of,
    number,
    optional,
    section,
    setting,
    whole,
)
from csl_avalanche.models.sentence_encoder import PREFIX as SENTENCE_TRANSFORMERS

HIERARCHY = Rule(
    f"null, {AUTO}, or a list of levels, each a list of groups of classes (level 0 one group of "
    "all, e.g. [[[0,1,2,3]],[[0,1],[2,3]]])",
    lambda v: v is None or v == AUTO or is_levels(v),
)


# -- benchmark.* -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSettings:
    """`benchmark.*` of every benchmark: its name, how its hierarchy is chosen, and the
    validation split (`benchmarks.validation`)."""

    name: str = setting(NAME, "the benchmark source (the benchmark group's choice)")
    hierarchy: Any = setting(
        HIERARCHY, "the levels as groups of classes; null: the benchmark's own; auto: clustered"
    )
    auto_levels: list[int] | None = setting(
        optional(list_of(whole(2))), "with hierarchy=auto: subdomains per level after level 0"
    )
    auto_holdout: float | None = setting(
        optional(number("in (0, 1)", lambda v: 0 < v < 1)),
        f"with hierarchy=auto: the held-out fraction of the teacher split; null: {DEFAULT_HOLDOUT}",
    )
    val_fraction: float = setting(
        number("in [0, 1)", lambda v: 0 <= v < 1),
        "fraction of each class's pool samples held out for validation; 0: none",
        default=0,
        kw_only=True,
    )

    # Why a benchmark cannot cluster its own subdomains (None: it can).
    no_auto_because = None
    # Where a benchmark's levels come from instead of `benchmark.hierarchy` (None: from it).
    levels_from = None

    def check(self) -> None:
        """`auto_levels` and `auto_holdout` only with `hierarchy=auto`, `auto` only where it can
        work, and a hand-written hierarchy only where the benchmark reads it."""
        if isinstance(self.hierarchy, list) and self.levels_from:
            raise ConfigError(
                f"benchmark={self.name} takes its levels from {self.levels_from}, not from "
                f"benchmark.hierarchy, which it would ignore; drop benchmark.hierarchy"
            )
        if self.hierarchy != AUTO:
            for key, value, what in (
                (LEVELS_KEY, self.auto_levels, "the levels"),
                (HOLDOUT_KEY, self.auto_holdout, "the held-out fraction"),
            ):
                if value is not None:
                    shown = list(value) if isinstance(value, list | tuple) else value
                    raise ConfigError(
                        f"{key}={shown} sets {what} of an automatic hierarchy, but "
                        f"benchmark.hierarchy is not {AUTO}; add benchmark.hierarchy={AUTO} or "
                        f"drop {key}"
                    )
            return
        if self.no_auto_because:
            raise ConfigError(
                f"benchmark.hierarchy={AUTO} groups the classes a trained generalist confuses, "
                f"which benchmark={self.name} cannot do: {self.no_auto_because}; drop "
                f"benchmark.hierarchy={AUTO}"
            )
        if self.auto_levels is None:
            raise ConfigError(
                f"benchmark.hierarchy={AUTO} needs {LEVELS_KEY}, the number of subdomains of "
                f"each level after the generalist, e.g. {LEVELS_KEY}=[2,5]"
            )
        check_sizes(list(self.auto_levels), num_classes=None)

    def given_hierarchy(self, num_classes: int, class_names: Sequence[str] = ()) -> Hierarchy:
        """`benchmark.hierarchy` as the config gives it: groups of class indices, or of
        `class_names` where the benchmark has names."""
        if self.hierarchy is None:
            raise ConfigError(
                f"benchmark={self.name} has no hierarchy of its own: set benchmark.hierarchy to "
                f"levels of groups of its classes 0..{num_classes - 1} (level 0 one group of "
                f"all, e.g. [[[0,1,2,3]],[[0,1],[2,3]]] for 4 classes), or to {AUTO}"
            )
        try:
            return Hierarchy.from_groups(self.hierarchy, num_classes, class_names)
        except HierarchyError as err:
            raise ConfigError(f"benchmark.hierarchy: {err}") from None

    def chosen_hierarchy(
        self, num_classes: int, hand_picked: Callable[[], Hierarchy]
    ) -> Hierarchy | AutoHierarchy:
        """`hierarchy=auto` as an AutoHierarchy over `num_classes` classes, for the source
        to resolve once the teacher data is at hand (its sizes checked now, before anything
        trains); otherwise the benchmark's own `hand_picked` hierarchy."""
        if self.hierarchy != AUTO:
            return hand_picked()
        holdout = DEFAULT_HOLDOUT if self.auto_holdout is None else float(self.auto_holdout)
        return AutoHierarchy(tuple(self.auto_levels), holdout, num_classes)


@dataclass(frozen=True)
class FeaturesBenchmark(BenchmarkSettings):
    no_auto_because = "the features file gives the teachers, and with them the hierarchy"
    levels_from = "the features file (its hierarchy entry)"


@dataclass(frozen=True)
class SplitBenchmark(BenchmarkSettings):
    """A benchmark split by seed into parts of every class."""

    splits: dict[str, float] = setting(FRACTIONS, "fraction of every class in each part")


@dataclass(frozen=True)
class FolderBenchmark(SplitBenchmark):
    teachers_per_level: list[int] = setting(
        list_of(whole(1)), "contiguous blocks of the sorted classes per level (no hierarchy)"
    )


@dataclass(frozen=True)
class ImageNetBenchmark(BenchmarkSettings):
    val_splits: dict[str, float] = setting(FRACTIONS, "fractions of every validation class")
    teacher_fraction: float = setting(FRACTION, "fraction of train images the teachers use")
    teachers_per_level: list[int] = setting(
        list_of(whole(1)), "contiguous blocks of class indices per level (no hierarchy)"
    )


@dataclass(frozen=True)
class Cifar100Benchmark(SplitBenchmark):
    superclass_groups: list = setting(
        GROUPS, "levels between the generalist and the 20 superclasses, as superclass names"
    )
    levels_from = "benchmark.superclass_groups (or benchmark.hierarchy=auto)"


@dataclass(frozen=True)
class DomainNetBenchmark(SplitBenchmark):
    domains: list[str] | None = setting(NAMES, "the domain folders to use; null: all")
    domain_groups: list = setting(
        GROUPS, "levels between the generalist and the per-domain specialists"
    )
    no_auto_because = "its subdomains are input domains (benchmark.domain_groups), not classes"
    levels_from = "benchmark.domain_groups"


@dataclass(frozen=True)
class TextBenchmark(SplitBenchmark):
    """A text benchmark: labelled texts split by seed into teachers, pool and test."""

    max_per_class: int | None = setting(
        optional(whole(1)), "keep at most this many texts of a class (one draw for all seeds)"
    )


@dataclass(frozen=True)
class WordNetBenchmark(TextBenchmark):
    finer_groups: list = setting(
        GROUPS, "levels below verbs | concrete | abstract nouns, as groups of supersense names"
    )


# -- data.* ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSettings:
    path: str | None = setting(FILE, "benchmark=features: the features file")
    root: str | None = setting(FILE, "the dataset's root folder")
    download: bool = setting(BOOLEAN, "fashion_mnist: fetch it with torchvision (network)")


@dataclass(frozen=True)
class ImageDataSettings(DataSettings):
    image_size: int | None = setting(optional(whole(1)), "side of the square crop both models see")
    crop_pct: float | None = setting(
        optional(FRACTION), "resize the shorter side to image_size / crop_pct; null: the model's"
    )
    batch_size: int | None = setting(optional(whole(1)), "images per feature-extraction batch")
    num_workers: int | None = setting(optional(whole(0)), "image decoding processes")


@dataclass(frozen=True)
class TextFileData(DataSettings):
    path: str | None = setting(FILE, "a CSV or JSON lines file, or a folder of <label>/<text file>")
    text_column: str = setting(NAME, "the text's CSV column or JSON key")
    label_column: str = setting(NAME, "the label's CSV column or JSON key")


# -- teacher.* and student.* -------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """A fixed training budget: `steps` Adam steps of `batch_size` examples at `lr`."""

    steps: int = setting(whole(1), "Adam steps")
    batch_size: int = setting(whole(1), "examples per step")
    lr: float = setting(LEARNING_RATE, "Adam's learning rate")


@dataclass(frozen=True)
class PooledTeacher(Budget):
    """A linear teacher on average-pooled pixels, every teacher with the same budget."""

    pool: int = setting(whole(1), "average-pooling factor before the linear layer")


@dataclass(frozen=True)
class PretrainedNetwork:
    """A network by name, with its weights pretrained, from a local file, or random."""

    arch: str = setting(NAME, "the network: a timm name or torchvision:<name>")
    pretrained: bool = setting(BOOLEAN, "load the architecture's pretrained weights")
    checkpoint: str | None = setting(FILE, "a local weights file (offline)")
    image_size: int | None = setting(
        optional(whole(1)),
        "this model's crop side; null: data.image_size",
        default=None,
        kw_only=True,
    )


@dataclass(frozen=True)
class ImageTeacher(PretrainedNetwork, Budget):
    """Linear heads on a frozen pretrained feature stack, every teacher with the same budget."""

    heads: str | None = setting(FILE, "linear heads trained elsewhere, one per teacher")


@dataclass(frozen=True)
class MLPStudent:
    hidden: int = setting(whole(1), "hidden units of the MLP backbone")
    embed_dim: int = setting(whole(1), "embedding size the linear probe reads")
    pretrain: Budget = section("the backbone's pretraining on the disjoint split")


@dataclass(frozen=True)
class CNNStudent:
    channels: list[int] = setting(list_of(whole(1)), "channels of the stride-2 convolutions")
    embed_dim: int = setting(whole(1), "embedding size the linear probe reads")
    pretrain: Budget = section("the backbone's pretraining on the disjoint split")


@dataclass(frozen=True)
class ImageStudent(PretrainedNetwork):
    finetune: bool = setting(BOOLEAN, "train the whole network on images, not a linear probe")


@dataclass(frozen=True)
class TfidfTeacher(Budget):
    """A linear model on TF-IDF vectors, every teacher with the same budget."""

    ngrams: int = setting(whole(1), "word n-grams of 1 up to this many words")
    min_df: int = setting(whole(1), "drop terms found in fewer of the teachers' texts")


SENTENCE_ENCODER = Rule(
    f"{SENTENCE_TRANSFORMERS}<a local model folder or an installed package>",
    lambda v: (
        isinstance(v, str)
        and v.startswith(SENTENCE_TRANSFORMERS)
        and v.removeprefix(SENTENCE_TRANSFORMERS).strip() != ""
    ),
)


@dataclass(frozen=True)
class SentenceStudent:
    """A frozen sentence-transformers encoder; the student is a linear probe on its output."""

    arch: str = setting(SENTENCE_ENCODER, "the encoder: sentence-transformers:<folder or package>")
    batch_size: int = setting(whole(1), "texts per encoding batch")


# -- what a source receives ----------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSettings:
    """The sections a benchmark source reads; subclasses narrow each to its own type."""

    benchmark: BenchmarkSettings = section("which benchmark, and its hierarchy")
    data: DataSettings = section("where the data is")


@dataclass(frozen=True)
class FeaturesSettings(SourceSettings):
    benchmark: FeaturesBenchmark = section("which benchmark, and its hierarchy")


@dataclass(frozen=True)
class DigitsSettings(SourceSettings):
    benchmark: SplitBenchmark = section("which benchmark, its splits and hierarchy")
    teacher: PooledTeacher = section("the weak teachers")
    student: MLPStudent = section("the strong student's backbone")


@dataclass(frozen=True)
class FashionMnistSettings(SourceSettings):
    benchmark: SplitBenchmark = section("which benchmark, its splits and hierarchy")
    teacher: PooledTeacher = section("the weak teachers")
    student: CNNStudent = section("the strong student's backbone")


@dataclass(frozen=True)
class ImageSourceSettings(SourceSettings):
    """An image benchmark: pretrained teacher and student networks on decoded images."""

    data: ImageDataSettings = section("where the images are, and how they are read")
    teacher: ImageTeacher = section("the weak teachers")
    student: ImageStudent = section("the strong student")

    def check(self) -> None:
        if self.benchmark.hierarchy == AUTO and self.teacher.heads:
            raise ConfigError(
                f"benchmark.hierarchy={AUTO} chooses the subdomains before the teachers train, "
                "but teacher.heads gives teachers trained elsewhere for a fixed hierarchy; drop one"
            )


@dataclass(frozen=True)
class ImageFolderSettings(ImageSourceSettings):
    benchmark: FolderBenchmark = section("which benchmark, its splits and hierarchy")


@dataclass(frozen=True)
class ImageNetSettings(ImageSourceSettings):
    benchmark: ImageNetBenchmark = section("which benchmark, its splits and hierarchy")


@dataclass(frozen=True)
class Cifar100Settings(ImageSourceSettings):
    benchmark: Cifar100Benchmark = section("which benchmark, its splits and hierarchy")


@dataclass(frozen=True)
class DomainNetSettings(ImageSourceSettings):
    benchmark: DomainNetBenchmark = section("which benchmark, its domains and splits")


@dataclass(frozen=True)
class TextSourceSettings(SourceSettings):
    """A text benchmark: TF-IDF teachers and a sentence-transformers student on texts."""

    benchmark: TextBenchmark = section("which benchmark, its splits and hierarchy")
    teacher: TfidfTeacher = section("the weak teachers")
    student: SentenceStudent = section("the strong student")


@dataclass(frozen=True)
class WordNetSettings(TextSourceSettings):
    benchmark: WordNetBenchmark = section("which benchmark, its splits and hierarchy")


@dataclass(frozen=True)
class TextFileSettings(TextSourceSettings):
    data: TextFileData = section("where the texts are, and which columns hold what")


# benchmark.name -> the settings its source takes (`registry.register_source` looks them up).
SOURCE_SETTINGS: dict[str, type[SourceSettings]] = {
    "digits": DigitsSettings,
    "fashion_mnist": FashionMnistSettings,
    "features": FeaturesSettings,
    "imagefolder": ImageFolderSettings,
    "imagenet_w2s": ImageNetSettings,
    "cifar100": Cifar100Settings,
    "domainnet": DomainNetSettings,
    "wordnet": WordNetSettings,
    "text_file": TextFileSettings,
}


def source_settings(name: Any) -> type[SourceSettings]:
    """The settings class of the benchmark `name`, or a ConfigError listing the benchmarks."""
    if name not in SOURCE_SETTINGS:
        raise ConfigError(
            f"benchmark.name must be one of {', '.join(sorted(SOURCE_SETTINGS))}, got {name!r}"
        )
    return SOURCE_SETTINGS[name]
