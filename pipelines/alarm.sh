#!/usr/bin/env bash
# Attack alarm: faces found by avaefacedetect and purified by avaepurify; each avae-purify-alarm
# element message (a face scoring above the alarm threshold; at most one per ROI id per second)
# is printed from gst-launch-1.0 -m, with its pts, roi-id, score and threshold. Frames go to
# fakesink. ALARM_THRESHOLD=... replaces the bundle's threshold (-1: the bundle's own, 1% false
# alarms on clean training faces); the shipped street video's clean faces all stayed under the
# previous bundle's (highest 1.88 for 2.29), so expect little unless ALARM_THRESHOLD=0 or so.
# Needs: as file-replay.sh. Usage: pipelines/alarm.sh [video file]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
INPUT="${1:-$repo/media/opera-house-pedestrians.mp4}"
ALARM_THRESHOLD="${ALARM_THRESHOLD:--1}"
PIPELINE="filesrc location=$INPUT ! decodebin ! videoconvert ! avaefacedetect ! avaepurify alarm-threshold=$ALARM_THRESHOLD ! fakesink"
# Paths with spaces are not supported by this word-split line: copy the file elsewhere first.
# shellcheck disable=SC2086
gst-launch-1.0 -m $PIPELINE | { grep --line-buffered -E 'avae-purify-alarm|ERROR' || true; }
