#!/usr/bin/env bash
# Validates templates/ with the tools their consumers use:
#   - the systemd units with `systemd-analyze verify`, ExecStart= rewritten to the built
#     binaries and Documentation=man:... resolved against man pages the binaries generate;
#     its warnings (unknown keys, bad values) count as failures;
#   - kubernetes.yaml with `kubernetes-validate --strict` (PyPI).
# Missing tools are installed: systemd from Debian (as root), kubernetes-validate into a
# venv under target/. A check whose tool cannot be had is reported as SKIP with the
# reason, after the checks that can still run. Exit 1 when a template fails validation.
#
# Usage: scripts/check-templates.sh         (CI: .ci/run)
# Env:   WARDEN_BIN_DIR  where the binaries are (default: target/debug, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
bin_dir=${WARDEN_BIN_DIR:-$target_dir/debug}
failed=0
checked=0
skipped=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pass() { echo "PASS  $*"; checked=$((checked + 1)); }
fail() { echo "FAIL  $*"; checked=$((checked + 1)); failed=$((failed + 1)); }
skip() { echo "SKIP  $*"; skipped=$((skipped + 1)); }

if [ -z "${WARDEN_BIN_DIR:-}" ]; then
    echo "== cargo build --locked --bins (the units' ExecStart= points at these)"
    cargo build --locked --bins --quiet
fi
bin_dir=$(cd "$bin_dir" && pwd)

# ---------------------------------------------------------------------------------------
# systemd units
# ---------------------------------------------------------------------------------------
have_systemd_analyze() { command -v systemd-analyze >/dev/null 2>&1; }
if ! have_systemd_analyze; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing systemd (for systemd-analyze) from Debian"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd; } >"$tmp/apt.log" 2>&1 \
            || { echo "apt-get failed:"; tail -5 "$tmp/apt.log"; }
    fi
fi

# The fallback when systemd-analyze is unavailable: every line is blank, a comment, a
# [Section] or Key=Value, and ExecStart= names an executable that exists.
lint_unit() {
    awk '
        /^[ \t]*$/ || /^[ \t]*[#;]/ { next }
        /^\[[A-Za-z]+\]$/ { next }
        /^[A-Za-z][A-Za-z0-9]*=/ { next }
        { printf "%s:%d: not a unit file line: %s\n", FILENAME, FNR, $0; bad = 1 }
        END { exit bad }
    ' "$1"
}

man_dir="$tmp/man/man1"
mkdir -p "$man_dir"
for unit in templates/*.service; do
    name=$(basename "$unit")
    exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit" | head -n 1)
    binary=$(basename "$exec_path")
    mkdir -p "$tmp/$name.d" # one unit per folder: verify also loads the units it names
    copy="$tmp/$name.d/$name"
    man_opt=()
    if [ -x "$bin_dir/$binary" ]; then
        stand_in="$bin_dir/$binary"
        note="ExecStart=$stand_in"
        "$stand_in" --generate man >"$man_dir/$binary.1"
    else
        # A binary still being written: check the unit with a stand-in executable, and
        # without its man page.
        stand_in=/bin/true
        note="$binary is not built yet: ExecStart=/bin/true stands in, man page not checked"
        man_opt=(--man=no)
    fi
    sed "s|^ExecStart=$exec_path|ExecStart=$stand_in|" "$unit" >"$copy"
    if have_systemd_analyze; then
        if ! command -v man >/dev/null 2>&1 && [ ${#man_opt[@]} -eq 0 ]; then
            man_opt=(--man=no)
            note="$note; man not installed, Documentation= not checked"
        fi
        # verify exits 0 on unknown keys and bad values (it ignores them), so any
        # output at all is a failure.
        if MANPATH="$tmp/man" SYSTEMD_LOG_COLOR=0 systemd-analyze verify "${man_opt[@]}" "$copy" >"$tmp/out" 2>&1 \
            && [ ! -s "$tmp/out" ]; then
            pass "systemd-analyze verify $unit ($note)"
        else
            sed "s|$tmp/$name.d/||g" "$tmp/out"
            fail "systemd-analyze verify $unit ($note)"
        fi
    else
        if lint_unit "$copy" && [ -x "$stand_in" ]; then
            pass "$unit: line syntax only (systemd-analyze is not available here and could not be installed)"
        else
            fail "$unit: line syntax"
        fi
        skip "systemd-analyze verify $unit: systemd-analyze is not available here and could not be installed"
    fi
done

# ---------------------------------------------------------------------------------------
# Kubernetes manifest
# ---------------------------------------------------------------------------------------
kv=$(command -v kubernetes-validate || true)
if [ -z "$kv" ]; then
    venv="$target_dir/templates-venv"
    kv="$venv/bin/kubernetes-validate"
    if [ ! -x "$kv" ]; then
        echo "== installing kubernetes-validate (PyPI) into $venv"
        { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate; } >"$tmp/pip.log" 2>&1 \
            || { echo "pip failed:"; tail -5 "$tmp/pip.log"; }
    fi
fi
if [ -x "$kv" ]; then
    if "$kv" --strict --quiet templates/kubernetes.yaml >"$tmp/out" 2>&1; then
        pass "kubernetes-validate --strict templates/kubernetes.yaml ($("$kv" --version 2>/dev/null | head -n 1))"
    else
        cat "$tmp/out"
        fail "kubernetes-validate --strict templates/kubernetes.yaml"
    fi
else
    skip "kubernetes-validate templates/kubernetes.yaml: kubernetes-validate is not installed and could not be installed"
fi

echo "check-templates: $checked checked, $failed failing, $skipped skipped"
[ "$failed" -eq 0 ]
