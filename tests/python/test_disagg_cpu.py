"""Disaggregated prefill/decode on the CPU backend, end to end: `tandem serve` with
`deployment: disaggregated` starts 1 prefill worker + 1 decode worker + the router; the KV moves
between the workers over TCP. Through the Python grpcio client generated from proto/:

- the six golden prompts of tiny-llama and tiny-llama31 return HF's greedy ids;
- 64 concurrent streams are all correct, and both workers' KV pools are whole afterwards;
- 1P+1D and 2P+2D (configs/cpu-disagg-2p2d.yaml): 64 concurrent streams return the goldens in
  order, and with two workers per pool both workers of each pool did part of the work;
- cancellation mid-decode leaves both workers' KV pools whole (tandem.v1.Worker/GetWorkerStats);
- SIGKILL of the decode worker gives the affected clients UNAVAILABLE within 5 s;
- 2P+2D under load: SIGKILL of a decode worker fails only its streams (UNAVAILABLE within 5 s),
  `tandem serve` restarts it, the router takes it back, and no worker leaks KV blocks;
- past server.max_live_requests in flight the router answers RESOURCE_EXHAUSTED;
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
server: {{max_live_requests: {max_live}, poll_interval_ms: 20, shutdown_grace_s: 2}}
disaggregated: {{prefill_workers: {prefill}, decode_workers: {decode}, kv_io_timeout_ms: 2000}}
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
        # role -> [(pid, stub, channel)] in worker index order; workers[role][0] is worker 0.
        self.pools = {"prefill": [], "decode": []}
        for role, index, pid, addr in re.findall(
                r"started (prefill|decode) worker (\d+) \(pid (\d+)\) on (\S+:\d+)", log):
            ch = grpc.insecure_channel(addr)
            assert int(index) == len(self.pools[role]), log
            self.pools[role].append((int(pid), worker_grpc.WorkerStub(ch), ch))
        assert all(self.pools.values()), log
        self.workers = {role: pool[0] for role, pool in self.pools.items()}
        self.channel = grpc.insecure_channel(server.address)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.gen = stubs.gen_grpc.GenerationStub(self.channel)

    def stats(self, role, index=0):
        return self.pools[role][index][1].GetWorkerStats(self.worker_pb2.WorkerStatsRequest(), timeout=5,
                                                    wait_for_ready=True)

    def all_stats(self):
        """{"prefill 0": WorkerStats, ...} of every worker."""
        return {f"{role} {i}": self.stats(role, i) for role, pool in self.pools.items() for i in range(len(pool))}

    def wait_pools_whole(self, guard_s=2.0):
        """Every worker's KV pool is whole; returns {"prefill": stats of worker 0, ...} and more
        keys "prefill 0", "decode 1"... for every worker."""
        end = time.monotonic() + guard_s
        while True:
            stats = self.all_stats()
            whole = all(s.stats.num_live_requests == 0 and s.stats.kv_blocks.in_use == 0 and
                        s.num_transferring == 0 for s in stats.values())
            if whole or time.monotonic() >= end:
                break
            time.sleep(0.02)
        for name, s in stats.items():
            role = name.split()[0]
            kv = s.stats.kv_blocks
            assert kv.total > 0 and s.role == role
            assert s.stats.num_live_requests == 0, f"{role}: requests still live: {s}"
            assert kv.in_use == 0, f"{role}: KV blocks still in use: {s}"
            assert kv.free + kv.cached == kv.total, f"{role}: {s}"
            assert s.num_transferring == 0, f"{role}: {s}"
        stats.update({role: stats[f"{role} 0"] for role in self.pools})
        return stats

    def close(self):
        self.channel.close()
        for pool in self.pools.values():
            for _, _, ch in pool:
                ch.close()


def start(start_server, stubs, testdata, model, prefill=1, decode=1, max_live=256):
    server = start_server(CONFIG.format(model=testdata / "models" / model, name=model,
                                        prefill=prefill, decode=decode, max_live=max_live))
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
            # The KV handoff is timed by the prefill worker (read + push until the decode ack).
            if len(expected) > 1:
                assert 0 < t.transfer_ms < t.e2e_ms
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


@pytest.mark.parametrize("prefill,decode", [(1, 1), (2, 2)])
def test_concurrent_streams_over_pools_return_goldens_in_order(prefill, decode, llama, start_server,
                                                               stubs, testdata):
    """1P+1D and 2P+2D: 96 concurrent streams, every token list equal to the golden, in order; with
    two workers per pool each worker of each pool served part of the load (its stats moved)."""
    d = llama if (prefill, decode) == (1, 1) else start(start_server, stubs, testdata, "tiny-llama",
                                                        prefill, decode)
    try:
        assert [len(d.pools["prefill"]), len(d.pools["decode"])] == [prefill, decode]
        before = d.all_stats()
        goldens = goldens_of(testdata, "tiny-llama")
        n = 96

        def run(i):
            prompt, expected = goldens[i % N_PROMPTS]
            tokens, completion = collect(d.gen.Generate(
                greedy(stubs, prompt, request_id=f"pools-{prefill}{decode}-{i}"), timeout=90))
            return tokens, completion

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(run, range(n)))
        for i, (tokens, completion) in enumerate(results):
            expected = goldens[i % N_PROMPTS][1]
            assert tokens == expected, f"stream {i}"
            assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
        after = d.wait_pools_whole()
        for name, b in before.items():
            a = after[name]
            # Prefill workers see every prompt token as a prefix-cache query; decode workers step.
            moved = (a.stats.kv_blocks.prefix_query_tokens > b.stats.kv_blocks.prefix_query_tokens
                     if name.startswith("prefill") else a.stats.num_steps > b.stats.num_steps)
            assert moved, f"{name} did no work: before {b}, after {a}"
        if d is not llama:
            assert d.server.terminate() == 0
    finally:
        if d is not llama:
            d.close()


def test_shipped_2p2d_config_starts_two_workers_per_pool(start_server, stubs, testdata):
    srv = start_server(config_path=REPO / "configs" / "cpu-disagg-2p2d.yaml",
                       model=testdata / "models" / "tiny-llama")
    d = Deployment(srv, stubs)
    try:
        assert [len(d.pools["prefill"]), len(d.pools["decode"])] == [2, 2]
        prompt, expected = goldens_of(testdata, "tiny-llama")[0]
        tokens, _ = collect(d.gen.Generate(greedy(stubs, prompt), timeout=60))
        assert tokens == expected
        assert srv.terminate() == 0
    finally:
        d.close()


def test_a_request_id_is_free_again_as_soon_as_its_stream_ended(llama, stubs):
    # The router's final message comes after both worker calls ended, so a client that reuses the
    # id at once is admitted — also when the request ends at its first token on the prefill worker
    # (its decode reservation is cancelled first).
    prompt = np.random.default_rng(11).integers(3, 2000, size=40).tolist()
    for max_tokens in (1, 4, 1, 4, 1):
        tokens, completion = collect(llama.gen.Generate(greedy(stubs, prompt, max_tokens=max_tokens,
                                                               request_id="reused-id")))
        assert len(tokens) == max_tokens
        assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
    llama.wait_pools_whole()


def test_an_id_in_flight_is_refused_while_its_twin_runs(llama, stubs):
    prompt = np.random.default_rng(12).integers(3, 2000, size=30).tolist()
    first = llama.gen.Generate(greedy(stubs, prompt, max_tokens=200, request_id="twin"))
    next(iter(first))  # admitted and streaming
    with pytest.raises(grpc.RpcError) as e:
        collect(llama.gen.Generate(greedy(stubs, prompt, max_tokens=4, request_id="twin")))
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    tokens, completion = collect(first)
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


def test_sigkill_of_a_decode_worker_under_load_restarts_it_and_leaks_nothing(start_server, stubs, testdata):
    """2P+2D under load, SIGKILL of decode worker 1: its streams end UNAVAILABLE within 5 s, the
    other streams finish, `tandem serve` restarts the worker on its address, the router routes to
    it again (its new engine steps), new requests return the goldens, and no worker leaks KV."""
    import threading

    d = start(start_server, stubs, testdata, "tiny-llama", 2, 2)
    try:
        n, max_tokens = 16, 600
        prompt = np.random.default_rng(9).integers(3, 49152, size=40).tolist()
        started = [threading.Event() for _ in range(n)]
        results = [None] * n

        def run(i):
            call = d.gen.Generate(greedy(stubs, prompt, max_tokens=max_tokens, request_id=f"load-{i}"),
                                  timeout=120)
            tokens, completion = [], None
            try:
                for msg in call:
                    tokens += list(msg.token_ids)
                    started[i].set()
                    if msg.HasField("completion"):
                        completion = msg.completion
                results[i] = ("ok", tokens, completion, time.monotonic())
            except grpc.RpcError as e:
                results[i] = (e.code(), tokens, e.details(), time.monotonic())
            finally:
                started[i].set()

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for e in started:
            assert e.wait(60), "a stream produced no token"
        busy = [d.stats("decode", i).stats.num_live_requests for i in range(2)]
        assert all(b > 0 for b in busy), f"load not spread over both decode workers: {busy}"
        victim_pid = d.pools["decode"][1][0]
        os.kill(victim_pid, signal.SIGKILL)
        killed = time.monotonic()
        for t in threads:
            t.join(120)
            assert not t.is_alive(), "a stream hung after the kill"
        failed = [r for r in results if r[0] != "ok"]
        finished = [r for r in results if r[0] == "ok"]
        for code, _, details, at in failed:
            assert code == grpc.StatusCode.UNAVAILABLE, details
            assert at - killed < 5.0, f"UNAVAILABLE came {at - killed:.1f} s after the kill"
        assert failed, "no stream was on the killed worker"
        assert finished, "no stream survived the kill of one decode worker"
        for _, tokens, completion, _ in finished:
            assert len(tokens) == max_tokens and completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH

        # The supervisor restarts it on the same address.
        end = time.monotonic() + 60
        while not re.search(r"restarted decode worker 1 \(pid (\d+)\)", d.server.log_text()):
            assert time.monotonic() < end, d.server.log_text()
            time.sleep(0.1)
        new_pid = int(re.search(r"restarted decode worker 1 \(pid (\d+)\)", d.server.log_text()).group(1))
        assert new_pid != victim_pid
        # New requests succeed, and the router takes the restarted worker back.
        goldens = goldens_of(testdata, "tiny-llama")
        end = time.monotonic() + 30
        while True:
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda i: collect(d.gen.Generate(
                    greedy(stubs, goldens[i % N_PROMPTS][0]), timeout=60))[0], range(8)))
            assert outs == [goldens[i % N_PROMPTS][1] for i in range(8)]
            if d.stats("decode", 1).stats.num_steps > 0:
                break
            assert time.monotonic() < end, "the router never routed to the restarted decode worker"
            time.sleep(0.2)
        d.wait_pools_whole(guard_s=10)
        log = d.server.log_text()
        assert "decode worker 1" in log and "restarting it in" in log, log
        assert d.server.terminate() == 0
    finally:
        d.close()


def test_router_refuses_past_max_live_requests_with_resource_exhausted(start_server, stubs, testdata):
    d = start(start_server, stubs, testdata, "tiny-llama", max_live=2)
    try:
        prompt = np.random.default_rng(10).integers(3, 49152, size=20).tolist()
        calls = [d.gen.Generate(greedy(stubs, prompt, max_tokens=3000, request_id=f"full-{i}")) for i in range(2)]
        for c in calls:
            next(iter(c))  # both admitted and streaming
        with pytest.raises(grpc.RpcError) as e:
            collect(d.gen.Generate(greedy(stubs, prompt, max_tokens=4, request_id="one-too-many"), timeout=30))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
        for c in calls:
            c.cancel()
        # Once they are gone the router admits again.
        end = time.monotonic() + 10
        while True:
            try:
                tokens, _ = collect(d.gen.Generate(greedy(stubs, prompt, max_tokens=4), timeout=30))
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < end
                time.sleep(0.05)
        assert len(tokens) == 4
        d.wait_pools_whole()
        assert d.server.terminate() == 0
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


def test_a_worker_refuses_the_nccl_transport_without_a_cuda_backend(tmp_path, testdata):
    # kv_transport: nccl moves KV between GPUs; a CPU worker must say so and exit, not serve.
    import subprocess
    from conftest import tandem_bin

    config = (REPO / "configs" / "cpu-disagg.yaml").read_text().replace("kv_transport: tcp", "kv_transport: nccl")
    path = tmp_path / "nccl-on-cpu.yaml"
    path.write_text(config)
    done = subprocess.run([tandem_bin(), "worker", "--role", "prefill", "--config", str(path),
                           "--model", str(testdata / "models" / "tiny-llama")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    # Built with NCCL: it needs the cuda backend; built without: this tandem has no NCCL.
    assert re.search(r"kv_transport nccl (needs the cuda backend|: this tandem was built without)",
                     done.stdout + done.stderr), done.stdout + done.stderr
