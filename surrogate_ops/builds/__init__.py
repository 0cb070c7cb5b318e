"""Build-time only: a trained surrogate exported to ONNX and compiled with TVM per platform.

Holds `export` (model directory and ONNX graphs, checked against torch), `compile` (TVM builds per
platform, and `compile_registered`, a registered version's build logged to its run), `tuning`
(meta-schedule) and `emulation` (a foreign build run here under QEMU). May import `registry`,
`runtime`, `data`, `models`, `blocks` and below; prediction never imports this package.
"""
