"""Disaggregation across "hosts" on one machine: scripts/netns-cluster.sh puts a prefill worker and
a decode worker in two network namespaces on a private /24 it creates (10.231.N.0/24: the router
and this client on .1 in the root namespace, prefill on .2, decode on .3, joined by a bridge in a
third namespace). `tandem worker` and `tandem router` run as separate processes, each on its own
address, so the KV moves over TCP between namespaces. Checks the greedy goldens and that the decode
worker's KV receiver is on its own address, then tears everything down in a finally block.

Skipped (with the reason) only when not root or when `ip netns` is unavailable.
"""
import os
import re
import shutil
import subprocess
import time

import grpc
import pytest

from conftest import REPO, tandem_bin
from test_disagg_cpu import N_PROMPTS, collect, goldens_of, greedy

SCRIPT = REPO / "scripts" / "netns-cluster.sh"
GUARD_S = 60  # hang guard for each wait below

CONFIG = """
deployment: disaggregated
log_level: info
model: {{path: "{model}", name: tiny-llama, backend: cpu, threads: 1}}
engine: {{block_size: 16, num_kv_blocks: 512, max_num_batched_tokens: 512, max_num_seqs: 32}}
server: {{max_live_requests: 64, poll_interval_ms: 20, shutdown_grace_s: 2}}
disaggregated: {{prefill_workers: 1, decode_workers: 1, kv_io_timeout_ms: 2000}}
"""


def netns_unavailable():
    if os.geteuid() != 0:
        return "needs root (creates network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"tdmprobe{os.getpid() % 100000}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def wait_for(pattern, path, proc, what):
    end = time.monotonic() + GUARD_S
    while time.monotonic() < end:
        m = re.search(pattern, path.read_text(errors="replace"))
        if m:
            return m
        assert proc.poll() is None, f"{what} exited with {proc.returncode}:\n{path.read_text(errors='replace')}"
        time.sleep(0.05)
    raise AssertionError(f"{what} did not start:\n{path.read_text(errors='replace')}")


def test_prefill_and_decode_workers_in_separate_network_namespaces(stubs, testdata, tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    import importlib

    worker_pb2 = importlib.import_module("tandem.v1.worker_pb2")
    worker_grpc = importlib.import_module("tandem.v1.worker_pb2_grpc")
    tag = f"tdm{os.getpid() % 100000}"
    net = f"10.231.{os.getpid() % 200 + 20}"
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(model=testdata / "models" / "tiny-llama"))
    procs = []

    def spawn(name, args, netns=None):
        log = tmp_path / f"{name}.log"
        prefix = ["ip", "netns", "exec", netns] if netns else []
        f = open(log, "wb")
        p = subprocess.Popen(prefix + [tandem_bin()] + args, stdout=subprocess.DEVNULL, stderr=f,
                             stdin=subprocess.DEVNULL)
        procs.append((p, f, name))
        return p, log

    try:
        r = subprocess.run([str(SCRIPT), "up", tag, net], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"netns-cluster.sh up failed:\n{r.stdout}\n{r.stderr}"
        prefill_addr, decode_addr = f"{net}.2:50061", f"{net}.3:50062"
        prefill, prefill_log = spawn("prefill", ["worker", "--role", "prefill", "--config", str(config),
                                                 "--listen", prefill_addr], f"{tag}-prefill")
        decode, decode_log = spawn("decode", ["worker", "--role", "decode", "--config", str(config),
                                              "--listen", decode_addr], f"{tag}-decode")
        router, router_log = spawn("router", ["router", "--config", str(config), "--prefill", prefill_addr,
                                              "--decode", decode_addr, "--listen", f"{net}.1:0"])
        kv = wait_for(r"KV receiver on (\S+:\d+)", decode_log, decode, "the decode worker")
        assert kv.group(1).startswith(f"{net}.3:"), kv.group(0)
        address = wait_for(r"serving tandem.v1.Generation on (\S+:\d+)", router_log, router,
                           "the router").group(1)
        assert address.startswith(f"{net}.1:")

        with grpc.insecure_channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=GUARD_S)
            gen = stubs.gen_grpc.GenerationStub(ch)
            for i, (prompt, expected) in enumerate(goldens_of(testdata, "tiny-llama")):
                tokens, completion = collect(gen.Generate(greedy(stubs, prompt, request_id=f"netns-{i}"),
                                                          timeout=GUARD_S))
                assert tokens == expected, f"p{i}"
                assert completion.finish_reason == stubs.gen.FINISH_REASON_LENGTH
        assert N_PROMPTS == 6
        # The prefill worker did the prompts, the decode worker the rest: the KV crossed namespaces.
        for addr, role in ((prefill_addr, "prefill"), (decode_addr, "decode")):
            with grpc.insecure_channel(addr) as ch:
                s = worker_grpc.WorkerStub(ch).GetWorkerStats(worker_pb2.WorkerStatsRequest(),
                                                              timeout=10, wait_for_ready=True)
            assert s.role == role and s.stats.kv_blocks.in_use == 0, str(s)
            if role == "prefill":
                assert s.stats.kv_blocks.prefix_query_tokens > 0, str(s)
            else:
                assert s.stats.kv_blocks.prefix_query_tokens == 0 and s.stats.num_steps > 0, str(s)
    finally:
        for p, f, name in reversed(procs):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            f.close()
        subprocess.run([str(SCRIPT), "down", tag], capture_output=True, timeout=30)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        assert tag not in listed, f"namespaces left behind: {listed}"
