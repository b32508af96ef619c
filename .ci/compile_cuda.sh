#!/usr/bin/env bash
# Compile check of the CUDA kernels of mask2former._C; needs nvcc, no GPU.
#
# Builds the extension with FORCE_CUDA=1 for one GPU architecture into a temporary directory (the source
# tree and the installed package are left alone), then lists the GPU code and each kernel's register and
# spill counts. Exits non-zero on a compile error; exits 0 with a message when nvcc is missing.
# Usage: .ci/compile_cuda.sh [ARCH]   (ARCH default 9.0; PYTHON selects the interpreter, default python)
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-9.0}"
python="${PYTHON:-python}"
cuda_home="${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}"
if [ -x "$cuda_home/bin/nvcc" ]; then
    nvcc="$cuda_home/bin/nvcc"
elif command -v nvcc >/dev/null 2>&1; then
    nvcc="$(command -v nvcc)"
else
    echo "compile_cuda.sh: nvcc not found (looked in $cuda_home/bin and PATH); CUDA compile check skipped"
    exit 0
fi

build_dir="$(mktemp -d)"
trap 'rm -rf "$build_dir"' EXIT
echo "compile_cuda.sh: $("$nvcc" --version | tail -n 1)"
echo "compile_cuda.sh: building mask2former._C for sm_${arch/./} (FORCE_CUDA=1) in $build_dir"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" "$python" setup.py build_ext \
    --build-temp "$build_dir/temp" --build-lib "$build_dir/lib"

library="$(find "$build_dir/lib" -name '_C*.so' | head -n 1)"
if [ -z "$library" ]; then
    echo "compile_cuda.sh: the build produced no _C library" >&2
    exit 1
fi
sections="$(readelf -S "$library")"
if [[ "$sections" != *.nv_fatbin* ]]; then
    echo "compile_cuda.sh: $(basename "$library") holds no GPU code (.nv_fatbin section missing)" >&2
    exit 1
fi
echo "compile_cuda.sh: $(basename "$library") holds GPU code (.nv_fatbin section)"
cuobjdump="$(dirname "$nvcc")/cuobjdump"
if [ -x "$cuobjdump" ] || cuobjdump="$(command -v cuobjdump)"; then
    "$cuobjdump" --list-elf "$library"
    echo "compile_cuda.sh: kernels (registers, spills):"
    "$cuobjdump" --dump-resource-usage "$library" | grep -E "Function|REG" | sed -e 's/^/  /'
else
    echo "compile_cuda.sh: cuobjdump not found; kernel listing skipped"
fi
echo "compile_cuda.sh: CUDA compile check passed"
