#!/usr/bin/env bash
# Build an offline install bundle of fieldkit for a technician's laptop. Run it where a package index
# is reachable; the bundle then installs with no network at all (carried in on a USB stick).
#
#   scripts/make_offline_bundle.sh OUTDIR [--platform TAG]... [--python-version X.Y] [--with-models] [--python PY]
#
# OUTDIR gets: wheelhouse/ (fieldkit, built from this checkout, and every dependency as a wheel for the
# target), install.sh (makes a venv, `pip install --no-index --find-links wheelhouse fieldkit`, after
# checking SHA256SUMS), README.md (the README's "Offline install" section), models/ (--with-models: the
# test models of scripts/make_models.py, for a first bench offline) and SHA256SUMS.
#
# --platform TAG       target platform, repeatable (default manylinux_2_28_x86_64: Linux x86_64 with
#                      glibc >= 2.28); a manylinux_2_N tag also accepts the older manylinux wheels
# --python-version X.Y the laptop's Python (default: the version of --python)
# --with-models        include the test models (needs numpy, onnx, onnxruntime in --python)
# --python PY          the Python that runs pip here (default: .venv/bin/python of the checkout, else python3)
# Exit status: 0 built · 2 usage · 3 the package index cannot be reached · 1 anything else (pip's message shown).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=""
PLATFORMS=()
PYVER=""
MODELS=0
PY=${PYTHON:-}

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "make_offline_bundle: $1" >&2; exit "${2:-1}"; }
if command -v sha256sum >/dev/null 2>&1; then sum256() { sha256sum "$1"; }; else sum256() { shasum -a 256 "$1"; }; fi

while [ $# -gt 0 ]; do
    case "$1" in
        --platform) [ $# -ge 2 ] || die "--platform needs a tag" 2; PLATFORMS+=("$2"); shift 2 ;;
        --python-version) [ $# -ge 2 ] || die "--python-version needs X.Y" 2; PYVER=$2; shift 2 ;;
        --with-models) MODELS=1; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a path" 2; PY=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" 2 ;;
        *) [ -z "$OUT" ] || die "one OUTDIR only" 2; OUT=$1; shift ;;
    esac
done
[ -n "$OUT" ] || { usage >&2; die "OUTDIR is required" 2; }
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip" 2
[ -n "$PYVER" ] || PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || die "--python-version must look like 3.11, not $PYVER" 2
[ ${#PLATFORMS[@]} -gt 0 ] || PLATFORMS=(manylinux_2_28_x86_64)
MARKER=.fieldkit-offline-bundle
if [ -e "$OUT" ]; then
    [ -d "$OUT" ] || die "$OUT exists and is not a directory" 2
    if [ -n "$(ls -A "$OUT")" ] && [ ! -e "$OUT/$MARKER" ]; then
        die "$OUT is not empty and not an offline bundle: nothing was written" 2
    fi
fi

# pip does not widen a perennial manylinux tag to the older glibc versions it runs on: list them.
PLAT_ARGS=()
for p in "${PLATFORMS[@]}"; do
    if [[ "$p" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
        minor=${BASH_REMATCH[1]}; arch=${BASH_REMATCH[2]}
        for ((m = minor; m >= 5; m--)); do PLAT_ARGS+=(--platform "manylinux_2_${m}_${arch}"); done
        [ "$minor" -lt 17 ] || PLAT_ARGS+=(--platform "manylinux2014_${arch}")
        [ "$minor" -lt 12 ] || PLAT_ARGS+=(--platform "manylinux2010_${arch}")
        PLAT_ARGS+=(--platform "manylinux1_${arch}")
    else
        PLAT_ARGS+=(--platform "$p")
    fi
done

START=$(date +%s)
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d "$(dirname "$OUT")/.$(basename "$OUT").XXXXXX")
trap 'rm -rf "$TMP"' EXIT
WH=$TMP/wheelhouse
mkdir -p "$WH"
LOG=$TMP/pip.log

pip_or_die() {  # run pip; on failure show its message and tell an unreachable index from the rest
    if ! "$PY" -m pip "$@" >"$LOG" 2>&1; then
        grep -v 'is ignored: it is neither a file nor a directory' "$LOG" | tail -25 >&2
        if grep -qiE 'NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|Network is unreachable|Could not fetch URL|ConnectTimeout|ProxyError|SSLError|Max retries exceeded' "$LOG"; then
            die "cannot reach the package index (pip $1 failed on the network); build the bundle where it is reachable" 3
        fi
        die "pip $1 failed (above)"
    fi
}

echo "make_offline_bundle: fieldkit wheel from $ROOT"
# --no-deps for fieldkit's own wheel only: its dependencies are resolved for the target just below.
pip_or_die wheel --no-deps -q -w "$WH" "$ROOT"
FK_WHEEL=$(ls "$WH"/fieldkit-*.whl)
echo "make_offline_bundle: dependencies for Python $PYVER on ${PLATFORMS[*]}"
pip_or_die download -q --only-binary=:all: --implementation cp --python-version "$PYVER" "${PLAT_ARGS[@]}" \
    -d "$WH" "$FK_WHEEL"

if [ "$MODELS" = 1 ]; then
    echo "make_offline_bundle: test models"
    "$PY" "$ROOT/scripts/make_models.py" "$TMP/models" >/dev/null || die "scripts/make_models.py failed"
fi

# The README's offline section travels with the bundle.
{
    awk '/^## Offline install/ { on = 1 } on && /^## / && !/^## Offline install/ { exit } on { print }' "$ROOT/README.md"
    printf '\nThis bundle: fieldkit %s for Python %s on %s, built %s.\n' \
        "$(basename "$FK_WHEEL" | cut -d- -f2)" "$PYVER" "${PLATFORMS[*]}" "$(date -u +%Y-%m-%d)"
} > "$TMP/README.md"

cat > "$TMP/install.sh" <<'EOF'
#!/bin/sh
# Install fieldkit from this directory with no network (a bundle of scripts/make_offline_bundle.sh).
#
#   sh install.sh [--venv DIR] [--python PY] [--no-link]
#
# --venv DIR   where fieldkit's virtualenv goes (default: ~/.local/share/fieldkit-venv; run again to upgrade)
# --python PY  the Python to build it with (default: python3; must be the bundle's version, below)
# --no-link    do not link fieldkit and fieldkit-agent into ~/.local/bin
set -eu
TARGET_PY=@PYVER@
TARGET_PLATFORM="@PLATFORMS@"
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${XDG_DATA_HOME:-$HOME/.local/share}/fieldkit-venv
PY=python3
LINK=1
die() { echo "install.sh: $1" >&2; exit "${2:-1}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) [ $# -ge 2 ] || die "--venv needs a directory" 2; VENV=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs a path" 2; PY=$2; shift 2 ;;
        --no-link) LINK=0; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (--help lists the options)" 2 ;;
    esac
done

cd "$HERE"
if command -v sha256sum >/dev/null 2>&1; then SUM="sha256sum -c"; else SUM="shasum -a 256 -c"; fi
if ! $SUM SHA256SUMS >/dev/null 2>&1; then
    $SUM SHA256SUMS 2>&1 | grep -v ': OK$' >&2 || true
    die "the bundle does not match SHA256SUMS: it is damaged or was changed; copy it again"
fi

HAVE=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || die "no Python at $PY (give --python)" 2
[ "$HAVE" = "$TARGET_PY" ] || die "this bundle is for Python $TARGET_PY, $PY is $HAVE: give --python python$TARGET_PY, or build a bundle with --python-version $HAVE" 2
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV" || die "could not create a venv with $PY (Debian/Ubuntu: the python3-venv package)"
fi
# Only the wheelhouse: no index, and no pip configuration of this machine adds another source.
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_REQUIREMENT PIP_NO_INDEX
PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$VENV/bin/python" -m pip install -q --no-index --find-links "$HERE/wheelhouse" --upgrade fieldkit \
    || die "pip could not install from the wheelhouse (built for Python $TARGET_PY on $TARGET_PLATFORM)"
if [ "$LINK" = 1 ]; then
    mkdir -p "$HOME/.local/bin"
    ln -sf "$VENV/bin/fieldkit" "$HOME/.local/bin/fieldkit"
    ln -sf "$VENV/bin/fieldkit-agent" "$HOME/.local/bin/fieldkit-agent"
    case ":$PATH:" in *":$HOME/.local/bin:"*) ;; *) echo "install.sh: add ~/.local/bin to PATH (or run $VENV/bin/fieldkit)" ;; esac
fi
echo "install.sh: $("$VENV/bin/fieldkit" --version) installed in $VENV; try: fieldkit demo"
[ ! -d "$HERE/models" ] || echo "install.sh: test models for a first bench: $HERE/models"
EOF
sed -i "s|@PYVER@|$PYVER|; s|@PLATFORMS@|${PLATFORMS[*]}|" "$TMP/install.sh"
chmod 0755 "$TMP/install.sh"
touch "$TMP/$MARKER"

(cd "$TMP" && find . -type f ! -name SHA256SUMS ! -name pip.log ! -name "$MARKER" | sed 's|^\./||' | LC_ALL=C sort \
    | while IFS= read -r f; do sum256 "$f"; done > SHA256SUMS)
rm -f "$LOG"
trap - EXIT
if [ -e "$OUT" ]; then rm -rf "$OUT"; fi
mv "$TMP" "$OUT"
chmod 0755 "$OUT"

WHEELS=$(ls "$OUT/wheelhouse" | wc -l)
echo "make_offline_bundle: $OUT: $WHEELS wheels, wheelhouse $(du -sh "$OUT/wheelhouse" | cut -f1), bundle $(du -sh "$OUT" | cut -f1), $(( $(date +%s) - START )) s"
echo "on the laptop: sh $(basename "$OUT")/install.sh   then: fieldkit demo"
