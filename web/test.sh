#!/usr/bin/env bash
# The browser test: builds the library to WebAssembly, opens the demo page's
# self-test in headless Chromium on WebGPU (SwiftShader), and checks that the
# browser's numbers match the float64 reference in the page and the native
# build on this machine. Exits 0 only when the page's title says PASS and the
# native comparison agrees.
#
# Installs what it lacks: Debian's chromium and chromium-driver, Mesa's
# lavapipe (for the native side), the wasm32 Rust target, wasm-bindgen-cli of
# the same version as the wasm-bindgen crate in web/Cargo.lock, and
# playwright-core from web/package-lock.json. It never downloads a browser.
#
# The page's model view and the self-test's model part load all-MiniLM-L6-v2
# from models/all-MiniLM-L6-v2 (run `bash scripts/fetch-model.sh` first); the
# test links ../models into web/ so the page finds it beside itself. The
# training tab reads data/shakespeare.txt, which the test fetches with
# `bash scripts/fetch-corpus.sh` when missing and links into web/ the same way.
#
# Leaves web/selftest-report.json (the page's window.saobpReport),
# docs/web-demo.png (the synthetic heads), docs/web-model.png (the model
# view after typing, picking a layer and head, and moving λ) and
# docs/web-train.png (the training tab after a few steps) behind.
set -euo pipefail
cd "$(dirname "$0")"
web=$(pwd)
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)"; }

export DEBIAN_FRONTEND=noninteractive
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

step "prerequisites"
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "playwright-core needs Node.js 20 or newer; this is $(node --version)" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
# The CLI must be exactly the crate's version, or the generated glue does not fit.
bindgen=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$bindgen" ]; then
    echo "no wasm-bindgen in web/Cargo.lock" >&2
    exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen" ]; then
    echo "installing wasm-bindgen-cli $bindgen (several minutes)"
    cargo install wasm-bindgen-cli --version "$bindgen"
fi
if [ ! -f node_modules/playwright-core/package.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi

step "model: all-MiniLM-L6-v2 beside the page"
model=../models/all-MiniLM-L6-v2
for f in config.json model.safetensors tokenizer.json; do
    if [ ! -f "$model/$f" ]; then
        echo "no $f in models/all-MiniLM-L6-v2: run \`bash scripts/fetch-model.sh\` first" >&2
        exit 1
    fi
done
# The served folder is web/; the page fetches models/all-MiniLM-L6-v2/ from it.
if [ ! -e models ]; then
    ln -s ../models models
fi

step "corpus: data/shakespeare.txt beside the page"
bash ../scripts/fetch-corpus.sh
if [ ! -e data ]; then
    ln -s ../data data
fi

step "build: wasm32 release and wasm-bindgen"
cargo build --release --target wasm32-unknown-unknown
target_dir=$(cargo metadata --format-version 1 --no-deps |
    node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).target_directory))')
rm -rf pkg
wasm-bindgen --target web --out-dir pkg "$target_dir/wasm32-unknown-unknown/release/saobp_web.wasm"

step "browser: self-test and screenshot in headless Chromium"
node selftest.mjs selftest-report.json ../docs/web-demo.png ../docs/web-model.png ../docs/web-train.png

step "native: the same workload on this machine's adapters"
# Every compared value prints a "max error" line; the adapters and the verdict stay.
# Selected as the README's `cargo test` selects (the workspace's default
# members, their features unified), so the test binary that command built is
# reused rather than the library rebuilt with other dependency features.
(cd .. && SAOBP_WEB_REPORT="$web/selftest-report.json" \
    cargo test --test web_parity -- --nocapture 2>&1) |
    grep -v ': max error '

step "PASS: browser self-test, screenshots docs/web-demo.png, docs/web-model.png and docs/web-train.png, native parity"
