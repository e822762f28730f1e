"""bnpipe's benchmark suite: `python -m benchmarks` (or `make bench`) writes BENCHMARKS.md."""
