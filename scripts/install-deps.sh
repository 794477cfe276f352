#!/usr/bin/env bash
# Installs what Tandem's build, tests and benchmarks need, and nothing already present.
# Debian packages through apt; Python test tools into a virtual environment at .venv.
# Idempotent: a second run installs nothing. Usage: scripts/install-deps.sh [--no-python]
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev nlohmann-json3-dev libyaml-cpp-dev libcli11-dev libre2-dev
  libboost-dev libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-venv python3-pip iproute2
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: apt packages present"
fi

if [[ "${1:-}" == "--no-python" ]]; then exit 0; fi

# Python test tools (reference implementations and real clients), pinned for reproducibility.
PY_PACKAGES=(
  "pytest==8.3.4" "numpy==2.1.3" "safetensors==0.4.5" "tokenizers==0.23.3" "gguf==0.19.0"
  "grpcio==1.85.1" "grpcio-tools==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1"
)
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
need_py=()
for spec in "${PY_PACKAGES[@]}"; do
  name=${spec%%==*}; version=${spec##*==}
  have=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  [[ "$have" == "$version" ]] || need_py+=("$spec")
done
if ((${#need_py[@]})); then
  echo "install-deps: pip installing ${need_py[*]}"
  .venv/bin/python -m pip install -q --disable-pip-version-check "${need_py[@]}"
else
  echo "install-deps: python test tools present"
fi
