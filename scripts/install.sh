#!/usr/bin/env bash
# Installs the plugin like any GStreamer plugin: the release library into
# <prefix>/lib/gstreamer-1.0/ and the shipped models (models/avae-cpu, models/centerface; not the
# evaluation-only models/recognizer) into <prefix>/share/avae-purify/models/, where the installed
# plugin finds them at run time (src/paths.rs). Prints the GST_PLUGIN_PATH line to use.
# Needs the Rust toolchain and the GStreamer development packages (scripts/setup.sh).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [--prefix DIR] [--no-build] [--plugin FILE]
  --prefix DIR   install below DIR (default: $HOME/.local)
  --no-build     install the existing target/release/libgstavaepurify.so without building
  --plugin FILE  install this plugin library instead of target/release's (implies --no-build)
EOF
}

prefix="${HOME:?HOME is not set; pass --prefix}/.local"
build=1
plugin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a folder}"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --no-build) build=0; shift ;;
    --plugin) plugin="${2:?--plugin needs a file}"; build=0; shift 2 ;;
    --plugin=*) plugin="${1#--plugin=}"; build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
case "$prefix" in /*) ;; *) prefix="$PWD/$prefix" ;; esac
case "$plugin" in ""|/*) ;; *) plugin="$PWD/$plugin" ;; esac
cd "$repo"

target="${CARGO_TARGET_DIR:-target}"
if [ "$build" = 1 ]; then
  source scripts/env.sh
  cargo build --release --lib
fi
plugin="${plugin:-$target/release/libgstavaepurify.so}"
if [ ! -f "$plugin" ]; then
  echo "install.sh: no plugin library at $plugin (run without --no-build, or cargo build --release --lib)" >&2
  exit 1
fi

libdir="$prefix/lib/gstreamer-1.0"
models="$prefix/share/avae-purify/models"
install -d "$libdir" "$models"
install -m 0755 "$plugin" "$libdir/libgstavaepurify.so"
for model in avae-cpu centerface; do
  # A fresh copy of the folder's files (not its subfolders, such as avae-cpu/ablation/).
  rm -rf "${models:?}/$model"
  install -d "$models/$model"
  find "models/$model" -maxdepth 1 -type f -exec install -m 0644 -t "$models/$model" {} +
done

echo "Installed $libdir/libgstavaepurify.so and $models/{avae-cpu,centerface}."
echo "To use it (the plugin finds its models beside itself, from any folder):"
echo "  export GST_PLUGIN_PATH=$libdir\${GST_PLUGIN_PATH:+:\$GST_PLUGIN_PATH}"
echo "backend=auto runs ONNX Runtime when it finds it (ORT_DYLIB_PATH, this tree's .venv or the"
echo "system's libonnxruntime.so), tract otherwise. AVAE_PURIFY_MODELS=DIR points at other models."
