#!/usr/bin/env bash
# RTSP camera or server: rtspsrc, any codec decodebin can decode, faces detected and purified,
# shown on screen.
# Latency: rtspsrc buffers `latency` ms (default 2000) in its jitter buffer to reorder late
# packets; 200 ms suits a wired LAN camera, raise it on Wi-Fi or the internet. Purification adds
# its own processing time per frame; when it is slower than the camera, the leaky queue drops
# frames before the detector instead of letting the delay grow without bound.
# Needs: `cargo build --release`, gstreamer1.0-plugins-good (rtspsrc), -libav / -bad for the
# camera's codec. Untested on this project's CI machine (it has no network camera).
# Usage: pipelines/rtsp.sh rtsp://user:password@camera/stream
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
URL="${1:?usage: $0 rtsp://host/stream}"
SINK="${SINK:-autovideosink sync=false}"
PIPELINE="rtspsrc location=$URL latency=200 ! decodebin ! videoconvert ! queue leaky=downstream max-size-buffers=2 ! avaefacedetect interval=2 ! avaepurify ! videoconvert ! $SINK"
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $PIPELINE
