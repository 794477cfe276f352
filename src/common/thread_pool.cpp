#include "common/thread_pool.h"

#include <algorithm>

namespace tandem {

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < std::max(1, num_threads); ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

int ThreadPool::DefaultThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void ThreadPool::ParallelFor(int64_t n, int64_t min_chunk,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  const int64_t threads = num_threads();
  // About four chunks per thread for balance, never below min_chunk.
  int64_t chunk = std::max(min_chunk, (n + threads * 4 - 1) / (threads * 4));
  if (workers_.empty() || n <= chunk) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = chunk;
  next_chunk_start_ = 0;
  ++generation_;
  lock.unlock();
  work_cv_.notify_all();
  // The calling thread takes chunks too.
  while (true) {
    lock.lock();
    int64_t begin = next_chunk_start_;
    if (begin >= job_n_) break;
    next_chunk_start_ = std::min(job_n_, begin + job_chunk_);
    int64_t end = next_chunk_start_;
    lock.unlock();
    fn(begin, end);
  }
  done_cv_.wait(lock, [this] { return busy_workers_ == 0; });
  job_ = nullptr;
}

void ThreadPool::WorkerLoop(int /*index*/) {
  int64_t seen_generation = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    work_cv_.wait(lock, [&] { return stop_ || (job_ != nullptr && generation_ != seen_generation); });
    if (stop_) return;
    seen_generation = generation_;
    ++busy_workers_;
    while (next_chunk_start_ < job_n_) {
      int64_t begin = next_chunk_start_;
      next_chunk_start_ = std::min(job_n_, begin + job_chunk_);
      int64_t end = next_chunk_start_;
      const auto* job = job_;
      lock.unlock();
      (*job)(begin, end);
      lock.lock();
    }
    --busy_workers_;
    if (busy_workers_ == 0) done_cv_.notify_all();
  }
}

}  // namespace tandem
