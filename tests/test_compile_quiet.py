"""`compile` says what it built and checked, and TVM adds no warning of ours to it."""

from __future__ import annotations

from surrogate_ops.builds.compile import compile_model
from surrogate_ops.config import PRETRAINED
from surrogate_ops.runtime.modeldir import ModelDir


def test_compile_prints_no_fast_mode_warning(tmp_path, capfd):
    """TVM's frontend turns the embedding lookups into `take` in "fast" mode, and its legalization
    printed "Fast mode segfaults when there are out-of-bounds indices" (from C++, on fd 2) once per
    lookup at every compile; the build now clips, and says nothing."""
    build = compile_model(ModelDir.open(PRETRAINED / "llvm-mca-haswell"), "x86", tmp_path)
    out, err = capfd.readouterr()
    assert build.library == str(tmp_path / "x86.so") and (tmp_path / "x86.so").is_file()
    assert "Fast mode segfaults" not in out + err, err
