#!/usr/bin/env bash
# The demo command: one-time set-up (GStreamer with H.264, ONNX Runtime; no trainer), then the
# shipped street video through `decodebin ! videoconvert ! avaefacedetect ! avaepurify !
# videoconvert ! x264enc ! mp4mux` into out/demo.mp4, a summary (frames, faces found and
# purified, fps) and a contact sheet of faces before/after in out/contact-sheet.png. It also
# builds target/release/libgstavaepurify.so, the plugin that pipelines/*.sh load.
# It also prints where each frame's time goes (decode, colour conversion, detection, purification,
# encode). Arguments go to the demo: --input FILE --output FILE --sheet FILE --samples N --faces K
# --model BUNDLE --backend auto|ort|tract --input-size PIXELS --interval N --encoder 'x264enc ...'
# --compare (also run the settings of before issue 13 and print both in one table; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# Building the example alone leaves the library only in target/release/deps; naming --lib puts it
# in target/release for pipelines/ (one invocation, so dependencies build once, with the example's
# features).
cargo build --release --lib --example demo
plugin="${CARGO_TARGET_DIR:-target}/release/libgstavaepurify.so"
if [ ! -f "$plugin" ]; then
  echo "demo.sh: cargo build --release --lib --example demo did not write $plugin" >&2
  exit 1
fi
cargo run --release --example demo -- "$@"
