"""Disaggregated prefill/decode on the CPU backend, end to end: `tandem serve` with
`deployment: disaggregated` starts 1 prefill worker + 1 decode worker + the router; the KV moves
between the workers over TCP. Through the Python grpcio client generated from proto/:

- the six golden prompts of tiny-llama and tiny-llama31 return HF's greedy ids;
- 64 concurrent streams are all correct, and both workers' KV pools are whole afterwards;
- cancellation mid-decode leaves both workers' KV pools whole (tandem.v1.Worker/GetWorkerStats);
- SIGKILL of the decode worker gives the affected clients UNAVAILABLE within 5 s;
- the shipped configs/cpu-disagg.yaml serves and shuts down on SIGTERM.
"""
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO

N_PROMPTS = 6
N_CONCURRENT = 64

CONFIG = """
deployment: disaggregated
log_level: info
model: {{path: "{model}", name: {name}, backend: cpu, threads: 1}}
engine: {{block_size: 16, num_kv_blocks: 2048, max_num_batched_tokens: 512, max_num_seqs: 128}}
server: {{max_live_requests: 256, poll_interval_ms: 20, shutdown_grace_s: 2}}
disaggregated: {{prefill_workers: 1, decode_workers: 1, kv_io_timeout_ms: 2000}}
"""


def goldens_of(testdata, model):
    g = load_file(str(testdata / "models" / model / "goldens.safetensors"))
    return [(g[f"p{i}.input_ids"].astype(np.int64).tolist(), g[f"p{i}.greedy_ids"].astype(np.int64).tolist())
            for i in range(N_PROMPTS)]


def greedy(stubs, prompt, max_tokens=16, **kwargs):
    sampling = stubs.gen.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return stubs.gen.GenerateRequest(prompt_token_ids=prompt, sampling=sampling, **kwargs)


def collect(stream):
    tokens, completion = [], None
    for msg in stream:
        assert completion is None, "a message came after the completion"
        tokens += list(msg.token_ids)
        if msg.HasField("completion"):
            completion = msg.completion
    assert completion is not None, "the stream ended without a completion"
    return tokens, completion


class Deployment:
    """The router's channel plus each worker's pid and Worker stub, from `tandem serve`'s log."""

    def __init__(self, server, stubs):
        import importlib

        self.server = server
        self.worker_pb2 = importlib.import_module("tandem.v1.worker_pb2")
        worker_grpc = importlib.import_module("tandem.v1.worker_pb2_grpc")
        log = server.log_text()
        self.workers = {}
        for role, pid, addr in re.findall(r"started (prefill|decode) worker 0 \(pid (\d+)\) on (\S+:\d+)", log):
            ch = grpc.insecure_channel(addr)
            self.workers[role] = (int(pid), worker_grpc.WorkerStub(ch), ch)
        assert set(self.workers) == {"prefill", "decode"}, log
        self.channel = grpc.insecure_channel(server.address)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.gen = stubs.gen_grpc.GenerationStub(self.channel)

    def stats(self, role):
        return self.workers[role][1].GetWorkerStats(self.worker_pb2.WorkerStatsRequest(), timeout=5)

    def wait_pools_whole(self, guard_s=2.0):
        end = time.monotonic() + guard_s
        while True:
            stats = {role: self.stats(role) for role in self.workers}
            whole = all(s.stats.num_live_requests == 0 and s.stats.kv_blocks.in_use == 0 and
                        s.num_transferring == 0 for s in stats.values())
            if whole or time.monotonic() >= end:
                break
            time.sleep(0.02)
        for role, s in stats.items():
            kv = s.stats.kv_blocks
            assert kv.total > 0 and s.role == role
            assert s.stats.num_live_requests == 0, f"{role}: requests still live: {s}"
            assert kv.in_use == 0, f"{role}: KV blocks still in use: {s}"
            assert kv.free + kv.cached == kv.total, f"{role}: {s}"
            assert s.num_transferring == 0, f"{role}: {s}"
        return stats

    def close(self):
        self.channel.close()
        for _, _, ch in self.workers.values():
            ch.close()


def start(start_server, stubs, testdata, model):
    server = start_server(CONFIG.format(model=testdata / "models" / model, name=model))
    return Deployment(server, stubs)


@pytest.fixture(scope="module")
def llama(start_server, stubs, testdata):
    d = start(start_server, stubs, testdata, "tiny-llama")
    yield d
    d.close()


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-llama31"])
def test_golden_prompts_through_prefill_and_decode_workers(model, llama, start_server, stubs, testdata):
    d = llama if model == "tiny-llama" else start(start_server, stubs, testdata, model)
    try:
        for i, (prompt, expected) in enumerate(goldens_of(testdata, model)):
            tokens, completion = collect(d.gen.Generate(greedy(stubs, prompt, request_id=f"{model}-{i}")))
            assert tokens == expected, f"{model} p{i}"
            assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
            assert completion.usage.prompt_tokens == len(prompt)
            assert completion.usage.completion_tokens == len(expected)
            t = completion.timings
            assert t.ttft_ms > 0 and t.e2e_ms >= t.ttft_ms
        stats = d.wait_pools_whole()
        # The work really was split: the decode worker never prefilled a prompt.
        assert stats["decode"].stats.kv_blocks.prefix_query_tokens == 0
        assert stats["prefill"].stats.kv_blocks.prefix_query_tokens > 0
        if d is not llama:
            assert d.server.terminate() == 0
    finally:
        if d is not llama:
            d.close()


def test_64_concurrent_streams_are_all_correct(llama, stubs, testdata):
    goldens = goldens_of(testdata, "tiny-llama")

    def run(i):
        prompt, expected = goldens[i % N_PROMPTS]
        tokens, completion = collect(llama.gen.Generate(greedy(stubs, prompt, request_id=f"conc-{i}"),
                                                        timeout=60))
        return i, tokens, expected, completion

    with ThreadPoolExecutor(N_CONCURRENT) as pool:
        results = list(pool.map(run, range(N_CONCURRENT)))
    for i, tokens, expected, completion in results:
        assert tokens == expected, f"stream {i}"
        assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
    llama.wait_pools_whole()


def test_cancel_mid_decode_leaves_both_pools_whole(llama, stubs):
    prompt = np.random.default_rng(7).integers(3, 49152, size=100).tolist()
    call = llama.gen.Generate(greedy(stubs, prompt, max_tokens=3900))
    tokens = []
    for msg in call:
        assert not msg.HasField("completion"), "finished before the test could cancel it"
        tokens += list(msg.token_ids)
        if len(tokens) >= 3:
            break
    assert llama.stats("decode").stats.kv_blocks.in_use > 0, "the decode worker holds no KV mid-decode"
    call.cancel()
    with pytest.raises(grpc.RpcError) as e:
        for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.CANCELLED
    llama.wait_pools_whole()


def test_sigkill_of_the_decode_worker_gives_unavailable_within_5s(start_server, stubs, testdata):
    d = start(start_server, stubs, testdata, "tiny-llama")
    try:
        prompt = np.random.default_rng(8).integers(3, 49152, size=40).tolist()
        calls = [d.gen.Generate(greedy(stubs, prompt, max_tokens=3000, request_id=f"victim-{i}"))
                 for i in range(4)]
        for c in calls:
            next(iter(c))  # every stream has produced tokens: the decode worker holds them
        os.kill(d.workers["decode"][0], signal.SIGKILL)
        killed = time.monotonic()
        for c in calls:
            with pytest.raises(grpc.RpcError) as e:
                for _ in c:
                    pass
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value.details()
        assert time.monotonic() - killed < 5.0
        # The prefill worker's pool is whole too (its part ended at the handoff).
        p = d.stats("prefill")
        assert p.stats.kv_blocks.in_use == 0 and p.stats.num_live_requests == 0, str(p)
        assert d.server.terminate() == 0
        assert "decode worker 0" in d.server.log_text() and "exited" in d.server.log_text()
    finally:
        d.close()


def test_shipped_config_serves_and_stops_on_sigterm(start_server, stubs, testdata):
    srv = start_server(config_path=REPO / "configs" / "cpu-disagg.yaml",
                       model=testdata / "models" / "tiny-llama")
    with grpc.insecure_channel(srv.address) as ch:
        gen = stubs.gen_grpc.GenerationStub(ch)
        tokens, _ = collect(gen.Generate(greedy(stubs, [1, 2, 3], max_tokens=4)))
        assert len(tokens) == 4
        info = gen.ListModels(stubs.gen.ListModelsRequest()).models[0]
        assert info.vocab_size == 49152 and info.backend == "cpu"
    assert srv.terminate() == 0
    log = srv.log_text()
    assert "received SIGTERM" in log and "tandem serve: stopped" in log, log
