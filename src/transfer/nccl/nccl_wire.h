// Internal to the NCCL KV transport (nccl_kv_transport.h): the control protocol's framing and the
// bounded waits on NCCL communicators and CUDA events, shared by its sender and receiver halves.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tandem/status.h"
#include "transfer/kv_handoff.h"
#include "transfer/socket_io.h"

namespace tandem::nccl_wire {

inline constexpr uint32_t kMagic = 0x31564b4e;  // "NKV1"
inline constexpr uint32_t kVersion = 3;
inline constexpr size_t kMaxControlPayload = 1 << 20;
inline constexpr size_t kWarmupBytes = 256;
// Layers per NCCL send when a transfer leaves in `sends` sends (consecutive layers each; a
// transfer's staging is layer-major so they are contiguous). The sender's choice
// (NcclKvTransportOptions::sends_per_transfer) travels in its hello.
inline int32_t LayersPerSend(int32_t num_layers, int32_t sends) {
  const int32_t n = (num_layers + sends - 1) / sends;
  return n > 1 ? n : 1;
}

enum class Frame : uint32_t { kHello = 1, kVerdict = 2, kBatch = 3, kCommit = 4, kAck = 5 };

using net::Millis;

std::string MillisText(Millis m);

// A pair's two communicators. `setup` is non-blocking, so creating it (which waits for the peer) is
// bounded and abortable; `data`, split from it with blocking = 1, carries the sends and receives:
// an ncclGroupEnd on a non-blocking communicator starts a thread per call and returns before the
// launch (~0.2 ms per send measured, benchmarks/RESULTS.md), on a blocking one it launches on the
// calling thread in microseconds. Both ranks create them together.
struct PairComms {
  ncclComm_t setup = nullptr;
  ncclComm_t data = nullptr;
};
Status CreatePairComms(const ncclUniqueId& id, int rank, Millis timeout, PairComms* comms);
// Aborts both (ends operations stuck on them); null afterwards. No-op on null ones.
void AbortPairComms(PairComms* comms);
// OK for ncclSuccess and ncclInProgress; Unavailable naming `what` otherwise.
Status NcclStatus(ncclResult_t r, const std::string& what);
// A non-blocking communicator's last call has finished (ncclInProgress turned into ncclSuccess),
// or its error; DeadlineExceeded after `timeout`.
Status WaitComm(ncclComm_t comm, Millis timeout, const std::string& what);
// Polls `event` until the work before it ran; DeadlineExceeded after `timeout` (a peer that never
// posts its half of a send/recv pair).
Status WaitEvent(cudaEvent_t event, Millis timeout, const std::string& what);

Status WriteFrame(int fd, Frame type, const std::vector<std::byte>& payload, Millis timeout);
StatusOr<std::pair<Frame, std::vector<std::byte>>> ReadFrame(int fd, Millis timeout);
void PutGeometry(net::PayloadWriter& w, const KvGeometry& g);
bool GetGeometry(net::PayloadReader& r, KvGeometry* g);
// Readable within `timeout`? (false on timeout; errors surface on the read that follows)
bool Readable(int fd, Millis timeout);

}  // namespace tandem::nccl_wire
