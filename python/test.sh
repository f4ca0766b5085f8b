#!/usr/bin/env bash
# The Python package's test: installs it with pip, as a user would, into a
# fresh virtual environment (python/.venv, git-ignored), then runs its tests
# with pytest on every GPU adapter the machine has.
#
# Needs Rust (cargo) and Python 3.9 or newer with venv; pip fetches maturin
# (the build backend), numpy and pytest. Where `python3 -m venv` is missing
# (Debian without python3-venv) and we are root, it installs python3-venv.
# A machine without a GPU needs a software adapter: Mesa's lavapipe
# (mesa-vulkan-drivers) or llvmpipe GL (libegl-mesa0).
#
# Environment: PYTHON (default python3); SAOBP_REQUIRE_BACKENDS (e.g.
# `vulkan,gl`): fail when no adapter of a named backend is present;
# CARGO_TARGET_DIR: where cargo builds (default python/target).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=python/.venv
start=$SECONDS
step() { echo "== $* ($((SECONDS - start)) s)"; }

step "virtual environment in $venv"
if ! "$python" -m venv --clear "$venv"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq python3-venv >/dev/null
        "$python" -m venv --clear "$venv"
    else
        echo "$python cannot create a virtual environment: install its venv module" >&2
        echo "(Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi

step "pip install ./python (a release build of the extension: minutes on a small machine)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./python numpy pytest
"$venv/bin/python" -c 'import saobp; print("saobp", saobp.__version__, "from", saobp.__file__)'

step "pytest python/tests"
# The installed package, not the source folder: pytest runs from the root,
# where no `saobp` folder shadows it.
"$venv/bin/python" -m pytest python/tests -v
step "done"
