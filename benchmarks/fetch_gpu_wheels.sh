#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh installs on a GPU machine without
# internet into .whl/ at the repository root (ignored by git), for CPython 3.12 on
# manylinux x86_64. Run it where PyPI is reachable. The list, with versions, is
# benchmarks/gpu_wheels.txt; afterwards .whl/ holds exactly one wheel per line of it
# (two versions of one package would stop the install there).
#
#   benchmarks/fetch_gpu_wheels.sh
#   PYTHON_VERSION=3.11 DEST=/elsewhere benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIST=$ROOT/benchmarks/gpu_wheels.txt
DEST=${DEST:-$ROOT/.whl}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PIP=${PIP:-python3 -m pip}

# pip matches manylinux tags exactly: offer the usual ones.
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
    manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
norm() { tr 'A-Z.-' 'a-z__' <<<"$1"; }  # a distribution name as wheel files spell it

mkdir -p "$DEST"
wanted=() failed=()
while read -r req; do
    req=${req%%#*}
    req=${req//[[:space:]]/}
    [[ -n $req ]] || continue
    wanted+=("$(norm "${req%%==*}")-${req#*==}")
    $PIP download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
        --implementation cp "${platforms[@]}" -d "$DEST" "$req" || failed+=("$req")
done <"$LIST"

# keep exactly the listed name-version pairs
for w in "$DEST"/*.whl; do
    [[ -e $w ]] || continue
    base=$(basename "$w")
    name_version=$(norm "${base%%-*}")-$(cut -d- -f2 <<<"$base")
    keep=0
    for x in "${wanted[@]}"; do [[ $x == "$name_version" ]] && keep=1; done
    ((keep)) || { echo "removing $base (not in $(basename "$LIST"))"; rm -f "$w"; }
done

echo "wheels in $DEST:"
ls -1 "$DEST"
du -sh "$DEST"
if ((${#failed[@]})); then
    echo "could not download: ${failed[*]}" >&2
    exit 1
fi
