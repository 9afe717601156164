"""Co-Supervised Learning (weak-to-strong generalisation with a hierarchy of weak teachers) on
Avalanche. The method is described in docs/design.md; the README shows how to run it."""

from pkgutil import extend_path

# `strategies/` and `configs/` sit at the repository's top level and are installed as
# `csl_avalanche.strategies` and `csl_avalanche.configs` (pyproject's package-dir). When Python
# imports this package from a checkout (`python -m ...` run in the repository root) after a
# plain `pip install .`, those two subpackages are found in the installed copy.
__path__ = extend_path(__path__, __name__)
