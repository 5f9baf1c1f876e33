"""Benchmarks: each module prints its figures and writes ``bench/results/<name>.json``.

Run them from the repository root as modules, e.g. ``.venv/bin/python -m bench.bench_e2e``;
``bench.common`` holds what they share.
"""
