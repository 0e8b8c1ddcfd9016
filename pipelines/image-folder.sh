#!/usr/bin/env bash
# A folder of already-cropped face images (numbered files: face-00000.png, face-00001.png, ...;
# PNG or JPEG, decodebin picks pngdec or jpegdec), each purified as one whole face
# (avaepurify full-frame=true, no detector) and written as numbered PNGs.
# Needs: `cargo build --release`, GStreamer base/good. The numbering must start at 0 and have no
# gap: multifilesrc stops at the first missing number.
# Usage: pipelines/image-folder.sh 'faces/face-%05d.png' 'purified/face-%05d.png'
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
INPUT="${1:?usage: $0 'in/face-%05d.png' 'out/face-%05d.png'}"
OUTPUT="${2:?usage: $0 'in/face-%05d.png' 'out/face-%05d.png'}"
mkdir -p "$(dirname "$OUTPUT")"
PIPELINE="multifilesrc location=$INPUT index=0 ! decodebin ! videoconvert ! avaepurify full-frame=true ! videoconvert ! pngenc ! multifilesink location=$OUTPUT"
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $PIPELINE
