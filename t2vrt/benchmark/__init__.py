"""Benchmark harness for `t2vrt bench` and benchmarks/*.py: timing and statistics, the PyTorch eager baseline,
memory sampling, FLOP counts and machine peaks, and the report (terminal table, JSON, PNG)."""
