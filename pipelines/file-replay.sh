#!/usr/bin/env bash
# File replay: any container and codec GStreamer can demux and decode (decodebin), faces found by
# avaefacedetect and purified by avaepurify, shown in a window. The queue between the two lets
# detection and purification run on two threads (the demo with --queue: 9.10 fps against 7.10
# without, same run on 2 cores, README "Where the time goes").
# Needs: `cargo build --release` (the plugin in target/release), GStreamer base/good plus the
# decoders of the file (gstreamer1.0-libav for H.264: scripts/setup.sh installs it).
# Usage: pipelines/file-replay.sh [video file]   (SINK=... replaces the display, e.g. fakesink)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
INPUT="${1:-$repo/media/opera-house-pedestrians.mp4}"
SINK="${SINK:-autovideosink}"
PIPELINE="filesrc location=$INPUT ! decodebin ! videoconvert ! avaefacedetect ! queue max-size-buffers=4 ! avaepurify ! videoconvert ! $SINK"
# Paths with spaces are not supported by this word-split line: copy the file elsewhere first.
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $PIPELINE
