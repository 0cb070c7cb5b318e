#!/usr/bin/env bash
# Pack this machine's llvm-mca and llvm-mc with the shared libraries they load, so a machine
# without LLVM (a rented GPU box) can race llvm-mca against the surrogate on its own cores.
#
#   benchmarks/pack_llvm.sh [OUT.tar.xz]          (default: llvm-tools.tar.xz, 37 MB from LLVM 14 on Debian)
#   # there:
#   tar xJf llvm-tools.tar.xz && export PATH=$PWD/llvm-tools/bin:$PATH
#   llvm-mca --version                            # the same LLVM, the same cycles
#
# The C runtime (libc, libm, libstdc++, libgcc_s, the loader) is left out: every Linux has it,
# and mixing a foreign libc into a process breaks it. Everything else ldd lists is copied; each
# tool runs through a wrapper that points LD_LIBRARY_PATH at the copies.
set -euo pipefail

out=${1:-llvm-tools.tar.xz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/llvm-tools/bin" "$work/llvm-tools/lib"
for tool in llvm-mca llvm-mc; do
    path=$(python3 -c "from surrogate_ops.llvm_tools import find_tool; print(find_tool('$tool'))")
    real=$(readlink -f "$path")
    cp "$real" "$work/llvm-tools/lib/$tool"
    ldd "$real" | awk '/=> \// {print $3}' | while read -r lib; do
        case $(basename "$lib") in
            libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|ld-linux*|libdl.so*|libpthread.so*|librt.so*) ;;
            *) cp -n "$(readlink -f "$lib")" "$work/llvm-tools/lib/$(basename "$lib")" ;;
        esac
    done
    cat > "$work/llvm-tools/bin/$tool" <<EOF
#!/bin/sh
here=\$(dirname "\$(readlink -f "\$0")")/../lib
LD_LIBRARY_PATH="\$here\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/$tool" "\$@"
EOF
    chmod +x "$work/llvm-tools/bin/$tool"
done
tar -C "$work" -cJf "$out" llvm-tools
ls -l "$out"
