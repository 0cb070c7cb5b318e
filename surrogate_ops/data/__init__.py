"""Labeled datasets: blocks from `blocks/`, labeled by a program of `programs/`, kept as Parquet.

Holds `datasets` (collect, combine, load, the measured rows of a BHive CSV). May import `blocks`,
`programs` and the shared modules at the package's top (`config`, `errors`, `metrics`, `presets`).
"""
