"""`python -m csl_avalanche.reproduce NAME`: rerun a published table and compare its numbers.

Every table of measured numbers in README.md and docs/ has an entry in the manifest
(`csl_avalanche/reproduce.yaml`, shipped with the package so that this works after a plain
`pip install .`; format and how to add an entry: docs/reproduce.md). An entry names the doc
table it backs, the commands that measured it, the numbers it shows, a tolerance, the machine
and the date. This module runs an entry's commands in a fresh folder (`--out DIR/NAME`), reads
the numbers back (from the runs' results.json files, mean ± sample standard deviation over the
runs a row selects, as the report computes them; or from what a command printed) and prints
expected against measured, pass or FAIL per number. A number passes when it is within the
entry's tolerance of the shown one, plus half a unit of the shown number's last digit (a
tolerance of 0: it rounds to what the doc shows). Exit code 0: every number passed; 1: some
did not or a command failed; 2: a usage error (an unknown name, an entry whose data this
machine lacks, an output folder in use).

`--check-docs` (from a clone) checks the docs against the manifest without running anything:
every entry's numbers are the ones its doc table shows, and every table in README.md and
docs/*.md is covered by an entry or listed in the manifest as holding no measurements.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from csl_avalanche.core.errors import ConfigError, refuse
from csl_avalanche.evaluation.report import RESULTS, mean_spread, read_run

MANIFEST = Path(__file__).with_name("reproduce.yaml")
# The repository, when this module runs from a clone (the benchmark scripts and the docs live
# there, not in the installed package).
REPOSITORY = Path(__file__).resolve().parents[1]
CHEAP_SECONDS = 120
SHOWN = re.compile(r"(-?\d+(?:\.\d+)?)(?:\s*±\s*(\d+(?:\.\d+)?))?")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
WORDNET = Path("/usr/share/wordnet")


@dataclass(frozen=True)
class Shown:
    """A number as a doc shows it: `0.388`, `30.4 ± 8.0` (mean ± std), `−29.9 ± 9.3`."""

    text: str

    def parts(self) -> tuple[float, float | None, int]:
        """(mean, std or None, decimals of the last shown digit)."""
        plain = self.text.replace("−", "-").replace("**", "").strip()
        match = SHOWN.match(plain)
        if not match:
            raise ConfigError(f"the manifest shows {self.text!r}, which is not a number")
        decimals = len(match.group(1).partition(".")[2])
        std = float(match.group(2)) if match.group(2) else None
        return float(match.group(1)), std, decimals


@dataclass
class Number:
    """One shown number of an entry and where its measurement comes from."""

    where_shown: str  # `row | column`, or the inline text
    shown: Shown
    source: dict  # {"key": dotted results.json path} or {"output": regex}, plus "tolerance"
    runs: str  # folder below the entry's folder whose results.json files are read
    select: dict  # config settings a run must have to count (dotted key -> value)
    scale: float


@dataclass
class Measured:
    number: Number
    mean: float | None
    std: float | None
    passed: bool


@dataclass
class Entry:
    """One table (or printed block) of a doc page, as the manifest describes it."""

    name: str
    spec: dict = field(repr=False)

    @property
    def cost_s(self) -> float:
        return float(self.spec["cost_s"])

    @property
    def cheap(self) -> bool:
        return self.cost_s <= CHEAP_SECONDS

    def commands(self) -> list[str]:
        repo = str(REPOSITORY)
        return [command.replace("{repo}", repo) for command in self.spec["commands"]]

    def missing(self) -> list[str]:
        """What this entry needs that this machine lacks, each said with how to get it."""
        return [why for need in self.spec.get("needs", []) if (why := _lacks(need))]

    def numbers(self) -> Iterator[Number]:
        columns = self.spec.get("columns", {})
        for row in self.spec.get("rows", []):
            ident = str(row.get("id", row["label"]))
            for column, shown in zip(columns, row["shown"], strict=True):
                if shown in (None, ""):
                    continue
                source = _source(row.get("keys", {}).get(column, columns[column]), ident)
                yield self._number(f"{row['label']} | {column}", shown, source, row)
        for item in self.spec.get("inline", []):
            shown = _inline_shown(item)
            kind = "key" if "key" in item else "output"
            sources = item[kind] if isinstance(item[kind], list) else [item[kind]]
            for index, (number, source) in enumerate(zip(shown, sources, strict=True)):
                where = _fill(item["text"], [*shown[:index], "{}", *shown[index + 1 :]])
                where = f"{item['doc']}: {where}" if "doc" in item else where
                yield self._number(where, number, {kind: source}, item)

    def _number(self, where: str, shown: str, source: dict, part: dict) -> Number:
        return Number(
            where_shown=where,
            shown=Shown(str(shown)),
            source={"tolerance": self.spec["tolerance"], **source},
            runs=part.get("runs", self.spec.get("runs", ".")),
            select=part.get("where", {}),
            scale=float(self.spec.get("scale", 1)),
        )


def _inline_shown(item: dict) -> list[str]:
    """An inline item's shown numbers, one per `{}` of its text."""
    shown = item.get("shown", [])
    shown = shown if isinstance(shown, list) else [shown]
    return [str(number) for number in shown]


def _fill(text: str, shown: list[str]) -> str:
    """`text` with its `{}` replaced by the shown numbers, in order."""
    first, *rest = text.split("{}")
    return first + "".join(number + after for number, after in zip(shown, rest, strict=True))


def _source(spec: str | dict, ident: str) -> dict:
    """A number's source with the row's id put in: a results.json key, or an output regex."""
    spec = {"key": spec} if isinstance(spec, str) else spec
    return {
        k: v.replace("{id}", ident) if isinstance(v, str) else v
        for k, v in spec.items()
        if k in ("key", "output", "tolerance")
    }


def _lacks(need: str) -> str | None:
    """Why this machine cannot run what needs `need`, or None if it can."""
    if need == "repository":
        if (REPOSITORY / "benchmarks").is_dir():
            return None
        return "the repository's benchmarks/ scripts (run it from a clone)"
    if need == "fashion-mnist":
        if FASHION_MNIST.is_dir():
            return None
        return f"Fashion-MNIST in {FASHION_MNIST} (apt-get install dataset-fashion-mnist)"
    if need == "wordnet":
        if WORDNET.is_dir() and importlib.util.find_spec("sentence_transformers"):
            return None
        return (
            f"WordNet in {WORDNET} and the text extra "
            "(apt-get install wordnet-base; pip install '.[text]')"
        )
    if need == "cuda":
        import torch

        return None if torch.cuda.is_available() else "a CUDA GPU"
    if need == "optuna":
        if _importable("hydra_plugins.hydra_optuna_sweeper"):
            return None
        return "Hydra's Optuna sweeper (pip install '.[tune]')"
    raise ConfigError(
        f"the manifest names an unknown need {need!r}; "
        "use repository, fashion-mnist, wordnet, optuna or cuda"
    )


def _importable(module: str) -> bool:
    """Whether `module` (dotted) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not installed
        return False


def load_manifest(path: Path = MANIFEST) -> dict[str, Entry]:
    """The manifest's entries by name, in its order."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable manifest ({err})") from None
    try:
        entries = {name: Entry(name, spec) for name, spec in data["entries"].items()}
    except (TypeError, AttributeError, KeyError):
        raise ConfigError(f"{path}: not a manifest (no `entries:` of named entries)") from None
    for entry in entries.values():
        if fault := _fault(entry.spec):
            raise ConfigError(f"{path}: entry {entry.name}: {fault}")
    return entries


REQUIRED = ("title", "doc", "section", "table", "commands", "cost_s", "needs", "machine",
            "measured", "tolerance")  # fmt: skip


def _fault(spec: dict) -> str | None:
    """What an entry of the manifest lacks or holds malformed (docs/reproduce.md), or None."""
    if missing := [key for key in REQUIRED if key not in spec]:
        return f"no {', '.join(missing)}"
    for row in spec.get("rows", []):
        if len(row.get("shown", [])) != len(spec.get("columns", {})):
            return (
                f"row {row.get('label')!r} shows {len(row.get('shown', []))} numbers for "
                f"{len(spec.get('columns', {}))} columns"
            )
    shown = [s for row in spec.get("rows", []) for s in row["shown"] if s not in (None, "")]
    for item in spec.get("inline", []):
        kind = item.get("key", item.get("output"))
        sources = kind if isinstance(kind, list) else [kind]
        if not item.get("text", "").count("{}") == len(_inline_shown(item)) == len(sources):
            return f"inline {item.get('text')!r}: not one shown number and one source per {{}}"
        shown += _inline_shown(item)
    for text in shown:
        if not SHOWN.match(str(text).replace("−", "-").strip()):
            return f"shows {text!r}, which is not a number"
    return None


def not_measured(path: Path = MANIFEST) -> list[dict]:
    """The manifest's list of doc tables that hold no measurements."""
    return yaml.safe_load(path.read_text()).get("not_measured", [])


# --- running and measuring ---------------------------------------------------------------


def run_entry(entry: Entry, folder: Path) -> tuple[str, str | None]:
    """Run the entry's commands in `folder`, each logged to `command-<i>.log`, with `python`
    this interpreter; (their joined stdout, the first failure or None)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    printed = []
    for index, command in enumerate(entry.commands(), 1):
        print(f"[{entry.name}] $ {command}", flush=True)
        log = folder / f"command-{index}.log"
        done = subprocess.run(
            command, shell=True, executable="/bin/bash", cwd=folder, env=env,
            capture_output=True, text=True,
        )  # fmt: skip
        log.write_text(done.stdout + done.stderr)
        printed.append(done.stdout)
        if done.returncode != 0:
            return "".join(printed), f"command {index} exited with {done.returncode} (log: {log})"
    return "".join(printed), None


def measure(number: Number, folder: Path, printed: str) -> Measured:
    """The number as this run measured it, and whether it is within tolerance of the shown one."""
    if "output" in number.source:
        found = re.search(number.source["output"], printed, re.MULTILINE)
        values = [float(found.group(found.lastindex or 0))] if found else []
    else:
        values = [
            value
            for run in _runs(folder / number.runs, number.select)
            if (value := _at(run, number.source["key"])) is not None
        ]
    if not values:
        return Measured(number, None, None, False)
    mean, std = mean_spread([v * number.scale for v in values])
    expected, expected_std, decimals = number.shown.parts()
    slack = _tolerance(number.source["tolerance"], expected) + 0.5 * 10**-decimals + 1e-9
    passed = abs(mean - expected) <= slack
    if expected_std is not None:
        passed = passed and abs(std - expected_std) <= slack
    return Measured(number, mean, std if expected_std is not None else None, passed)


def _tolerance(tolerance: float | str, expected: float) -> float:
    """An absolute tolerance, in the shown units; `"20%"` is relative to the shown number."""
    if isinstance(tolerance, str) and tolerance.endswith("%"):
        return abs(expected) * float(tolerance[:-1]) / 100
    return float(tolerance)


def _runs(root: Path, select: dict) -> Iterator[dict]:
    """The runs below `root` whose configuration has every selected setting."""
    for path in sorted(root.rglob(RESULTS)):
        run, settings = read_run(path)
        if all(settings.get(key) == str(value) for key, value in select.items()):
            yield run


def _at(run: dict, key: str) -> float | None:
    """The value at a dotted path (`levels.-1.pgr`) of a results.json; None where absent."""
    value = run
    for part in key.split("."):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return value if isinstance(value, int | float) else None


def format_measured(measured: Measured) -> str:
    if measured.mean is None:
        return "missing"
    _, _, decimals = measured.number.shown.parts()
    text = f"{measured.mean:.{decimals}f}"
    return text if measured.std is None else f"{text} ± {measured.std:.{decimals}f}"


def reproduce(entry: Entry, folder: Path, check_only: bool) -> bool:
    """Run (unless `check_only`) and check one entry; print its comparison; True if all pass."""
    printed, failure = "", None
    if check_only:
        if not folder.is_dir():
            raise ConfigError(f"{folder} does not exist; run the entry without --check-only first")
        printed = "".join(p.read_text() for p in sorted(folder.glob("command-*.log")))
    else:
        printed, failure = run_entry(entry, folder)
    results = [measure(number, folder, printed) for number in entry.numbers()]
    spec = entry.spec
    print(f"\n{entry.name}: {spec['doc']}, {spec['section']!r} (measured {spec['measured']} on "
          f"{spec['machine']}; tolerance {spec['tolerance']})")  # fmt: skip
    width = max(len(r.number.where_shown) for r in results)
    print(f"  {'number':<{width}}  {'expected':>16}  {'measured':>16}")
    for result in results:
        verdict = "pass" if result.passed else "FAIL"
        print(
            f"  {result.number.where_shown:<{width}}  {result.number.shown.text:>16}  "
            f"{format_measured(result):>16}  {verdict}"
        )
    passed = sum(r.passed for r in results)
    if failure:
        print(f"  FAIL: {failure}")
    print(f"{entry.name}: {passed} of {len(results)} numbers pass")
    return failure is None and passed == len(results)


# --- the docs against the manifest ------------------------------------------------------


def doc_section(text: str, heading: str) -> list[str]:
    """The lines under the heading `heading` (its text without #), up to the next heading."""
    lines, inside, in_code = [], False, False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and line.startswith("#"):
            if inside:
                break
            inside = line.lstrip("#").strip() == heading
        elif inside:
            lines.append(line)
    if not inside and not lines:
        raise ConfigError(f"no heading {heading!r}")
    return lines


def doc_table(lines: list[str], header: str, occurrence: int = 1) -> list[list[str]]:
    """A table as rows of cells, header first: the `occurrence`-th (from 1) markdown table whose
    first header cell is `header`, or the table in a code block (a command's output, cells split at
    whitespace) whose header line starts with `header`."""
    start = _table_start(lines, header, occurrence)
    markdown = lines[start].startswith("|")
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.startswith("```") or (markdown and not line.startswith("|")):
            break
        cells = _markdown_cells(line) if markdown else line.split()
        if not all(set(c) <= set("-: ") for c in cells):  # a separator line
            rows.append([c.replace("**", "") for c in cells])
    return rows


def _table_start(lines: list[str], header: str, occurrence: int) -> int:
    """The index of the table's header line (doc_table)."""
    in_code, seen, previous = False, 0, ""
    for index, line in enumerate(lines):
        in_code ^= line.startswith("```")
        starts = line.startswith("|") and not previous.startswith("|")
        if (starts and _markdown_cells(line)[0] == header) or (
            in_code and header and line.startswith(header)
        ):
            seen += 1
            if seen == occurrence:
                return index
        previous = line
    number = f" (number {occurrence})" if occurrence > 1 else ""
    raise ConfigError(f"no table starting {header!r}{number}")


def _markdown_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def doc_mismatches(entry: Entry, docs: Path) -> list[str]:
    """Where the doc page shows another number than the entry (empty: they agree)."""
    spec = entry.spec
    faults = []
    try:
        section = doc_section((docs / spec["doc"]).read_text(), spec["section"])
        if "columns" in spec:
            table = doc_table(section, spec["table"], spec.get("occurrence", 1))
            faults += _row_mismatches(spec, table)
    except ConfigError as err:
        return [f"{entry.name}: {spec['doc']}: {err}"]
    for item in spec.get("inline", []):
        doc = item.get("doc", spec["doc"])
        lines = doc_section((docs / doc).read_text(), item.get("section", spec["section"]))
        wanted = _fill(item["text"], _inline_shown(item))
        if wanted not in " ".join(" ".join(lines).split()):
            faults.append(f"{entry.name}: {doc} does not say {wanted!r}")
    return faults


def _row_mismatches(spec: dict, table: list[list[str]]) -> list[str]:
    head, faults = table[0], []
    for row in spec["rows"]:
        found = [cells for cells in table[1:] if cells[0] == row["label"]]
        occurrence = row.get("occurrence", 1)  # rows may share a first cell
        if len(found) < occurrence:
            faults.append(f"{spec['doc']}: table {spec['table']!r} has no row {row['label']!r}")
            continue
        for column, shown in zip(spec["columns"], row["shown"], strict=True):
            if column not in head:
                faults.append(f"{spec['doc']}: table {spec['table']!r} has no column {column!r}")
                continue
            cell = found[occurrence - 1][head.index(column)]
            if shown is not None and not (cell == str(shown) or cell.startswith(f"{shown} ")):
                faults.append(
                    f"{spec['doc']}: row {row['label']!r}, column {column!r} shows {cell!r}, "
                    f"the manifest {shown!r}"
                )
    return faults


def doc_tables(text: str) -> Iterator[tuple[str, str, int]]:
    """(section, header start, occurrence) of every markdown table of a page, and of every
    table a run printed (the levels table in a code block); occurrence counts, from 1, the
    tables of the section with that header (a section may hold one per benchmark)."""
    section, in_code, previous = "", False, ""
    seen: dict[str, int] = {}
    for line in text.splitlines():
        header = None
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            section, seen = line.lstrip("#").strip(), {}
        elif not in_code and line.startswith("|") and not previous.startswith("|"):
            header = _markdown_cells(line)[0]
        elif in_code and line.startswith("level teachers teacher_acc"):
            header = "level teachers teacher_acc"
        if header is not None:
            seen[header] = seen.get(header, 0) + 1
            yield section, header, seen[header]
        previous = line


def uncovered_tables(entries: dict[str, Entry], docs: Path, manifest: Path = MANIFEST) -> list[str]:
    """The tables of README.md and docs/*.md that no entry backs and the manifest does not
    list as holding no measurements."""
    tables = [*(e.spec for e in entries.values()), *not_measured(manifest)]
    known = {(t["doc"], t["section"], t["table"], t.get("occurrence", 1)) for t in tables}
    pages = [docs / "README.md", *sorted((docs / "docs").glob("*.md"))]
    return [
        f"{page.relative_to(docs)}: {section!r}, table {header!r}"
        + (f" (number {occurrence})" if occurrence > 1 else "")
        for page in pages
        for section, header, occurrence in doc_tables(page.read_text())
        if (str(page.relative_to(docs)), section, header, occurrence) not in known
    ]


def check_docs(entries: dict[str, Entry], manifest: Path) -> list[str]:
    """Every disagreement between the docs of this clone and the manifest."""
    if not (REPOSITORY / "docs").is_dir():
        raise ConfigError("--check-docs reads the docs of a clone; run it from the repository")
    faults = [fault for entry in entries.values() for fault in doc_mismatches(entry, REPOSITORY)]
    uncovered = uncovered_tables(entries, REPOSITORY, manifest)
    return faults + [f"not in the manifest: {table}" for table in uncovered]


# --- the command line --------------------------------------------------------------------


def list_entries(entries: dict[str, Entry]) -> None:
    for entry in entries.values():
        cost = "cheap" if entry.cheap else "long"
        needs = "; ".join(entry.missing())
        print(
            f"{entry.name:<34} ~{_duration(entry.cost_s):>7} {cost:<5} "
            f"{entry.spec['doc']}: {entry.spec['section']}"
            + (f"  [cannot run here: needs {needs}]" if needs else "")
        )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{math.ceil(seconds / 60)} min"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="the entries to reproduce (see --list)")
    parser.add_argument("--list", action="store_true", help="list the entries, cost and needs")
    parser.add_argument("--all", action="store_true", help="every entry this machine can run")
    parser.add_argument("--cheap", action="store_true",
                        help=f"with --all: only entries of at most {CHEAP_SECONDS} s")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("reproduce-runs"),
                        help="each entry runs in OUT/NAME (default: ./reproduce-runs)")  # fmt: skip
    parser.add_argument("--check-only", action="store_true",
                        help="run nothing: check the runs already in OUT/NAME")  # fmt: skip
    parser.add_argument("--check-docs", action="store_true",
                        help="run nothing: check the docs against the manifest")  # fmt: skip
    parser.add_argument("--manifest", type=Path, default=MANIFEST,
                        help="another manifest (default: the package's)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        entries = load_manifest(args.manifest)
        if args.list:
            list_entries(entries)
            return
        if args.check_docs:
            faults = check_docs(entries, args.manifest)
            print("\n".join(faults) or f"the docs agree with the manifest ({len(entries)} entries)")
            raise SystemExit(1 if faults else 0)
        chosen = _choose(entries, args)
        if not args.check_only:
            _check_empty([args.out / entry.name for entry in chosen])
    except ConfigError as err:
        refuse(err)
    outcomes = []
    for entry in chosen:
        try:
            outcomes.append(reproduce(entry, args.out / entry.name, args.check_only))
        except ConfigError as err:  # a results.json that cannot be read
            refuse(ConfigError(f"{entry.name}: {err}"))
    failed = [entry.name for entry, ok in zip(chosen, outcomes, strict=True) if not ok]
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} entries reproduced"
          + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    raise SystemExit(1 if failed else 0)


def _check_empty(folders: list[Path]) -> None:
    """Refuse, before running anything, an output folder that holds files: its old runs would
    be counted with the new ones."""
    for folder in folders:
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(
                f"{folder} is not empty; remove it, give another --out, or add --check-only to "
                "check the runs already there"
            )


def _choose(entries: dict[str, Entry], args: argparse.Namespace) -> list[Entry]:
    """The entries to run: those named (each one this machine can run), or with --all every
    one it can run (with --cheap, the cheap ones), saying which it skips and why."""
    if args.all == bool(args.names):
        raise ConfigError("give entry names or --all (see --list)")
    if args.all:
        chosen = []
        for entry in entries.values():
            if args.cheap and not entry.cheap:
                continue
            if missing := entry.missing():
                print(f"skipping {entry.name}: needs {'; '.join(missing)}")
            else:
                chosen.append(entry)
        return chosen
    if unknown := [name for name in args.names if name not in entries]:
        raise ConfigError(
            f"no entry named {', '.join(unknown)}; the entries are {', '.join(entries)}"
        )
    for name in args.names:
        if missing := entries[name].missing():
            raise ConfigError(f"{name} cannot run here: it needs {'; '.join(missing)}")
    return [entries[name] for name in args.names]


if __name__ == "__main__":
    main()
