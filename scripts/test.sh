#!/usr/bin/env bash
# The whole test suite: the Rust tests, then the Python module built into a fresh virtual
# environment (target/py-venv) and its pytest suite, which compares it with the CLI.
# Needs a Rust toolchain and python3 (>= 3.9) with venv and pip; PyPI packages are installed
# into the virtual environment: maturin, numpy, pytest, onnx and onnxruntime (ONNX Runtime is
# the reference of the ONNX tests; torch is not installed, so `from_torch`'s test is skipped).
# Where Open MPI's `mpirun` is installed (with libopenmpi-dev and libclang-dev), pcg is built
# and tested with `--features mpi` too (tests/mpi.rs); PCG_NO_MPI=1 skips that.
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
if command -v mpirun >/dev/null && [ "${PCG_NO_MPI:-0}" != 1 ]; then
    features=(--features mpi)
fi
cargo test --release "${features[@]}"
cargo build --release --bin pcg "${features[@]}"
venv=target/py-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet maturin numpy pytest onnx onnxruntime
# `pip install .` as a user would; --no-build-isolation reuses the maturin just installed.
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" -m pip install --quiet --no-build-isolation .
# From outside the source tree, so that the installed module is the one imported.
root=$PWD
(cd target && PCG="$root/target/release/pcg" "$root/$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests")
