#!/usr/bin/env bash
# Create (once) and print the path of the project's virtual environment.
#
# The venv lives outside the checkout, keyed by a hash of the dependency pins, so that fresh clones
# (CI runs a new one every time) reuse it and a change of pins gets a new one instead of filling the
# disk with copies. The venv holds the dependencies only: scripts/in-env puts *this* checkout on
# PYTHONPATH and PATH, so two checkouts sharing one venv each run their own code.
#   usage: source <(scripts/setup-env.sh --print-activate)   or   VENV=$(scripts/setup-env.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
pins=$(python3 - "$here/pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(sorted(p["dependencies"]) + sorted(p["optional-dependencies"]["test"])))
PY
)
key=$( (python3 --version; echo "$pins") | sha256sum | cut -c1-16)
root=${LENS_VENV_ROOT:-$HOME/.cache/lens-venvs}
venv="$root/venv-$key"
mkdir -p "$root"
# one builder at a time: concurrent callers (parallel jobs, several checkouts) wait for the first
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/lens-ready" ]; then
    echo "setting up $venv (first time for these pins: a few minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$root"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q $(echo "$pins" | tr '\n' ' ') >&2
    printf '#!/bin/sh\nexit 0\n' > "$venv/bin/lens-ready" && chmod +x "$venv/bin/lens-ready"
fi
# a venv built by an earlier version of this script holds an editable install of some checkout: drop it
if compgen -G "$venv/lib/python3*/site-packages/__editable__*lens_core*" >/dev/null; then
    "$venv/bin/pip" uninstall -q -y lens-core >&2
fi
if [ "${1:-}" = "--print-activate" ]; then
    echo "source '$venv/bin/activate'; export PYTHONPATH='$here'\${PYTHONPATH:+:\$PYTHONPATH} PATH='$here/scripts/bin':\$PATH"
else
    echo "$venv"
fi
