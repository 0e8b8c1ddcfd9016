# Sourced by the scripts: where the project-local ONNX Runtime and libtorch live.
# shellcheck shell=bash
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_site="$(ls -d "$_root"/.venv/lib/python3*/site-packages 2>/dev/null | head -n1)"
if [ -n "$_site" ]; then
  _ort="$(ls "$_site"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)"
  [ -n "$_ort" ] && [ -z "${ORT_DYLIB_PATH:-}" ] && export ORT_DYLIB_PATH="$_ort"
  [ -d "$_site/torch/lib" ] && export LIBTORCH="${LIBTORCH:-$_site/torch}"
fi
export PATH="$HOME/.cargo/bin:$PATH"
unset _root _site _ort
