"""The `logagg` command: one console script that runs, feeds and measures the system."""
