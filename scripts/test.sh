#!/usr/bin/env bash
# The test command: set-up on a fresh Debian 12 machine, then formatting, lints, every test of
# the workspace (plugin + trainer), and a quick run of the benchmark that prints its table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --trainer
source scripts/env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
cargo bench --bench purify -- --quick
