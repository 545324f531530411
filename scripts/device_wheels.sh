#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels the GPU machine of the `device` tool lacks for rootzone: its
# image has torch, triton, numpy, pandas, pyarrow, rich, matplotlib but no zarr or dask, and it reaches no
# package registry. Python 3.12, x86-64 manylinux. Versions follow this checkout's .venv where it has them.
# Then a device call carries `.whl` and starts with benchmarks/gpu_campaign.sh (which installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl && mkdir -p .whl
names="zarr numcodecs donfig google-crc32c dask partd locket xarray fsspec typing_extensions"
specs=$("$PY" - $names <<'PYEOF'
import importlib.metadata as m, sys
out = []
for n in sys.argv[1:]:
    try:
        out.append(f"{n}=={m.version(n)}")
    except m.PackageNotFoundError:
        out.append(n)
print(" ".join(out))
PYEOF
)
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
  -d .whl $specs
ls -1 .whl
du -sh .whl
