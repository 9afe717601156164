"""Evaluation: Avalanche plugin metrics (per-subdomain accuracy, PGR, forgetting, the
co-supervision statistics) and the report over finished runs."""
