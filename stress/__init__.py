"""The fault and load suite (`make stress`): real workers, beats, Redis and PostgreSQL faults,
with invariants checked from the run history and a write audit. tests/stress runs a
shortened subset in `make test`."""
