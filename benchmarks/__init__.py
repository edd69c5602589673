"""asit's speed benchmark (`make bench`, benchmarks/bench.py): one module per thing it measures."""
