"""`tandem serve` end to end, through the Python grpcio client generated from proto/ (a client
Tandem did not write), against HF transformers' goldens for tiny-llama.

- the six golden prompts return HF's greedy ids; 64 concurrent streams all do too;
- cancellation mid-prefill and mid-decode, and an expired deadline, leave the KV pool whole
  (free + cached == total, in_use == 0, read through tandem.v1.Admin/GetStats within 1 s);
- bad requests get INVALID_ARGUMENT / NOT_FOUND / ALREADY_EXISTS / RESOURCE_EXHAUSTED with a
  message that says what to change;
- grpc.health.v1 says SERVING; reflection lists the services;
- text prompts and text deltas through a tokenizer match HF `tokenizers`;
- SIGTERM drains and exits 0 (shipped config, and with a request in flight).
"""
import math
import shutil
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO

MODEL = "tiny-llama"
N_PROMPTS = 6
N_CONCURRENT = 64

# Small prefill chunks make a long prompt take many engine steps, so a cancel can land mid-prefill.
MAIN_CONFIG = """
deployment: colocated
log_level: info
model: {{path: "{model}", name: tiny-llama, backend: cpu, threads: 2}}
engine: {{block_size: 16, num_kv_blocks: 4096, max_num_batched_tokens: 64, max_num_seqs: 128}}
server: {{max_live_requests: 256, poll_interval_ms: 20, shutdown_grace_s: 5}}
"""

# 64 blocks of 16 tokens (1024 tokens) and two live requests at most: exercises RESOURCE_EXHAUSTED.
SMALL_CONFIG = """
model: {{path: "{model}", threads: 1}}
engine: {{block_size: 16, num_kv_blocks: 64, max_num_batched_tokens: 64}}
server: {{max_live_requests: 2, poll_interval_ms: 20, shutdown_grace_s: 0.5}}
"""


@pytest.fixture(scope="module")
def goldens(testdata):
    g = load_file(str(testdata / "models" / MODEL / "goldens.safetensors"))
    return [(g[f"p{i}.input_ids"].astype(np.int64).tolist(), g[f"p{i}.greedy_ids"].astype(np.int64).tolist())
            for i in range(N_PROMPTS)]


@pytest.fixture(scope="module")
def server(start_server, testdata):
    return start_server(MAIN_CONFIG.format(model=testdata / "models" / MODEL))


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(server.address)
    grpc.channel_ready_future(ch).result(timeout=60)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def gen(stubs, channel):
    return stubs.gen_grpc.GenerationStub(channel)


@pytest.fixture(scope="module")
def admin(stubs, channel):
    return stubs.admin_grpc.AdminStub(channel)


def greedy(stubs, prompt, max_tokens=16, **kwargs):
    sampling = stubs.gen.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return stubs.gen.GenerateRequest(prompt_token_ids=prompt, sampling=sampling, **kwargs)


def collect(stream):
    """All tokens of a stream, and its final message's completion."""
    tokens, completion, n_final = [], None, 0
    for msg in stream:
        assert completion is None, "a message came after the completion"
        tokens += list(msg.token_ids)
        if msg.HasField("completion"):
            completion = msg.completion
            n_final += 1
    assert n_final == 1, "the stream did not end with exactly one completion"
    return tokens, completion


def random_prompt(n, seed):
    return np.random.default_rng(seed).integers(3, 49152, size=n).tolist()


def wait_pool_whole(admin, stubs, guard_s=1.0):
    """Polls GetStats for at most guard_s until no request is live and no KV block is in use."""
    import time

    end = time.monotonic() + guard_s
    while True:
        s = admin.GetStats(stubs.admin.GetStatsRequest())
        kv = s.kv_blocks
        whole = s.num_live_requests == 0 and kv.in_use == 0 and kv.free + kv.cached == kv.total
        if whole or time.monotonic() >= end:
            break
        time.sleep(0.01)
    assert kv.total > 0
    assert s.num_live_requests == 0, f"requests still live after {guard_s} s: {s}"
    assert kv.in_use == 0, f"KV blocks still in use after {guard_s} s: {s}"
    assert kv.free + kv.cached == kv.total, str(s)
    return s


# --- correctness -------------------------------------------------------------------------------

def test_golden_prompts_return_hf_greedy_ids(gen, stubs, goldens):
    for i, (prompt, expected) in enumerate(goldens):
        tokens, completion = collect(gen.Generate(greedy(stubs, prompt, request_id=f"golden-{i}")))
        assert tokens == expected, f"p{i}"
        assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
        assert completion.usage.prompt_tokens == len(prompt)
        assert completion.usage.completion_tokens == 16
        t = completion.timings
        assert t.ttft_ms > 0 and t.e2e_ms >= t.ttft_ms and t.queue_ms >= 0 and t.prefill_ms >= 0
        assert t.transfer_ms == 0


def test_64_concurrent_streams_are_all_correct(gen, stubs, goldens, admin):
    def run(i):
        prompt, expected = goldens[i % N_PROMPTS]
        tokens, completion = collect(gen.Generate(greedy(stubs, prompt, request_id=f"conc-{i}")))
        return i, tokens, expected, completion

    with ThreadPoolExecutor(N_CONCURRENT) as pool:
        results = list(pool.map(run, range(N_CONCURRENT)))
    assert len(results) == N_CONCURRENT
    for i, tokens, expected, completion in results:
        assert tokens == expected, f"stream {i}"
        assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
    wait_pool_whole(admin, stubs)


def test_logprobs_are_streamed_when_asked(gen, stubs, goldens):
    prompt, expected = goldens[2]
    req = greedy(stubs, prompt)
    req.sampling.logprobs = 3
    tokens, lps = [], []
    for msg in gen.Generate(req):
        tokens += list(msg.token_ids)
        lps += list(msg.logprobs)
    assert tokens == expected
    assert [lp.token_id for lp in lps] == tokens
    for lp in lps:
        assert len(lp.top) == 3 and lp.top[0].token_id == lp.token_id  # greedy: the top-1
        assert lp.logprob <= 0 and math.isclose(lp.logprob, lp.top[0].logprob, rel_tol=1e-6)


def test_list_models_and_tokenize_without_tokenizer(gen, stubs):
    models = gen.ListModels(stubs.gen.ListModelsRequest()).models
    assert [m.id for m in models] == ["tiny-llama"]
    assert models[0].vocab_size == 49152 and models[0].max_model_len == 4096
    assert not models[0].has_tokenizer and models[0].backend == "cpu"
    with pytest.raises(grpc.RpcError) as e:
        gen.Tokenize(stubs.gen.TokenizeRequest(text="hello"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tokenizer" in e.value.details()


# --- cancellation and deadlines ----------------------------------------------------------------

def test_cancel_mid_prefill_frees_kv(gen, admin, stubs):
    # A 4000-token prompt in 64-token chunks: ~60 engine steps before the first token.
    for attempt in range(3):
        call = gen.Generate(greedy(stubs, random_prompt(4000, seed=100 + attempt), max_tokens=8))
        saw_blocks = False
        for _ in range(20000):  # bounded: until the request holds KV blocks
            s = admin.GetStats(stubs.admin.GetStatsRequest())
            if s.kv_blocks.in_use > 0:
                saw_blocks = True
                break
        call.cancel()
        tokens = []
        with pytest.raises(grpc.RpcError) as e:
            for msg in call:
                tokens += list(msg.token_ids)
        assert e.value.code() == grpc.StatusCode.CANCELLED
        wait_pool_whole(admin, stubs)
        if saw_blocks and not tokens:
            return  # cancelled while holding KV and before the first token: mid-prefill
    pytest.fail("could not cancel a request mid-prefill in 3 attempts")


def test_cancel_mid_decode_frees_kv(gen, admin, stubs):
    call = gen.Generate(greedy(stubs, random_prompt(100, seed=7), max_tokens=3900))
    tokens = []
    for msg in call:
        assert not msg.HasField("completion"), "finished before the test could cancel it"
        tokens += list(msg.token_ids)
        if len(tokens) >= 3:
            break
    call.cancel()
    with pytest.raises(grpc.RpcError) as e:
        for _ in call:
            pass
    assert e.value.code() == grpc.StatusCode.CANCELLED
    wait_pool_whole(admin, stubs)


def test_expired_deadline_aborts_and_frees_kv(gen, admin, stubs):
    before = admin.GetStats(stubs.admin.GetStatsRequest()).num_steps
    with pytest.raises(grpc.RpcError) as e:
        collect(gen.Generate(greedy(stubs, random_prompt(2000, seed=9), max_tokens=2000), timeout=0.5))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    s = wait_pool_whole(admin, stubs)
    assert s.num_steps > before, "the request never ran: the test no longer exercises the abort"


# --- errors ------------------------------------------------------------------------------------

def expect_error(gen, req, code, *needles):
    with pytest.raises(grpc.RpcError) as e:
        collect(gen.Generate(req))
    assert e.value.code() == code, e.value.details()
    for needle in needles:
        assert needle in e.value.details(), e.value.details()


def test_bad_requests_get_invalid_argument_with_a_useful_message(gen, stubs, admin):
    G = stubs.gen
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    expect_error(gen, greedy(stubs, [1, 2, 49152]), INVALID, "outside the vocabulary", "49152")
    expect_error(gen, greedy(stubs, [5, -1]), INVALID, "outside the vocabulary")
    expect_error(gen, G.GenerateRequest(), INVALID, "prompt is empty")
    expect_error(gen, G.GenerateRequest(prompt_token_ids=[1], text="hi"), INVALID, "not both")
    expect_error(gen, G.GenerateRequest(text="hello"), INVALID, "no tokenizer", "prompt_token_ids")
    expect_error(gen, greedy(stubs, random_prompt(4096, 1)), INVALID, "context", "4095")
    expect_error(gen, greedy(stubs, [1, 2], max_tokens=0), INVALID, "max_tokens")
    for field, value in [("temperature", float("nan")), ("temperature", -1.0), ("top_p", 0.0),
                         ("presence_penalty", 3.0), ("logprobs", 21)]:
        req = greedy(stubs, [1, 2])
        setattr(req.sampling, field, value)
        expect_error(gen, req, INVALID, field)
    expect_error(gen, greedy(stubs, [1], request_id="x" * 300), INVALID, "request_id")
    expect_error(gen, greedy(stubs, [1], model="llama-70b"), grpc.StatusCode.NOT_FOUND,
                 "llama-70b", "tiny-llama")
    # A live request's id cannot be reused.
    call = gen.Generate(greedy(stubs, random_prompt(50, 3), max_tokens=3900, request_id="dup"))
    next(iter(call))
    expect_error(gen, greedy(stubs, [1, 2], request_id="dup"), grpc.StatusCode.ALREADY_EXISTS, "dup")
    call.cancel()
    wait_pool_whole(admin, stubs)


def test_resource_exhausted_on_a_small_server(start_server, stubs, testdata):
    small = start_server(SMALL_CONFIG.format(model=testdata / "models" / MODEL))
    with grpc.insecure_channel(small.address) as ch:
        gen = stubs.gen_grpc.GenerationStub(ch)
        admin = stubs.admin_grpc.AdminStub(ch)
        # 1000 prompt + 100 output tokens need 69 blocks of 16; the whole cache has 64.
        expect_error(gen, greedy(stubs, random_prompt(1000, 4), max_tokens=100),
                     grpc.StatusCode.RESOURCE_EXHAUSTED, "KV blocks", "max_tokens")
        # Two live requests is the limit.
        calls = [gen.Generate(greedy(stubs, random_prompt(8, 10 + i), max_tokens=900)) for i in range(2)]
        for c in calls:
            next(iter(c))
        expect_error(gen, greedy(stubs, [1, 2]), grpc.StatusCode.RESOURCE_EXHAUSTED, "retry")
        for c in calls:
            c.cancel()
        wait_pool_whole(admin, stubs)
    assert small.terminate() == 0


# --- health, reflection, text ------------------------------------------------------------------

def test_health_check_is_serving(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "tandem.v1.Generation", "tandem.v1.Admin"]:
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_services(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="tandem.v1.Generation")]
    responses = list(stub.ServerReflectionInfo(iter(reqs)))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"tandem.v1.Generation", "tandem.v1.Admin", "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto, "no descriptor for Generation"


def test_text_prompt_and_deltas_match_hf_tokenizers(start_server, stubs, testdata, tmp_path):
    """tiny-llama's weights with GPT-2's tokenizer.json: the text path end to end."""
    from tokenizers import Tokenizer

    with tarfile.open(testdata / "tokenizers.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    model = tmp_path / "tiny-llama-gpt2"
    model.mkdir()
    for name in ["config.json", "generation_config.json", "model.safetensors"]:
        (model / name).symlink_to(testdata / "models" / MODEL / name)
    shutil.copy(tmp_path / "tokenizers" / "gpt2" / "tokenizer.json", model / "tokenizer.json")
    hf = Tokenizer.from_file(str(model / "tokenizer.json"))
    text = "The quick brown fox jumps over the lazy dog. Hello, world!"
    hf_ids = hf.encode(text, add_special_tokens=True).ids
    assert max(hf_ids) < 49152

    srv = start_server(config_path=REPO / "configs" / "cpu-colocated.yaml", model=model)
    with grpc.insecure_channel(srv.address) as ch:
        gen = stubs.gen_grpc.GenerationStub(ch)
        assert list(gen.Tokenize(stubs.gen.TokenizeRequest(text=text)).token_ids) == hf_ids
        info = gen.ListModels(stubs.gen.ListModelsRequest()).models[0]
        assert info.has_tokenizer and info.id == "tiny-llama-gpt2"  # --model renames it
        sampling = stubs.gen.SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
        by_text, text_out = [], ""
        for msg in gen.Generate(stubs.gen.GenerateRequest(text=text, sampling=sampling)):
            by_text += list(msg.token_ids)
            text_out += msg.text
        by_ids, _ = collect(gen.Generate(stubs.gen.GenerateRequest(prompt_token_ids=hf_ids,
                                                                   sampling=sampling)))
        assert by_text == by_ids and len(by_text) == 24
        assert text_out == hf.decode(by_text, skip_special_tokens=True)
    assert srv.terminate() == 0


# --- shutdown ----------------------------------------------------------------------------------

def test_sigterm_shuts_down_cleanly_with_the_shipped_config(start_server, stubs, testdata):
    srv = start_server(config_path=REPO / "configs" / "cpu-colocated.yaml",
                       model=testdata / "models" / MODEL)
    with grpc.insecure_channel(srv.address) as ch:
        gen = stubs.gen_grpc.GenerationStub(ch)
        tokens, _ = collect(gen.Generate(greedy(stubs, [1, 2, 3], max_tokens=4)))
        assert len(tokens) == 4
    assert srv.terminate() == 0
    log = srv.log_text()
    assert "received SIGTERM" in log and "stopped" in log, log


def test_sigterm_with_a_request_in_flight(start_server, stubs, testdata):
    srv = start_server(SMALL_CONFIG.format(model=testdata / "models" / MODEL))
    ch = grpc.insecure_channel(srv.address)
    gen = stubs.gen_grpc.GenerationStub(ch)
    call = gen.Generate(greedy(stubs, random_prompt(8, 11), max_tokens=1000))
    first = next(iter(call))
    assert len(first.token_ids) > 0
    outcome = {}

    def drain():
        try:
            for msg in call:
                if msg.HasField("completion"):
                    outcome["completion"] = msg.completion
        except grpc.RpcError as e:
            outcome["error"] = (e.code(), e.details())

    reader = threading.Thread(target=drain)
    reader.start()
    assert srv.terminate() == 0
    reader.join(timeout=60)
    assert not reader.is_alive()
    ch.close()
    # Either it finished within the grace period, or the server aborted it and said why.
    if "error" in outcome:
        code, details = outcome["error"]
        assert code == grpc.StatusCode.UNAVAILABLE, outcome
        assert "shut down" in details or "shutting down" in details, details
    else:
        assert outcome["completion"].finish_reason == stubs.gen.FINISH_REASON_LENGTH
