#!/usr/bin/env bash
# NVIDIA Jetson: hardware H.264 decoding (nvv4l2decoder) and conversion (nvvidconv) to RGBA in
# system memory for the plugin, ONNX Runtime on the GPU (device=cuda for the detector,
# device=tensorrt for the purifier, both falling back to the CPU with the reason logged), and
# hardware encoding back to an MP4.
# UNTESTED: written for JetPack 5/6 (L4T GStreamer plugins); this project's CI has no Jetson.
# Needs: `cargo build --release` on the Jetson, the L4T GStreamer plugins, and an ONNX Runtime
# GPU build for aarch64 with ORT_DYLIB_PATH pointing at its libonnxruntime.so.
# Usage: pipelines/jetson.sh [input.mp4] [output.mp4]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/env.sh"
export GST_PLUGIN_PATH="$repo/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
INPUT="${1:-$repo/media/opera-house-pedestrians.mp4}"
OUTPUT="${2:-purified-jetson.mp4}"
PIPELINE="filesrc location=$INPUT ! qtdemux ! h264parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=RGBA ! avaefacedetect backend=ort device=cuda ! avaepurify backend=ort device=tensorrt ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc ! h264parse ! mp4mux ! filesink location=$OUTPUT"
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $PIPELINE
