"""The cascading-failure lab: `python -m resilience.demo` (needs the `demo` extra)."""
