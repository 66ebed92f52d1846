// Dynamic work distribution for the C++ CPU kernels.
//
// at::parallel_for hands each thread one fixed, equal share of the range. On a machine shared with
// other jobs a preempted thread then finishes its share late while the others wait at the region's
// end (measured: the memory_address forward ran 1.5-2x its unloaded time on a 2-core machine with one
// other busy process). parallel_dynamic starts one task per thread and lets the threads pull chunks of
// `grain` items from a shared counter, so that a thread that runs gets the work a stalled one leaves.
// Which thread computes a chunk then varies from call to call: callers keep every result a function of
// its chunk alone (partials indexed by chunk, never by thread) so that results stay bit-identical.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace mgnet {

// fn(b, e) for consecutive chunks [b, e) of [0, n), each at most `grain` items long.
template <typename F>
void parallel_dynamic(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t nchunks = (n + grain - 1) / grain;
  const int64_t nthreads = std::min<int64_t>(at::get_num_threads(), nchunks);
  if (nthreads <= 1 || at::in_parallel_region()) {
    for (int64_t b = 0; b < n; b += grain) fn(b, std::min(n, b + grain));
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= nchunks) break;
      fn(c * grain, std::min(n, (c + 1) * grain));
    }
  });
}

}  // namespace mgnet
