#!/usr/bin/env bash
# Webcam: a V4L2 camera (/dev/video0 by default) at 1280x720, faces detected on every second
# frame (interval=2: the boxes of the last detection are carried to the frame in between),
# purified and shown; sync=false shows each frame as soon as it is ready.
# Needs: `cargo build --release`, gstreamer1.0-plugins-good (v4l2src), a camera that offers
# 1280x720 raw video (check with `v4l2-ctl --list-formats-ext`; change the caps otherwise).
# Untested on this project's CI machine (it has no camera).
# Usage: pipelines/webcam.sh [device]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
DEVICE="${1:-/dev/video0}"
SINK="${SINK:-autovideosink sync=false}"
PIPELINE="v4l2src device=$DEVICE ! video/x-raw,width=1280,height=720 ! videoconvert ! queue leaky=downstream max-size-buffers=2 ! avaefacedetect interval=2 ! avaepurify ! videoconvert ! $SINK"
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $PIPELINE
