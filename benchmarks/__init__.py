"""Benchmarks: correctness first, then timings; each prints a table and writes JSON."""
