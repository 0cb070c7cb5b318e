#!/usr/bin/env bash
# The bundled surrogates' recipe (issue 31): the data they were fine-tuned on, and the fine-tunes.
# Not part of the tests; about an hour and a half of labeling and two hours of training on 2 cores. Run from an
# empty directory: bash /path/to/benchmarks/bundles.sh /path/to/shared/data/bhive
#
# Data: BHive's three measurement files; generated blocks of every density (forms: LLVM's
# instruction forms, corners: llvm-mca's scheduling corner cases, one set per CPU with its whole
# instruction set); and blocks cut from this machine's libraries and programs and the shared
# libraries of the installed Python packages, except the held-out libraries (HELD_OUT, the ones
# benchmarks/real_code.py reports on), whose blocks are also dropped from the mix wherever else
# they appear. Each CPU's bundle is then fine-tuned from the previous one (the tokenizer upgraded
# to backoff, v2) and gets a new error head.
set -euo pipefail
BHIVE=${1:?usage: bundles.sh BHIVE_DIR}
CPUS=(haswell skylake ivybridge znver2 znver3)
ALL=$(printf -- "--mcpu %s " "${CPUS[@]}")
HELD_OUT='libc.so.6|libcrypto|libgmp|openblas|libdav1d|libsodium'
SITE=$(python -c "import site; print(site.getsitepackages()[0])")
PRETRAINED=$(python -c "import surrogate_ops, pathlib; print(pathlib.Path(surrogate_ops.__file__).parent / 'pretrained')")

# ELF files under 60 MB (llvm-objdump's listing of a bigger one does not fit in memory comfortably),
# each once; small ones give 40 blocks each, the big SIMD-heavy ones 1,500
find /usr/lib/x86_64-linux-gnu /usr/bin /usr/sbin /usr/libexec "$SITE" /usr/lib/llvm-14/lib -type f -size +20k -size -60M \
    \( -name '*.so*' -o -perm -u+x \) 2>/dev/null | xargs -r realpath | sort -u \
  | python -c "import sys; [print(p.strip()) for p in sys.stdin if open(p.strip(), 'rb').read(4) == b'\x7fELF']" > elves.txt
grep -E "$HELD_OUT" elves.txt > heldout.txt || true
grep -v -E "$HELD_OUT|/pillow.libs/" elves.txt > train_elves.txt  # pillow bundles its own codecs: kept out too
python - <<'EOF'
import os
paths = open("train_elves.txt").read().split()
big = [p for p in paths if os.path.getsize(p) >= 3e6 and any(k in p for k in (
    "libx265", "libSvtAv1Enc", "libaom", "libarrow_compute", "libxgboost", "_multiarray_umath", "libonnxruntime.so",
    "libpython3", "_highspy", "kiwisolver", "pyarrow/lib.cpython", "onnx_cpp2py", "libavif", "libtvm_runtime",
    "/usr/bin/perl", "/usr/bin/git", "libwebp", "libprotobuf", "libicui18n", "ft2font", "_imaging", "libgtk",
    "libsystemd", "libparquet", "/usr/bin/gdb", "libz3", "libjpeg", "libpng", "libgcrypt", "libnettle",
    "_sparsetools", "bezierTools", "_fmm_core", "_pydantic_core"))]
open("big.txt", "w").write("\n".join(big))
open("small.txt", "w").write("\n".join(p for p in paths if os.path.getsize(p) < 3e6))
EOF
binaries() { sed 's/^/--binary /' "$1" | tr '\n' ' '; }

surrogate-ops collect --bhive "$BHIVE/hsw.csv" --bhive "$BHIVE/skl.csv" --bhive "$BHIVE/ivb.csv" --generate 40000 $ALL --out x86.parquet
surrogate-ops collect --generate 12000 --generate-seed 1 --density dense $ALL --out dense.parquet
surrogate-ops collect --generate 12000 --generate-seed 2 --density sparse $ALL --out sparse.parquet
surrogate-ops collect --generate 12000 --generate-seed 3 --density unrolled $ALL --out unrolled.parquet
surrogate-ops collect --generate 20000 --generate-seed 5 --density loops $ALL --out loops.parquet
surrogate-ops collect $(binaries big.txt) --per-binary 1500 $ALL --out libs_big.parquet --quiet
surrogate-ops collect $(binaries small.txt) --per-binary 40 $ALL --out libs_small.parquet --quiet
surrogate-ops collect $(binaries heldout.txt) --per-binary 3000 $ALL --out heldout.parquet --quiet
for cpu in "${CPUS[@]}"; do
  surrogate-ops collect --generate 20000 --generate-seed 11 --density corners --mcpu "$cpu" --out "corners-$cpu.parquet" --quiet
  surrogate-ops collect --generate 25000 --generate-seed 12 --density forms --mcpu "$cpu" --out "forms-$cpu.parquet" --quiet
done
python - <<'EOF'
from surrogate_ops.data import datasets
names = ["x86", "dense", "sparse", "unrolled", "loops", "libs_big", "libs_small"] + \
        [f"{k}-{c}" for k in ("corners", "forms") for c in ("haswell", "skylake", "ivybridge", "znver2", "znver3")]
# no block of a held-out library, wherever it came from
print(datasets.combine([f"{n}.parquet" for n in names], "mix.parquet", leave_out=["heldout.parquet"]))
EOF
# round 2's extra data: system and I/O instructions beside ordinary ones, and AVX-512 forms labeled by
# the CPUs whose llvm-mca takes them
python "$(dirname "$0")/system_blocks.py" system.s
surrogate-ops collect --asm system.s $ALL --out system.parquet --quiet
python -c "from surrogate_ops.data import datasets; datasets.collect('forms512.parquet', mcpus='$ALL'.split()[1::2], progress=False,
  generated=datasets.Generated(8000, 13, 'forms', 'skylake-avx512'))"  # slow: a CPU refusing a block bisects its chunk
python - <<'EOF'
from surrogate_ops.data import datasets
names = ["x86", "dense", "sparse", "unrolled", "loops", "libs_big", "libs_small"] + \
        [f"{k}-{c}" for k in ("corners", "forms") for c in ("haswell", "skylake", "ivybridge", "znver2", "znver3")]
names += ["system", "forms512"]
print(datasets.combine([f"{n}.parquet" for n in names], "mix2.parquet", leave_out=["heldout.parquet"]))
EOF

# two fine-tunes side by side, one thread each (a tiny network trains faster so than on two threads):
# round 1 from the previous bundle on mix.parquet (8 epochs at 1e-3), round 2 from round 1's network
# on mix2.parquet (6 epochs at 5e-4), then the error head
finetune() {
  while [ "$#" -gt 0 ]; do
    cpu=$1; minutes=$2; minutes2=$3; shift 3
    cp -r "$PRETRAINED/llvm-mca-$cpu" "previous-$cpu"
    export SURROGATE_OPS_HOME=$PWD/home-$cpu
    surrogate-ops train --data mix.parquet --from "previous-$cpu" --mcpu "$cpu" \
      --epochs 8 --patience 3 --lr 1e-3 --max-minutes "$minutes" --threads 1 --save-dir "net-$cpu" --quiet
    surrogate-ops train --data mix2.parquet --from "net-$cpu" --mcpu "$cpu" \
      --epochs 6 --patience 3 --lr 5e-4 --max-minutes "$minutes2" --threads 1 --save-dir "net2-$cpu" --quiet
    surrogate-ops confidence --model "net2-$cpu" --data mix2.parquet --save-dir "llvm-mca-$cpu" --quiet
  done
}
finetune haswell 13 7 znver2 13 7 ivybridge 13 7 & finetune skylake 13 7 znver3 18 9 & wait

# round 3: SIMD. The SIMD-heavy libraries at 3,000 blocks each (llvm-mca's refusals of AVX-512 split out, not
# bisected) and chains of vector forms per CPU, added to mix2; each round-2 network fine-tuned once more
# with the loops, corner cases, vector chains and SIMD libraries weighted up (train --weight)
grep -E "libx265|libSvtAv1Enc|libaom|libonnxruntime.so|libarrow_compute|_multiarray_umath|libxgboost|libjpeg|libavif|libpng16|libwebp" \
  big.txt > simd.txt
surrogate-ops collect $(binaries simd.txt) --per-binary 3000 $ALL --out simd.parquet --quiet
for cpu in "${CPUS[@]}"; do
  surrogate-ops collect --generate 12000 --generate-seed 14 --density vectors --mcpu "$cpu" --out "vectors-$cpu.parquet" --quiet
done
python -c "from surrogate_ops.data import datasets; import glob
print(datasets.combine(['mix2.parquet', 'simd.parquet'] + sorted(glob.glob('vectors-*.parquet')), 'mix3.parquet', leave_out=['heldout.parquet']))"
WEIGHTS="--weight generated:loops:*=3 --weight generated:corners:*=2 --weight generated:vectors:*=2"
for lib in libx265 libSvtAv1Enc libaom onnxruntime libarrow_compute _multiarray_umath libxgboost libjpeg libavif libpng16 libwebp; do
  WEIGHTS="$WEIGHTS --weight *$lib*=2"
done
round3() {
  for cpu in "$@"; do
    export SURROGATE_OPS_HOME=$PWD/home-$cpu
    surrogate-ops train --data mix3.parquet --from "llvm-mca-$cpu" --mcpu "$cpu" --epochs 6 --patience 3 --lr 3e-4 \
      --max-minutes 10 --threads 1 $WEIGHTS --save-dir "net3-$cpu" --quiet
    surrogate-ops confidence --model "net3-$cpu" --data mix3.parquet --save-dir "llvm-mca3-$cpu" --quiet
  done
}
round3 haswell ivybridge znver2 & round3 skylake znver3 & wait
# round 3b, skylake and znver3 only: two more epochs at 1e-4 with the loops weighted 8x (round 3 left skylake's
# mixed probe and a znver3 classic over 10%); their llvm-mca3b-<cpu> are the bundles
round3b() {
  cpu=$1; export SURROGATE_OPS_HOME=$PWD/home-$cpu
  surrogate-ops train --data mix3.parquet --from "net3-$cpu" --mcpu "$cpu" --epochs 2 --patience 2 --lr 1e-4 \
    --max-minutes 6 --threads 1 ${WEIGHTS/loops:\*=3/loops:*=8} --save-dir "net3b-$cpu" --quiet
  surrogate-ops confidence --model "net3b-$cpu" --data mix3.parquet --save-dir "llvm-mca3b-$cpu" --quiet
}
round3b skylake & round3b znver3 & wait
echo "copy llvm-mca3-<cpu>/ (llvm-mca3b-<cpu> for skylake and znver3) over $PRETRAINED/llvm-mca-<cpu>/ once benchmarks/real_code.py and fidelity.py approve them"
