"""The package's floors hold: import-linter's contracts (pyproject.toml) pass, and every
setting of every shipped configuration has a rule and a description."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from hydra import compose, initialize_config_module

from csl_avalanche.core.errors import ConfigError
from csl_avalanche.experiments.schema import described, read_settings

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _package_tree(root: Path) -> Path:
    """The package as it installs (strategies/ inside csl_avalanche/), from this checkout."""
    shutil.copytree(REPO / "csl_avalanche", root / "csl_avalanche")
    shutil.copytree(REPO / "strategies", root / "csl_avalanche" / "strategies")
    shutil.copytree(REPO / "configs", root / "csl_avalanche" / "configs")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )


def test_the_layer_contracts_hold(tmp_path):
    outcome = _lint(_package_tree(tmp_path))
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert "Contracts: 4 kept, 0 broken." in outcome.stdout


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        ("core/hierarchy.py", "import csl_avalanche.experiments.runner",
         "csl_avalanche.core is not allowed to import csl_avalanche.experiments"),
        ("benchmarks/splits.py", "import omegaconf",
         "csl_avalanche.benchmarks is not allowed to import omegaconf"),
        ("experiments/levels.py", "import csl_avalanche.experiments.class_incremental",
         "csl_avalanche.experiments.levels is not allowed to import"),
    ],
)  # fmt: skip
def test_an_import_against_the_floors_breaks_a_contract(tmp_path, module, added, broken):
    root = _package_tree(tmp_path)
    path = root / "csl_avalanche" / module
    path.write_text(path.read_text() + f"\n{added}  # noqa\n")
    outcome = _lint(root)
    assert outcome.returncode != 0
    assert broken in " ".join(outcome.stdout.split())


BENCHMARKS = ("digits", "fashion_mnist", "features", "imagefolder", "imagenet_w2s", "cifar100",
              "domainnet", "wordnet", "text_file")  # fmt: skip
STRATEGIES = {
    "levels": ("csl", "w2s", "oracle", "ensemble"),
    "class_incremental": ("csl", "w2s", "oracle", "ensemble", "ground_truth"),
}
PLUGIN_SETS = (
    [],
    ["replay"],
    ["ewc"],
    ["lwf"],
    ["replay", "ewc", "lwf"],
    ["si", "mas", "agem", "gdumb", "rwalk"],
    ["csl_replay"],
    ["shrink_perturb"],
)
# Every logger, so that every logger's settings are checked (the default's have none).
LOGGERS = "loggers=[tensorboard,text,csv,wandb]"


def _refused(scenario: str, strategy: str, plugins: list[str]) -> bool:
    """Co-supervised replay takes the class-incremental stream and teachers only."""
    return "csl_replay" in plugins and (
        scenario != "class_incremental" or strategy == "ground_truth"
    )


def _combinations():
    """Every benchmark with every scenario and strategy; the plugin sets (whose keys do not
    depend on the benchmark) on the first benchmark only."""
    for benchmark, (scenario, strategies), plugins in itertools.chain(
        itertools.product(BENCHMARKS, STRATEGIES.items(), PLUGIN_SETS[:1]),
        itertools.product(BENCHMARKS[:1], STRATEGIES.items(), PLUGIN_SETS[1:]),
    ):
        # shrink_perturb needs a continual student (class_incremental has one)
        continual = ["strategy.reinit_student=false"] if plugins == ["shrink_perturb"] else []
        for strategy in strategies:
            if _refused(scenario, strategy, plugins):
                continue
            yield [f"benchmark={benchmark}", f"scenario={scenario}", f"strategy={strategy}",
                   f"plugins=[{','.join(plugins)}]", LOGGERS,
                   *(continual if scenario == "levels" else [])]  # fmt: skip


def test_every_setting_of_every_shipped_combination_has_a_rule_and_a_description():
    """Composes every benchmark x scenario x strategy, and every plugin set: each composed leaf is a
    field of the schema (read_settings refuses unknown keys) with a rule and a one-line
    description (described raises on a field without either)."""
    with initialize_config_module("csl_avalanche.configs", version_base="1.3"):
        count = 0
        for overrides in _combinations():
            cfg = compose("config", overrides)
            read_settings(cfg)
            keys = [key for key, _, text in described(cfg) if text and "\n" not in text]
            leaves = _leaves({k: v for k, v in cfg.items() if k != "hydra"})
            assert sorted(leaves) == sorted(keys), overrides
            count += 1
    assert count == 9 * len(BENCHMARKS) + 9 * (len(PLUGIN_SETS) - 1) - 5  # csl_replay: 4 of 9


def _leaves(node, prefix: str = "") -> list[str]:
    """Dotted keys of the config's settings: a mapping is a section, except `splits`-like
    values, which the schema checks whole."""
    from omegaconf import DictConfig

    keys = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        whole_values = ("benchmark.splits", "benchmark.val_splits")
        if isinstance(value, DictConfig | dict) and dotted not in whole_values:
            keys += _leaves(value, f"{dotted}.")
        else:
            keys.append(dotted)
    return keys


def test_an_unknown_key_is_refused():
    with initialize_config_module("csl_avalanche.configs", version_base="1.3"):
        cfg = compose("config", ["+strategy.epoch=3"])
    with pytest.raises(ConfigError, match=r"strategy\.epoch is not a setting; .* epochs"):
        read_settings(cfg)


def test_help_lists_the_groups_and_every_setting_with_its_description():
    from csl_avalanche.run import settings_help

    text = settings_help(["benchmark=cifar100", "plugins=[ewc]"])
    assert "  benchmark  cifar100, digits, domainnet, fashion_mnist, features, imagefolder" in text
    assert (
        "  plugins    agem, csl_replay, ewc, gdumb, lwf, mas, replay, rwalk, shrink_perturb, si"
        in text
    )
    assert "  loggers    csv, tensorboard, text, wandb" in text
    lines = text.splitlines()
    assert any(
        line.startswith("  strategy.epochs=20 ") and "epochs per level" in line for line in lines
    )
    assert any(line.startswith("  benchmark.superclass_groups=") for line in lines)
    assert any(line.startswith("  plugins.ewc.ewc_lambda=100.0 ") for line in lines)
    assert any(line.startswith("  student.arch=vit_small_patch14") for line in lines)
