#!/usr/bin/env bash
# Build llama.cpp's CPU tools (llama-bench, llama-completion, llama-simple, llama-quantize) for the
# llama.cpp column of scripts/benchmark.py.
#
# The sources come from the llama-cpp-python sdist on PyPI (its vendor/llama.cpp is a pinned llama.cpp
# commit; the sdist's CHANGELOG.md names it), so the build needs only a package registry, no GitHub.
#
# Usage:  scripts/build_llama_cpp.sh [VERSION] [SRC_DIR] [BUILD_DIR]
#   VERSION    llama-cpp-python version (default 0.3.36 = llama.cpp ggml-org/llama.cpp@0c1e57098)
#   SRC_DIR    where the sdist is downloaded and unpacked (default /work/llama.cpp-src)
#   BUILD_DIR  cmake build directory (default /work/llama.cpp-build); binaries land in BUILD_DIR/bin
# Environment: JOBS (default 2) parallel compile jobs; PYTHON (default python3) runs `pip download`.
#
# Then: scripts/benchmark.py --llama-cpp-bin BUILD_DIR/bin
#           --llama-cpp-src SRC_DIR/llama_cpp_python-VERSION/vendor/llama.cpp --make-gguf bf16 ...
#
# CPU flags: GGML_NATIVE=OFF with the AVX-512 family named explicitly, so the binary does not depend on
# what -march=native detects on a shared/virtualised host. AMX is OFF: at commit 0c1e57098 ggml's AMX
# path (GGML_AMX_TILE/INT8/BF16) died with SIGILL on multi-token batches (prefill) on the Intel Xeon
# (Sapphire Rapids class) this was first built on. Pass EXTRA_CMAKE_ARGS to override/add flags, e.g.
#   EXTRA_CMAKE_ARGS="-DGGML_NATIVE=ON" scripts/build_llama_cpp.sh   (on a machine without AVX-512).
set -euo pipefail

VERSION="${1:-0.3.36}"
SRC_DIR="${2:-/work/llama.cpp-src}"
BUILD_DIR="${3:-/work/llama.cpp-build}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

mkdir -p "$SRC_DIR"
SDIST="$SRC_DIR/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SRC_DIR"
fi
TREE="$SRC_DIR/llama_cpp_python-$VERSION"
if [[ ! -d "$TREE" ]]; then
    tar -xzf "$SDIST" -C "$SRC_DIR"
fi
LLAMA="$TREE/vendor/llama.cpp"
echo "llama.cpp sources: $LLAMA"
grep -m1 -o 'ggml-org/llama.cpp@[0-9a-f]*' "$TREE/CHANGELOG.md" | sed 's/^/llama.cpp commit: /' || true

# shellcheck disable=SC2086
cmake -S "$LLAMA" -B "$BUILD_DIR" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    ${EXTRA_CMAKE_ARGS:-}

cmake --build "$BUILD_DIR" -j "$JOBS" --target llama-bench llama-quantize llama-completion llama-simple

ls -la "$BUILD_DIR/bin"
"$BUILD_DIR/bin/llama-bench" --help >/dev/null
echo "built: $BUILD_DIR/bin/{llama-bench,llama-quantize,llama-completion,llama-simple}"
