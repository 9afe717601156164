"""Benchmarks: the features format and its checks, the data sources that build it (teachers
trained, embeddings extracted), and the Avalanche streams built from it (levels, arrivals,
and the adapter for any Avalanche benchmark)."""
