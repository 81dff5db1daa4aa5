# shellcheck shell=bash
# Shared by the test suites' install-deps.sh scripts and scripts/demo.sh (sourced, not run):
# Debian packages with apt-get, and pinned PyPI packages in a venv. Both are idempotent.
# `$who` names the caller in messages.

# apt_install PACKAGE...: installs those not fully installed.
apt_install() {
    local pkg missing=()
    for pkg in "$@"; do
        # dpkg-query prints "install ok installed" only for a fully installed package.
        if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "${who:-deps}: Debian packages already present"
        return
    fi
    echo "${who:-deps}: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# venv_pin VENV PACKAGE VERSION: creates VENV from Debian's python3 if needed (whatever
# other python3 comes first on PATH) and installs PACKAGE==VERSION unless it is there.
# The venv is made at its physical path (VENV may lie under a symlink, as target/ does in
# CI), so that it keeps working from any clone that reaches it; one whose python no longer
# runs (Debian's python3 changed under it) is made anew.
venv_pin() {
    local venv=$1 package=$2 version=$3 have
    mkdir -p "$(dirname "$venv")"
    venv="$(cd -P "$(dirname "$venv")" && pwd)/$(basename "$venv")"
    if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        echo "${who:-deps}: creating venv $venv"
        /usr/bin/python3 -m venv --clear "$venv"
    fi
    have="$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null || true)"
    if [[ "$have" == "$version" ]]; then
        echo "${who:-deps}: $package $version already in the venv"
        return
    fi
    echo "${who:-deps}: installing $package $version into the venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$package==$version"
}
