"""Benchmarks: `python -m benchmarks` runs every benchmarks/bench_*.py main() in turn."""
