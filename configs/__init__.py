"""Hydra configs of csl-avalanche, installed as a package so `pip install .` carries them."""
