#!/usr/bin/env bash
# RTSP camera or server: rtspsrc, any codec decodebin can decode, faces detected and purified,
# shown on screen.
# Latency: rtspsrc buffers `latency` ms (default 2000) in its jitter buffer to reorder late
# packets; 200 ms suits a wired LAN camera, raise it on Wi-Fi or the internet. An RTSP source is
# live, so avaepurify holds no frame longer than its budget (`max-latency-ms`, default one frame
# period): faces that do not fit take the reuse path or pass marked purified=false
# reason=latency-budget. Detection is not budgeted: when it is slower than the camera, the
# leaky queue (`frames`) drops decoded frames before the detector instead of letting the delay
# grow without bound (LEAKY=no makes it block instead; with a large `max-latency-ms` every face
# of every frame is then purified in full and the delay grows).
# The `backlog` queue ahead of the decoder holds the compressed stream, without a bound, so that
# rtspsrc is never blocked: a camera cannot be slowed down, and a blocked rtspsrc stops at end of
# stream (tried without it, and with a 300 kB bound on it: its jitter buffer kept the server's
# end of stream and the last frames). With the leaky default it stays near empty; with LEAKY=no
# it is where the line falls behind, about 0.5 MB per second of delay for a 4 Mbit/s camera.
# Needs: `cargo build --release`, gstreamer1.0-plugins-good (rtspsrc), -libav / -bad for the
# camera's codec. Tested by tests/rtsp.rs against a real RTSP server on 127.0.0.1 (the
# gst-rtsp-server library serving the shipped street video's H.264): with the line as it is,
# every frame sent is received and decoded (the RTP packets a loaded host's UDP loses are
# counted, and spoil at most one frame each), the frames the queue drops are counted, every frame
# it lets through reaches the sink and every face there carries its verdict; with LEAKY=no and a
# large budget every frame sent reaches the sink with every face purified. Not tested against a
# network camera (CI has none).
# Usage: pipelines/rtsp.sh rtsp://user:password@camera/stream
# SINK (default `autovideosink sync=false`) and LEAKY (default `downstream`) override the sink
# and the queue's leakiness.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
URL="${1:?usage: $0 rtsp://host/stream}"
SINK="${SINK:-autovideosink sync=false}"
LEAKY="${LEAKY:-downstream}"
PIPELINE="rtspsrc location=$URL latency=200 ! queue name=backlog max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! decodebin ! videoconvert ! queue name=frames leaky=$LEAKY max-size-buffers=2 ! avaefacedetect interval=2 ! avaepurify ! videoconvert ! $SINK"
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $PIPELINE
