// Internal to the NCCL KV transport: the state of its sender pairs, transfers and receiver
// connections (nested types of NcclKvTransport), shared by nccl_kv_transport.cpp (sender) and
// nccl_kv_receiver.cpp (receiver).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "tandem/request.h"  // Clock
#include "transfer/nccl/nccl_kv_transport.h"
#include "transfer/nccl/nccl_wire.h"

namespace tandem {

// The protocol's vocabulary, for the two files that implement it (this header is theirs alone).
using nccl_wire::AbortPairComms;
using nccl_wire::CreatePairComms;
using nccl_wire::Frame;
using nccl_wire::GetGeometry;
using nccl_wire::kVersion;
using nccl_wire::kWarmupBytes;
using nccl_wire::LayersPerSend;
using nccl_wire::Millis;
using nccl_wire::MillisText;
using nccl_wire::NcclStatus;
using nccl_wire::PairComms;
using nccl_wire::PutGeometry;
using nccl_wire::Readable;
using nccl_wire::ReadFrame;
using nccl_wire::WaitComm;
using nccl_wire::WaitEvent;
using nccl_wire::WriteFrame;

// Sender side: the pair (this prefill worker, one decode worker).
struct NcclKvTransport::Peer {
  std::string endpoint;
  net::Socket socket;
  std::mutex write_mu;           // control writes (engine thread, reader thread)
  std::mutex nccl_mu;            // NCCL calls on comm
  nccl_wire::PairComms comms;    // GUARDED_BY(nccl_mu); null once aborted
  cudaStream_t stream = nullptr; // the pair's send stream
  std::atomic<bool> broken{false};
  std::thread reader;

  Status WriteControl(nccl_wire::Frame type, const std::vector<std::byte>& payload, nccl_wire::Millis timeout) {
    std::lock_guard<std::mutex> lock(write_mu);
    return nccl_wire::WriteFrame(socket.fd(), type, payload, timeout);
  }
};

// Sender side: one request's transfer, from Begin until its verdict.
struct NcclKvTransport::Outgoing {
  std::string request_id;
  std::shared_ptr<Peer> peer;
  size_t offset = 0;                 // staging: the KV, then the block ids
  int32_t num_blocks = 0;
  int32_t num_tokens = 0;
  cudaEvent_t sent = nullptr;        // on the peer's stream, after the last layer's send
  bool committed = false;            // engine thread, then read under mu_
  Clock::time_point committed_at;
  bool staging_freed = false;        // GUARDED_BY(mu_)
  std::optional<Status> result;      // GUARDED_BY(mu_)
  bool abandoned = false;            // GUARDED_BY(mu_): nobody waits in Send (dropped or forgotten)
};

// Receiver side: one announced transfer.
struct NcclKvTransport::Incoming {
  KvHandoff header;
  Status accepted;                   // the handler's verdict on the header
  size_t offset = 0;
  bool posted = false;
  bool received = false;
  bool committed = false;
  bool keep = false;
  TokenId first_token = 0;
  std::shared_ptr<CUevent_st> done;  // recorded after the batch's receives; shared by its transfers
  Clock::time_point posted_at;
};

}  // namespace tandem
