"""The router's routing policy end to end (src/router/worker_picker.h, DisaggExecutor), with real
`tandem serve` processes and the grpcio client generated from proto/:

- prefix-cache affinity (configs/cpu-disagg-2p2d.yaml): prompts sharing a long prefix land on the
  prefill worker that computed it (read back from each worker's prefix-cache stats), the second
  prompt of a fresh deployment goes to the other worker, and greedy outputs equal the goldens;
- decode retry (unequal KV pools through disaggregated.decode_engine): a decode worker whose
  blocks are taken by a reservation the router does not know of refuses with RESOURCE_EXHAUSTED,
  the router sends the request to the other decode worker, and the output equals the golden; a
  request no decode worker can hold fails RESOURCE_EXHAUSTED naming how many were tried; every
  pool is whole afterwards.
"""
import re
import time

import grpc
import numpy as np

from conftest import REPO
from test_disagg_cpu import Deployment, collect, goldens_of, greedy

BLOCK = 16


def cached_prefix(n):
    """Tokens of an n-token prompt the engine serves from the prefix cache when all of it is cached:
    whole blocks, leaving the last token to compute."""
    return (n - 1) // BLOCK * BLOCK


def prefill_kv(d):
    return [d.stats("prefill", i).stats.kv_blocks for i in range(len(d.pools["prefill"]))]


def test_prompts_sharing_a_prefix_land_on_the_prefill_worker_that_has_it(start_server, stubs, testdata):
    srv = start_server(config_path=REPO / "configs" / "cpu-disagg-2p2d.yaml",
                       model=testdata / "models" / "tiny-llama")
    d = Deployment(srv, stubs)
    try:
        goldens = goldens_of(testdata, "tiny-llama")
        a, golden_a = goldens[5]  # 1000 tokens
        b, golden_b = goldens[4]  # 257 tokens
        tail = np.random.default_rng(11).integers(3, 49152, size=60).tolist()
        c = a[:992] + tail        # shares a's first 62 blocks
        prompts = {"a": (a, golden_a), "b": (b, golden_b), "c": (c, None)}
        served, outputs = {}, {}
        for step, name in enumerate(["a", "b", "c", "a", "b", "c", "a", "b"]):
            prompt, golden = prompts[name]
            before = prefill_kv(d)
            tokens, completion = collect(d.gen.Generate(
                greedy(stubs, prompt, request_id=f"affinity-{step}-{name}"), timeout=120))
            after = prefill_kv(d)
            # Every prompt token is looked up in the prefix cache of the worker that prefills it.
            moved = [i for i in range(2) if after[i].prefix_query_tokens != before[i].prefix_query_tokens]
            assert len(moved) == 1, f"{name}: prefill workers whose stats moved: {moved}"
            worker = moved[0]
            assert after[worker].prefix_query_tokens - before[worker].prefix_query_tokens == len(prompt)
            hits = after[worker].prefix_hit_tokens - before[worker].prefix_hit_tokens
            assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
            if golden is not None:
                assert tokens == golden, f"{name} at step {step}"
            outputs.setdefault(name, tokens)
            assert tokens == outputs[name], f"{name} changed between runs (step {step})"
            if name not in served:
                served[name] = worker
                if name == "c":  # its first 992 tokens were a's
                    assert worker == served["a"], "c did not follow its prefix to a's worker"
                    assert hits == 992
            else:
                assert worker == served[name], f"{name} moved from worker {served[name]} to {worker}"
                assert hits == cached_prefix(len(prompt)), f"{name}: {hits} tokens from the cache"
        # A fresh deployment: a goes to worker 0 (a tie: the lower index); b, with no prefix
        # anywhere, to the other one (a's worker was busy or is the one picked last).
        assert served["a"] == 0 and served["b"] == 1, served
        d.wait_pools_whole()
        assert srv.terminate() == 0
    finally:
        d.close()


ROUTING_CONFIG = """
deployment: disaggregated
log_level: info
model: {{path: "{model}", name: tiny-llama, backend: cpu, threads: 1}}
engine: {{block_size: 16, num_kv_blocks: 512, max_num_batched_tokens: 512, max_num_seqs: 64}}
server: {{max_live_requests: 64, poll_interval_ms: 20, shutdown_grace_s: 2}}
disaggregated:
  prefill_workers: 1
  decode_workers: 2
  kv_io_timeout_ms: 2000
  # The router's view of the workers stays what its first poll saw, so a reservation made behind
  # its back (as another router would) is one it cannot know of.
  stats_interval_ms: 600000
  decode_engine:
    - {{num_kv_blocks: 8}}   # decode worker 0: a tiny pool (128 tokens)
    - {{num_kv_blocks: 200}} # decode worker 1 (3200 tokens)
"""


def test_a_decode_worker_that_refuses_sends_the_request_to_the_other(start_server, stubs, testdata):
    srv = start_server(ROUTING_CONFIG.format(model=testdata / "models" / "tiny-llama"))
    d = Deployment(srv, stubs)
    try:
        decode_totals = [d.stats("decode", i).stats.kv_blocks.total for i in range(2)]
        assert decode_totals == [8, 200], decode_totals  # the per-worker overrides took effect
        # Wait for the router's first poll: its summed stats cover every worker's pool.
        admin = stubs.admin_grpc.AdminStub(d.channel)
        total = sum(s.stats.kv_blocks.total for s in d.all_stats().values())
        end = time.monotonic() + 60
        while admin.GetStats(stubs.admin.GetStatsRequest(), timeout=5).kv_blocks.total != total:
            assert time.monotonic() < end, "the router never polled every worker"
            time.sleep(0.02)

        # 1. A long request (3020 tokens: 189 blocks) fits only decode worker 1, which from now on
        #    looks busy to the router (and 189 blocks fuller: its whole max_tokens counted).
        long_prompt = np.random.default_rng(12).integers(3, 49152, size=20).tolist()
        long_call = d.gen.Generate(greedy(stubs, long_prompt, max_tokens=3000, request_id="long"))
        next(iter(long_call))  # streaming: decode worker 1 holds it
        assert d.stats("decode", 1).stats.num_live_requests == 1
        assert d.stats("decode", 0).stats.num_live_requests == 0

        # 2. Behind the router's back, a reservation takes 4 of decode worker 0's 8 blocks.
        worker0 = d.pools["decode"][0][1]
        phantom = worker0.Decode(d.worker_pb2.WorkerRequest(
            request_id="phantom", prompt_token_ids=list(range(3, 63)),
            sampling=stubs.gen.SamplingParams(temperature=0.0, max_tokens=4, seed=1)))
        assert next(phantom).accepted
        assert d.stats("decode", 0).num_reserved_kv_blocks == 4

        # 3. The golden prompt p3 (64 tokens + 16: 5 blocks) fits both workers as the router sees
        #    them; worker 0 is idle, worker 1 busy: worker 0 first. It refuses (4 blocks free); the
        #    router moves on to worker 1, which has room.
        prompt, golden = goldens_of(testdata, "tiny-llama")[3]
        steps1 = d.stats("decode", 1).stats.num_steps
        tokens, completion = collect(d.gen.Generate(greedy(stubs, prompt, request_id="retried"), timeout=60))
        assert tokens == golden
        assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
        assert d.stats("decode", 0).stats.num_steps == 0, "decode worker 0 decoded something"
        assert d.stats("decode", 1).stats.num_steps > steps1
        assert re.search(r"decode worker \S+ has no room for 'retried'", srv.log_text()), srv.log_text()

        # 4. A prompt no decode worker can hold (3300 tokens: 207 blocks): both refuse, and the
        #    error says how many were tried.
        huge = np.random.default_rng(13).integers(3, 49152, size=3300).tolist()
        try:
            collect(d.gen.Generate(greedy(stubs, huge, max_tokens=4, request_id="huge"), timeout=60))
            raise AssertionError("a request no decode worker can hold was admitted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
            assert "2 of the 2 decode workers tried refused" in e.details(), e.details()

        phantom.cancel()
        long_call.cancel()
        d.wait_pools_whole(guard_s=10)
        assert srv.terminate() == 0
    finally:
        d.close()
