#!/usr/bin/env bash
# Whole-pipeline differential testing on random `.pcg` programs (tests/random_programs.rs) with
# any seed and count: `scripts/random_programs.sh [FIRST_SEED] [COUNT]` (defaults 1000, 5000).
# A failing program is shrunk and written under target/tmp/random_programs/; copy it into
# tests/random_regressions/ once the bug is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
PCG_RANDOM_SEED=${1:-1000} PCG_RANDOM_PROGRAMS=${2:-5000} \
  cargo test --release --test random_programs random_programs_pass_every_check -- --nocapture
