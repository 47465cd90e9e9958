"""Benchmarks: every controller against the raw-SQL floor and the naive per-row ORM loop."""
