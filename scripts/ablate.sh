#!/usr/bin/env bash
# The defense ablations of issue 10, resumable: each run fine-tunes the shipped generator
# (models/avae-cpu) for the same number of steps, one CPU thread each, niced, in
# $AVAE_RUNS (default $HOME/avae-runs); re-running resumes every run from its last checkpoint.
# AVAE_THREADS sets the threads of each run (default 1).
# Then export each run and compare them with `trainer eval --lab` (see the README).
#   bash scripts/ablate.sh [STEPS] [RUN ...]     (default: 2000 steps, runs ft-base ft-denoise)
# The generator fine-tuned is models/avae-cpu, or $AVAE_INIT when set (the ablations of
# 2026-12-02 all start from the 3,500-step generator of commit 4605abe).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
steps="${1:-2000}"; shift || true
runs=("$@"); [ ${#runs[@]} -gt 0 ] || runs=(ft-base ft-denoise)
root="${AVAE_RUNS:-$HOME/avae-runs}"
mkdir -p "$root"
cargo build --release -p avae-trainer
# Replaced by rename: a running ablation keeps its own copy (cp onto a busy binary fails).
bin="$root/trainer-bin"; cp target/release/trainer "$bin.new" && mv -f "$bin.new" "$bin"
[ -f "$root/data/lfw-64.bin" ] || "$bin" prepare --size 64 --out "$root/data"
# Flags that several runs combine; each guided run gives its own identity weight.
guided=(--denoise 0.75 --denoise-eps 8 --denoise-recognizer 0.5)
fourx=(--input-size 16 --lr 0.0003)  # at lr 1e-3 it diverged twice (KL ~1e10 at step ~400)
for r in "${runs[@]}"; do
  case "$r" in
    ft-base) extra=() ;;
    ft-denoise) extra=(--denoise 0.75 --denoise-eps 8) ;;
    ft-skipnoise) extra=(--skip-noise 0.5) ;;
    ft-denoise-skipnoise) extra=(--denoise 0.75 --denoise-eps 8 --skip-noise 0.5) ;;
    ft-critic-only) extra=(--lambda-c 0) ;;
    ft-guided) extra=("${guided[@]}" --id-weight 10) ;;
    ft-guided-skip8) extra=("${guided[@]}" --id-weight 10 --skip-detail 8) ;;
    ft-guided-skip8-id30) extra=("${guided[@]}" --id-weight 30 --skip-detail 8) ;;
    # The same at lr 3e-4: at 1e-3 the critic's gradient penalty blew up three times.
    ft-guided-skip8-id30-lr3) extra=("${guided[@]}" --id-weight 30 --skip-detail 8 --lr 0.0003) ;;
    # The 8x8 skip fine-tuned from the shipped (already guided) generator, AVAE_INIT unset.
    ft-guided-then-skip8) extra=("${guided[@]}" --id-weight 10 --skip-detail 8) ;;
    ft-4x) extra=("${fourx[@]}") ;;
    ft-4x-guided) extra=("${fourx[@]}" "${guided[@]}" --id-weight 10) ;;
    ft-4x-guided-id30) extra=("${fourx[@]}" "${guided[@]}" --id-weight 30) ;;
    *) echo "ablate.sh: unknown run '$r'" >&2; exit 2 ;;
  esac
  resume=(); [ -f "$root/$r/checkpoint.json" ] && resume=(--resume)
  lc=(--lambda-c 300); [ "$r" = ft-critic-only ] && lc=()
  nohup nice -n 10 "$bin" train --preset cpu --objective bc "${lc[@]}" --steps "$steps" \
    --ckpt-every 100 --sample-every 250 --threads "${AVAE_THREADS:-1}" --data "$root/data" \
    --init-bundle "${AVAE_INIT:-$PWD/models/avae-cpu}" --out "$root/$r" "${resume[@]}" "${extra[@]}" \
    >> "$root/$r.log" 2>&1 &
  echo "ablate: $r -> $root/$r (log $root/$r.log)"
done
