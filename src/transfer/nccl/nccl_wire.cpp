#include "transfer/nccl/nccl_wire.h"

#include <poll.h>

#include <chrono>
#include <thread>

#include "backend/cuda/cuda_check.h"
#include "tandem/request.h"  // Clock

namespace tandem::nccl_wire {

std::string MillisText(Millis m) { return std::to_string(m.count()) + " ms"; }

Status NcclStatus(ncclResult_t r, const std::string& what) {
  if (r == ncclSuccess || r == ncclInProgress) return OkStatus();
  return UnavailableError("NCCL " + what + ": " + ncclGetErrorString(r));
}

// Waits between polls: spin (yield) for the first 200 us — an enqueue on a non-blocking
// communicator usually completes within microseconds, and the engine thread enqueues a layer per
// call — then nap 50 us.
namespace {

void Backoff(Clock::time_point start) {
  if (Clock::now() - start < std::chrono::microseconds(200)) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace

Status WaitComm(ncclComm_t comm, Millis timeout, const std::string& what) {
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  for (;;) {
    ncclResult_t state = ncclSuccess;
    TANDEM_RETURN_IF_ERROR(NcclStatus(ncclCommGetAsyncError(comm, &state), what));
    if (state == ncclSuccess) return OkStatus();
    if (state != ncclInProgress) return NcclStatus(state, what);
    if (Clock::now() > deadline) {
      return DeadlineExceededError("NCCL " + what + " did not finish within " + MillisText(timeout));
    }
    Backoff(start);
  }
}

Status CreatePairComms(const ncclUniqueId& id, int rank, Millis timeout, PairComms* comms) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  TANDEM_RETURN_IF_ERROR(
      NcclStatus(ncclCommInitRankConfig(&comms->setup, 2, id, rank, &config), "ncclCommInitRankConfig"));
  TANDEM_RETURN_IF_ERROR(WaitComm(comms->setup, timeout, "communicator setup"));
  ncclConfig_t data_config = NCCL_CONFIG_INITIALIZER;
  data_config.blocking = 1;
  data_config.splitShare = 1;  // the split shares the parent's resources
  TANDEM_RETURN_IF_ERROR(
      NcclStatus(ncclCommSplit(comms->setup, 0, rank, &comms->data, &data_config), "ncclCommSplit"));
  // A non-blocking parent runs the split in the background and sets `data` once it is complete.
  TANDEM_RETURN_IF_ERROR(WaitComm(comms->setup, timeout, "data communicator setup"));
  if (comms->data == nullptr) return UnavailableError("NCCL ncclCommSplit gave no communicator");
  return WaitComm(comms->data, timeout, "data communicator setup");
}

void AbortPairComms(PairComms* comms) {
  if (comms->data != nullptr) (void)ncclCommAbort(comms->data);
  if (comms->setup != nullptr) (void)ncclCommAbort(comms->setup);
  comms->data = nullptr;
  comms->setup = nullptr;
}

Status WaitEvent(cudaEvent_t event, Millis timeout, const std::string& what) {
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  for (;;) {
    const cudaError_t e = cudaEventQuery(event);
    if (e == cudaSuccess) return OkStatus();
    if (e != cudaErrorNotReady) return CudaErrorToStatus(e, what);
    if (Clock::now() > deadline) {
      return DeadlineExceededError(what + " did not finish within " + MillisText(timeout));
    }
    Backoff(start);
  }
}

Status WriteFrame(int fd, Frame type, const std::vector<std::byte>& payload, Millis timeout) {
  return net::WriteFrame(fd, kMagic, static_cast<uint32_t>(type), payload.data(), payload.size(), timeout);
}

StatusOr<std::pair<Frame, std::vector<std::byte>>> ReadFrame(int fd, Millis timeout) {
  TANDEM_ASSIGN_OR_RETURN(net::FrameHeader h, net::ReadFrameHeader(fd, kMagic, 0, timeout));
  TANDEM_ASSIGN_OR_RETURN(std::vector<std::byte> payload,
                          net::ReadFramePayload(fd, h, kMaxControlPayload, timeout));
  return std::make_pair(static_cast<Frame>(h.type), std::move(payload));
}

void PutGeometry(net::PayloadWriter& w, const KvGeometry& g) {
  w.Put<int32_t>(g.num_layers);
  w.Put<int32_t>(g.block_size);
  w.Put<int32_t>(g.num_kv_heads);
  w.Put<int32_t>(g.head_dim);
  w.Put<uint32_t>(static_cast<uint32_t>(g.dtype));
}

bool GetGeometry(net::PayloadReader& r, KvGeometry* g) {
  uint32_t dtype = 0;
  if (!(r.Get(&g->num_layers) && r.Get(&g->block_size) && r.Get(&g->num_kv_heads) && r.Get(&g->head_dim) &&
        r.Get(&dtype))) {
    return false;
  }
  g->dtype = static_cast<DType>(dtype);
  return true;
}

bool Readable(int fd, Millis timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) != 0;
}

}  // namespace tandem::nccl_wire
