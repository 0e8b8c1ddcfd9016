#!/usr/bin/env bash
# Many cameras, one process, one engine: N streams (default 4, each a file or camera URI) through
# one gst-launch-1.0 process whose avaefacedetect elements share one detector and whose
# avaepurify elements share one loaded A-VAE bundle (model-instance-id): their faces are purified
# together in the same encoder/decoder calls (shared-batch-size faces, at most
# shared-timeout-ms of waiting for the other streams). Each stream ends in its own sink; a stream
# that fails does not stop the others' frames.
# Needs: `cargo build --release`, GStreamer base/good and the decoders of the inputs
# (gstreamer1.0-libav for H.264: scripts/setup.sh installs it).
# Usage: pipelines/multi-camera.sh [input ...]   (default: the shipped video 4 times;
#        an input is a file path or a URI such as rtsp://camera/stream;
#        SINK=... replaces each stream's sink, e.g. fakesink; ID=... the model-instance-id)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
if [ "$#" -eq 0 ]; then
  video="$repo/media/opera-house-pedestrians.mp4"
  set -- "$video" "$video" "$video" "$video"
fi
SINK="${SINK:-autovideosink}"
ID="${ID:-cameras}"
PIPELINE=""
for input in "$@"; do
  case "$input" in
    *://*) uri="$input" ;;
    *) uri="file://$(cd "$(dirname "$input")" && pwd)/$(basename "$input")" ;;
  esac
  PIPELINE="$PIPELINE uridecodebin uri=$uri ! videoconvert ! avaefacedetect model-instance-id=$ID ! avaepurify model-instance-id=$ID ! videoconvert ! $SINK"
done
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $PIPELINE
