"""Benchmarks of retrain-trigger against same-run floors (hello-world functions): ratios only.

Run `python bench/run_all.py` (or `make bench`); each script also runs alone, see its --help.
"""
