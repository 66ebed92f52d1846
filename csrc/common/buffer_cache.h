// Reuse of the CPU kernels' large output buffers (the CPU counterpart of CUDA's caching allocator).
//
// A fresh CPU tensor above glibc's mmap threshold (at most 32 MiB) is a fresh mapping: the kernel
// zeroes every page on its first touch. For the memory op's many-query regime that costs more than the
// kernel itself: its forward writes a fresh 100 MB `read` (131072 x 192 fp32) every call, and the
// first touch of 100 MB took ~10 ms of a 15 ms forward on the 2-core EPYC (2 threads, huge pages on;
// the block kernel alone, on buffers already touched, runs at ~5 ms). glibc returns such a mapping to
// the OS on free, so every call pays again.
//
// Used for the large outputs of every CPU kernel (memory_address read / grad_q / weights, lka3d and
// lsta out / grad, masked_cube_embed's tokens). empty_cached(sizes, options) gives a CPU tensor whose
// storage comes from a small cache of freed blocks: blocks of at least kBufferCacheMinBytes (smaller
// ones come from torch's own allocator, which is cheap for them), sizes rounded up to 2 MiB, 2 MiB aligned and advised to use transparent huge pages. When
// such a tensor dies its block goes back to the cache (newest first) and the next request of the same
// rounded size takes it, already touched. Idle blocks are bounded by a limit (env
// MGNET_CPU_BUFFER_CACHE_MB, default 512; 0 turns the cache off); the oldest idle blocks are freed
// first. Python: mgnet.ops.buffer_cache_info() / empty_buffer_cache() / set_buffer_cache_limit().
// The storages are ordinary, resizable ATen storages: autograd, views, resize_ and pickling behave
// as with any CPU tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace mgnet {

constexpr int64_t kBufferCacheMinBytes = int64_t(4) << 20;

// torch.empty(sizes, options) for a CPU tensor; from the cache when it is at least kBufferCacheMinBytes.
at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options);

inline at::Tensor empty_like_cached(const at::Tensor& t) { return empty_cached(t.sizes(), t.options()); }

}  // namespace mgnet
