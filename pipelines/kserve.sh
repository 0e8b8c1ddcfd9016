#!/usr/bin/env bash
# Remote inference: avaepurify backend=kserve against an Open Inference Protocol (KServe v2) gRPC
# server. Writes the bundle's serving export (Triton repository + MLServer layout), starts
# MLServer on it (the venv's, from scripts/setup.sh) unless SERVER names one already running,
# and purifies the faces of a video with the graphs run by the server; the server stops on exit.
# Needs: `cargo build --release` (plugin and the `serving` example), scripts/setup.sh (mlserver).
# Usage: pipelines/kserve.sh [video file]   (SINK=... replaces the display, e.g. fakesink;
#        SERVER=host:port uses a running server, e.g. a Triton started on DIR/triton)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
INPUT="${1:-$repo/media/opera-house-pedestrians.mp4}"
SINK="${SINK:-autovideosink}"
if [ -z "${SERVER:-}" ]; then
  SERVER=127.0.0.1:8001
  DIR="${SERVING_DIR:-$repo/out/serving}"
  (cd "$repo" && cargo run --release --quiet --example serving -- --out "$DIR")
  "$repo/.venv/bin/mlserver" start "$DIR/mlserver" >"$DIR/mlserver.log" 2>&1 &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 240); do
    grep -q "gRPC server running" "$DIR/mlserver.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$DIR/mlserver.log"; exit 1; }
    sleep 0.5
  done
fi
PIPELINE="filesrc location=$INPUT ! decodebin ! videoconvert ! avaefacedetect ! avaepurify backend=kserve server=$SERVER ! videoconvert ! $SINK"
# Paths with spaces are not supported by this word-split line: copy the file elsewhere first.
# shellcheck disable=SC2086
gst-launch-1.0 -e $PIPELINE
