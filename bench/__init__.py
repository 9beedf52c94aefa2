"""Latency and throughput of the gateway's two exec paths next to raw `docker exec`, on one engine.

`python -m bench` runs everything and prints one table; `python -m bench --smoke` runs every
variant with a handful of samples and fails only on errors, never on timings.
"""
