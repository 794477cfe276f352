#!/usr/bin/env bash
# GPU test runner, in two halves.
#
#   scripts/gpu-run.sh            (here, no GPU needed) builds tandem and tandem_gpu_tests in
#                                 build-gpu/ (or $TANDEM_GPU_BUILD_DIR) with -DTANDEM_NATIVE=OFF
#                                 (the GPU machine's CPU differs),
#                                 bundles them, the non-system shared libraries they need and the
#                                 tiny test models into .bundle/ (git-ignored), and prints the
#                                 command to run on the GPU machine.
#   bash <bundle>/gpu-run.sh --device [--bench] [--no-sanitizer]
#                                 (on the GPU machine, from the repo root; the bundle carries
#                                 its own copy of this script, so it runs what was bundled) runs every GPU test, a
#                                 compute-sanitizer memcheck pass and a `tandem generate` smoke run;
#                                 with --bench also gpu_engine_bench (Llama-3.1-8B shape, dummy
#                                 weights, ~2-3 minutes on an H100; run twice: decode graphs on, then
#                                 --no-cuda-graphs as the baseline); writes logs and results.md to
#                                 $OUT (default .bundle/out).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--device" ] && [ -d "$here/bin" ]; then
  # Running the bundle's copy: the bundle is this script's folder, the repo root its parent.
  root=$(dirname "$here")
  bundle=$(basename "$here")
else
  root=$(dirname "$here")
  bundle=${TANDEM_BUNDLE_DIR:-.bundle}  # a folder of the repo root that git ignores
fi
cd "$root"
build=${TANDEM_GPU_BUILD_DIR:-build-gpu}  # any build dir configured like the one below

if [ "${1:-}" != "--device" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON -DTANDEM_CUDA_ARCHS=90 \
    -DTANDEM_NATIVE=OFF -DTANDEM_WERROR="${TANDEM_WERROR:-OFF}" -DTANDEM_BUILD_BENCHMARKS=ON >/dev/null
  cmake --build "$build" -j"${JOBS:-2}" --target tandem tandem_gpu_tests gpu_engine_bench
  rm -rf "$bundle"
  mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/testdata/models"
  cp "$build"/tandem "$build"/tests/tandem_gpu_tests "$build"/gpu_engine_bench "$bundle/bin/"
  # Shared libraries the device image may lack: everything but the C/C++ runtime and CUDA's own
  # (the device has those in /usr/local/cuda/lib64).
  for bin in "$bundle"/bin/*; do ldd "$bin"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    while read -r lib; do
      case "$(basename "$lib")" in
        libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libgcc_s.so*|libstdc++.so*|ld-linux*) ;;
        libcuda.so*|libcudart*|libcublas*|libnccl*|libnvJitLink*|libnvrtc*|libcupti*) ;;
        *) cp -L "$lib" "$bundle/lib/" ;;
      esac
    done
  testdata=$(sed -n 's/^TANDEM_TESTDATA_DIR:PATH=//p' "$build"/CMakeCache.txt)
  cp -r "$testdata"/models/tiny-llama "$testdata"/models/tiny-llama31 "$bundle/testdata/models/"
  mkdir -p "$bundle/configs" && cp configs/models/llama-3.1-8b.json "$bundle/configs/"
  cp scripts/gpu-run.sh "$bundle/gpu-run.sh"
  du -sh "$bundle"
  echo "Run on the GPU machine (repo root, carry $bundle):"
  echo "  bash $bundle/gpu-run.sh --device"
  exit 0
fi

# ---- device side -----------------------------------------------------------------------------------
run_bench=0
run_sanitizer=1
for arg in "${@:2}"; do
  case "$arg" in
    --bench) run_bench=1 ;;
    --no-sanitizer) run_sanitizer=0 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$bundle/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$root/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TANDEM_TESTDATA_DIR="$root/$bundle/testdata"
bin="$bundle/bin"
date -u +"%Y-%m-%dT%H:%M:%SZ" >"$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/env.txt" 2>&1 || true

status=0
echo "== tandem_gpu_tests"
"$bin/tandem_gpu_tests" --gtest_color=no --gtest_output="xml:$OUT/gpu_tests.xml" 2>&1 |
  tee "$OUT/gpu_tests.log" || status=1

echo "== compute-sanitizer memcheck + racecheck"
memcheck_filter='KernelParityTest.*:Models/CudaModelGoldenTest.ChunkedPrefillThroughThePagedCacheMatches/*:SampleParityTest.SmallBatchForSanitizers:Models/CudaGraphParityTest.GraphReplayEqualsEagerDecodeAcrossBucketsJoinsAndLeaves/*'
racecheck_filter='KernelParityTest.ReusedMetadataVectorsWithNewContentAreUploadedAgain:KernelParityTest.RmsNorm*:SampleParityTest.SmallBatchForSanitizers'
if [ "$run_sanitizer" = 0 ]; then
  echo "skipped (--no-sanitizer)" | tee "$OUT/memcheck.log"
elif command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/tandem_gpu_tests" --gtest_color=no \
    --gtest_filter="$memcheck_filter" >"$OUT/memcheck.log" 2>&1 || status=1
  compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/tandem_gpu_tests" --gtest_color=no \
    --gtest_filter="$racecheck_filter" >>"$OUT/memcheck.log" 2>&1 || status=1
  grep -E 'tests? from .* ran|ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/memcheck.log"
else
  echo "compute-sanitizer not found" | tee "$OUT/memcheck.log"
fi

echo "== tandem generate smoke run (tiny-llama, greedy, cuda vs cpu)"
prompt=1,2,3,4,5,6,7,8,9,10
for backend in cuda cpu; do
  "$bin/tandem" generate --model "$TANDEM_TESTDATA_DIR/models/tiny-llama" --backend "$backend" \
    --prompt-ids "$prompt" --max-tokens 16 --temperature 0 --ignore-eos --format json \
    --gpu-memory-utilization 0.05 >"$OUT/generate_$backend.json" 2>>"$OUT/generate.log" || status=1
done
cat "$OUT"/generate_*.json >>"$OUT/generate.log" 2>/dev/null || true
rm -f "$OUT"/generate_*.json

if [ "$run_bench" = 1 ]; then
  echo "== gpu_engine_bench (llama-3.1-8b shape, dummy weights)"
  "$bin/gpu_engine_bench" --config "$bundle/configs/llama-3.1-8b.json" 2>&1 | tee "$OUT/bench.log" || status=1
  echo "== gpu_engine_bench --no-cuda-graphs (the same, decode steps launched eagerly)"
  "$bin/gpu_engine_bench" --config "$bundle/configs/llama-3.1-8b.json" --no-cuda-graphs 2>&1 |
    tee "$OUT/bench_no_graphs.log" || status=1
fi

{
  echo "# GPU results ($(head -n1 "$OUT/env.txt"))"
  sed -n '2,$p' "$OUT/env.txt"
  echo
  echo "| test | result |"
  echo "| --- | --- |"
  grep -E '^\[ +(OK|FAILED) +\] [A-Za-z]' "$OUT/gpu_tests.log" | sed -E 's/^\[ +(OK|FAILED) +\] ([^ ,]+).*/| \2 | \1 |/' | sort -u
  echo
  echo "## measured"
  grep -E '^\[ [a-z].*\] ' "$OUT/gpu_tests.log" || true
  echo
  echo "## compute-sanitizer (memcheck: kernel tests + chunked prefill + decode graphs; racecheck: attention, rmsnorm)"
  grep -E 'tests? from .* ran|PASSED|FAILED|ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/memcheck.log" || true
  echo
  echo "## tandem generate (tiny-llama, prompt $prompt, 16 greedy tokens)"
  grep -E '^\{' "$OUT/generate.log" || tail -n 5 "$OUT/generate.log"
  if [ -f "$OUT/bench.log" ]; then echo; sed -n '/^# gpu_engine_bench/,$p' "$OUT/bench.log"; fi
  if [ -f "$OUT/bench_no_graphs.log" ]; then
    echo; sed -n '/^# gpu_engine_bench/,/^prefill floor/p' "$OUT/bench_no_graphs.log"
  fi
} >"$OUT/results.md"
cat "$OUT/results.md"
exit $status
