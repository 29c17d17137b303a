"""`logagg bench`: the bridge measured against a bare MQTT subscriber in the same run.

Each part runs as its own process (publisher, baseline, bridge, sidecar,
broker), so each one's CPU and memory can be read from /proc; see
BENCHMARKS.md for what is measured and how. The entry point is
`bench.run.run_bench`. Nothing is imported here: `bench.flood` and
`bench.baseline` run as `python -m` in child processes, which should load
only what they use.
"""
