#!/usr/bin/env bash
# GPU test runner, in two halves.
#
#   scripts/gpu-run.sh            (here, no GPU needed) builds tandem and tandem_gpu_tests in
#                                 build-gpu/ (or $TANDEM_GPU_BUILD_DIR) with -DTANDEM_NATIVE=OFF
#                                 (the GPU machine's CPU differs),
#                                 bundles them, the non-system shared libraries they need and the
#                                 tiny test models into .bundle/ (git-ignored), and prints the
#                                 command to run on the GPU machine.
#   bash <bundle>/gpu-run.sh --device [--bench] [--disagg] [--e2e] [--no-sanitizer] [--skip-tests]
#                                 (on the GPU machine, from the repo root; the bundle carries
#                                 its own copy of this script, so it runs what was bundled) runs every GPU test, a
#                                 compute-sanitizer memcheck pass and a `tandem generate` smoke run;
#                                 with --bench also gpu_engine_bench (Llama-3.1-8B shape, dummy
#                                 weights, ~2-3 minutes on an H100; run twice: decode graphs on, then
#                                 --no-cuda-graphs as the baseline) and the prefill attention bench
#                                 beside torch SDPA; with --disagg (two GPUs,
#                                 nvidia-h100-x2) disagg_bench: the NCCL KV handoff of a 1P+1D
#                                 pair against NCCL p2p and colocated TTFT. The NCCL tests of
#                                 tandem_gpu_tests run when two GPUs are visible. With --e2e:
#                                 offline_bench (1000/1000 tokens, as many sequences as memory
#                                 allows) and batch 1 / 32 against HF transformers `generate`
#                                 (hf_generate_bench.py, same shapes, same run). Writes logs and
#                                 results.md to $OUT (default <bundle>/out).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--device" ] && [ -f "$here/payload.tar.gz" ]; then
  # Running the bundle's copy: the bundle is this script's folder, the repo root its parent. The
  # binaries, libraries and test models travel compressed (the device tool carries 64 MiB).
  root=$(dirname "$here")
  bundle=$(basename "$here")
else
  root=$(dirname "$here")
  bundle=${TANDEM_BUNDLE_DIR:-.bundle}  # a folder of the repo root that git ignores
fi
cd "$root"
if [ "${1:-}" = "--device" ] && [ ! -d "$bundle/bin" ] && [ -f "$bundle/payload.tar.gz" ]; then
  tar -C "$bundle" -xzf "$bundle/payload.tar.gz"
fi
build=${TANDEM_GPU_BUILD_DIR:-build-gpu}  # any build dir configured like the one below

if [ "${1:-}" != "--device" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON -DTANDEM_CUDA_ARCHS=90 \
    -DTANDEM_NATIVE=OFF -DTANDEM_WERROR="${TANDEM_WERROR:-OFF}" -DTANDEM_BUILD_BENCHMARKS=ON >/dev/null
  cmake --build "$build" -j"${JOBS:-2}" --target tandem tandem_gpu_tests gpu_engine_bench disagg_bench offline_bench \
    tandem_grpc_client prefill_attention_bench
  rm -rf "$bundle"
  mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/testdata/models"
  cp "$build"/tandem "$build"/tests/tandem_gpu_tests "$build"/gpu_engine_bench "$build"/disagg_bench "$build"/offline_bench \
    "$build"/tests/tandem_grpc_client "$build"/prefill_attention_bench "$bundle/bin/"
  strip "$bundle"/bin/*  # host symbols only (the device code keeps its line info); keeps the bundle small
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
  mkdir -p "$bundle/configs" && cp configs/models/llama-3.1-8b.json configs/gpu-*.yaml "$bundle/configs/"
  cp benchmarks/gpu/hf_generate_bench.py "$bundle/bin/"
  cp scripts/gpu-run.sh "$bundle/gpu-run.sh"
  cp benchmarks/gpu/sdpa_bench.py "$bundle/"
  # Compressed: five binaries with their device code, the libraries and the models are ~77 MB
  # unpacked, over what the device tool carries; ~31 MB packed. --device unpacks them.
  tar -C "$bundle" -czf "$bundle/payload.tar.gz" bin lib testdata
  rm -rf "$bundle/bin" "$bundle/lib" "$bundle/testdata"
  du -sh "$bundle"
  echo "Run on the GPU machine (repo root, carry $bundle):"
  echo "  bash $bundle/gpu-run.sh --device"
  exit 0
fi

# ---- device side -----------------------------------------------------------------------------------
run_bench=0
run_disagg=0
run_e2e=0
run_sanitizer=1
run_tests=1
for arg in "${@:2}"; do
  case "$arg" in
    --bench) run_bench=1 ;;
    --disagg) run_disagg=1 ;;
    --e2e) run_e2e=1 ;;
    --no-sanitizer) run_sanitizer=0 ;;
    --skip-tests) run_tests=0; run_sanitizer=0 ;;  # benchmarks only (a second call on a warm machine)
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$bundle/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$root/$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TANDEM_TESTDATA_DIR="$root/$bundle/testdata"
export NCCL_NVLS_ENABLE=0  # never NVLink multicast on shared machines
if [ ! -e /usr/local/cuda/lib64/libnccl.so.2 ]; then  # NCCL from the image's Python wheel
  nccl_lib=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0] + "/lib")' 2>/dev/null || true)
  [ -n "$nccl_lib" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$nccl_lib"
fi
bin="$bundle/bin"
date -u +"%Y-%m-%dT%H:%M:%SZ" >"$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/env.txt" 2>&1 || true

status=0
echo "== tandem_gpu_tests"
if [ "$run_tests" = 1 ]; then
  "$bin/tandem_gpu_tests" --gtest_color=no --gtest_output="xml:$OUT/gpu_tests.xml" 2>&1 |
    tee "$OUT/gpu_tests.log" || status=1
else
  echo "skipped (--skip-tests)" | tee "$OUT/gpu_tests.log"
fi

echo "== compute-sanitizer memcheck + racecheck"
memcheck_filter='KernelParityTest.*:FusedRopeDecodeAttentionTest.SmallForSanitizers:FusedSmallBatchParityTest.StreamedForSanitizers:DecodeAttentionParityTest.SmallBatchPathForSanitizers:PrefillAttentionParityTest.SmallBatchForSanitizers:Models/CudaModelGoldenTest.ChunkedPrefillThroughThePagedCacheMatches/*:SampleParityTest.SmallBatchForSanitizers:Models/CudaGraphParityTest.GraphReplayEqualsEagerDecodeAcrossBucketsJoinsAndLeaves/*:KvBlockCopyParityTest.*'
racecheck_filter='KernelParityTest.ReusedMetadataVectorsWithNewContentAreUploadedAgain:FusedRopeDecodeAttentionTest.SmallForSanitizers:FusedSmallBatchParityTest.StreamedForSanitizers:DecodeAttentionParityTest.SmallBatchPathForSanitizers:PrefillAttentionParityTest.SmallBatchForSanitizers:KernelParityTest.RmsNorm*:SampleParityTest.SmallBatchForSanitizers'
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
[ "$run_tests" = 1 ] || : >"$OUT/generate.log"
for backend in $([ "$run_tests" = 1 ] && echo cuda cpu); do
  "$bin/tandem" generate --model "$TANDEM_TESTDATA_DIR/models/tiny-llama" --backend "$backend" \
    --prompt-ids "$prompt" --max-tokens 16 --temperature 0 --ignore-eos --format json \
    --gpu-memory-utilization 0.05 >"$OUT/generate_$backend.json" 2>>"$OUT/generate.log" || status=1
done
cat "$OUT"/generate_*.json >>"$OUT/generate.log" 2>/dev/null || true
rm -f "$OUT"/generate_*.json

if [ "$run_disagg" = 1 ]; then
  # The real deployments, one after the other: `tandem serve` colocated on GPU 0, then 1P+1D over
  # NCCL (prefill GPU 0, decode GPU 1), driven over gRPC; greedy tokens must be equal.
  for cfg in gpu-colocated gpu-disagg; do
    echo "== tandem serve --config $cfg.yaml (tiny-llama31)"
    "$bin/tandem" serve --config "$bundle/configs/$cfg.yaml" --model "$TANDEM_TESTDATA_DIR/models/tiny-llama31" \
      --listen 127.0.0.1:50077 >"$OUT/serve_$cfg.log" 2>&1 &
    serve_pid=$!
    "$bin/tandem_grpc_client" --server 127.0.0.1:50077 --prompts 12 --max-tokens 24 \
      >"$OUT/client_$cfg.jsonl" 2>>"$OUT/serve_$cfg.log" || status=1
    "$bin/tandem_grpc_client" --server 127.0.0.1:50077 --prompts 96 --max-tokens 24 --concurrency 64 \
      >"$OUT/client_${cfg}_c64.jsonl" 2>>"$OUT/serve_$cfg.log" || status=1
    kill -TERM "$serve_pid"; wait "$serve_pid" || true
    grep -c '"status": "OK"' "$OUT/client_$cfg.jsonl" "$OUT/client_${cfg}_c64.jsonl" || true
  done
  python3 - "$OUT" <<'PY' | tee "$OUT/serve_compare.txt" || status=1
import json, sys
out = sys.argv[1]
load = lambda name: [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.startswith("{")]
a, b = load("client_gpu-colocated"), load("client_gpu-disagg")
same = sum(x["tokens"] == y["tokens"] for x, y in zip(a, b))
print(f"serve: {same}/{len(a)} prompts with equal greedy tokens (colocated vs 1P+1D over NCCL, sequential)")
c = load("client_gpu-disagg_c64")
print(f"serve: 1P+1D, 64 concurrent streams: {sum(r['status'] == 'OK' for r in c)}/{len(c)} OK; "
      f"median ttft {sorted(r['ttft_ms'] for r in c)[len(c) // 2]:.1f} ms, "
      f"median transfer {sorted(r['transfer_ms'] for r in c)[len(c) // 2]:.2f} ms")
sys.exit(0 if same == len(a) == len(b) > 0 else 1)
PY

  echo "== disagg_bench (llama-3.1-8b shape, dummy weights, 1P+1D over NCCL, 2048-token prompts)"
  "$bin/disagg_bench" --config "$bundle/configs/llama-3.1-8b.json" --prompt-tokens 2048 2>&1 |
    tee "$OUT/disagg_bench.log" || status=1
fi

if [ "$run_e2e" = 1 ]; then
  cfg="$bundle/configs/llama-3.1-8b.json"
  echo "== offline_bench 1000/1000 (llama-3.1-8b shape, dummy weights)"
  "$bin/offline_bench" --config "$cfg" --requests "${TANDEM_OFFLINE_REQUESTS:-512}" --prompt-tokens 1000 \
    --output-tokens 1000 2>&1 | tee "$OUT/offline.log" || status=1
  echo "== end to end vs HF transformers generate (128 prompt / 128 output tokens, batch 1 and 32)"
  for b in 1 32; do
    "$bin/offline_bench" --config "$cfg" --requests $b --prompt-tokens 128 --output-tokens 128 2>&1 |
      tee -a "$OUT/e2e_tandem.log" || status=1
  done
  PYTHONUNBUFFERED=1 python3 "$bin/hf_generate_bench.py" --config "$cfg" --batches 1,32 --prompt-tokens 128 \
    --output-tokens 128 2>&1 | tee "$OUT/e2e_hf.log" || status=1
fi

if [ "$run_bench" = 1 ]; then
  echo "== gpu_engine_bench (llama-3.1-8b shape, dummy weights)"
  "$bin/gpu_engine_bench" --config "$bundle/configs/llama-3.1-8b.json" 2>&1 | tee "$OUT/bench.log" || status=1
  echo "== gpu_engine_bench --no-cuda-graphs (the same, decode steps launched eagerly)"
  "$bin/gpu_engine_bench" --config "$bundle/configs/llama-3.1-8b.json" --no-cuda-graphs 2>&1 |
    tee "$OUT/bench_no_graphs.log" || status=1
  echo "== prefill attention alone (wgmma, mma.sync and CUDA-core kernels, torch flash SDPA; same shape)"
  "$bin/prefill_attention_bench" 2>&1 | tee "$OUT/attention_bench.log" || status=1
  python3 "$bundle/sdpa_bench.py" 2>&1 | tee -a "$OUT/attention_bench.log" || status=1
fi

{
  echo "# GPU results ($(head -n1 "$OUT/env.txt"))"
  sed -n '2,$p' "$OUT/env.txt"
  echo
  echo "| test | result |"
  echo "| --- | --- |"
  grep -E '^\[ +(OK|FAILED) +\] [A-Za-z]' "$OUT/gpu_tests.log" | sed -E 's/^\[ +(OK|FAILED) +\] ([^ ,]+).*/| \2 | \1 |/' | sort -u || true  # none with --skip-tests
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
  if [ -f "$OUT/attention_bench.log" ]; then echo; grep -E '^(#|\|)' "$OUT/attention_bench.log"; fi
  if [ -f "$OUT/disagg_bench.log" ]; then echo; sed -n '/^# disagg_bench/,$p' "$OUT/disagg_bench.log"; fi
  if [ -f "$OUT/serve_compare.txt" ]; then echo; cat "$OUT/serve_compare.txt"; fi
  for f in offline e2e_tandem e2e_hf; do
    if [ -f "$OUT/$f.log" ]; then echo; grep -E '^(#|\|)' "$OUT/$f.log"; fi
  done
  if [ -f "$OUT/bench_no_graphs.log" ]; then
    echo; sed -n '/^# gpu_engine_bench/,/^prefill floor/p' "$OUT/bench_no_graphs.log"
  fi
} >"$OUT/results.md"
cat "$OUT/results.md"
exit $status
