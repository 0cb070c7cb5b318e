"""surrogate-ops: neural surrogates of programs.

A surrogate is a network trained on a program's input/output examples that then stands in for the
program: faster (compilation), fine-tuned on measured ground truth (adaptation), or differentiable
so the program's own parameters can be tuned through it (optimization). The first program is
llvm-mca; see `surrogate_ops.programs`.
"""

__version__ = "0.1.0"
