"""Platforms that misbehave on purpose, for tests. Imported by workers via PYTHONPATH."""
