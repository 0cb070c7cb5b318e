"""Surrogate optimization: llvm-mca's own parameters tuned by descent through a surrogate.

Holds `optimize` (the global knobs, with OpenTuner and Optuna baselines) and `table_search` (the
per-instruction table). May import `training`, `registry`, `runtime`, `data`, `programs` and below.
"""
