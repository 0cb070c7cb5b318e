"""The programs that surrogates imitate, each behind the small `Program` interface.

To add a program, subclass `Program` in a module of its own: declare its parameters, give its
version, and implement a batched `run`. Nothing outside this package starts the program itself.
"""

from surrogate_ops.programs.base import Parameter, Program, Result
from surrogate_ops.programs.llvm_mca import LlvmMca, read_setting
from surrogate_ops.programs.setting import McaSetting

__all__ = ["LlvmMca", "McaSetting", "Parameter", "Program", "Result", "read_setting"]
