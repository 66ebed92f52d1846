// The cache of large CPU output buffers (see buffer_cache.h for why).
#include "buffer_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mgnet {
namespace {

constexpr size_t kHuge = size_t(2) << 20;

size_t limit_from_env() {
  const char* v = std::getenv("MGNET_CPU_BUFFER_CACHE_MB");
  if (v == nullptr || *v == '\0') return size_t(512) << 20;
  size_t mb = 0;
  for (const char* c = v; *c != '\0'; ++c) {  // digits only, as mgnet.ops.buffer_cache.check_env
    TORCH_CHECK(*c >= '0' && *c <= '9' && mb < (size_t(1) << 40),
                "MGNET_CPU_BUFFER_CACHE_MB must be a whole number of MiB >= 0, got '", v, "'");
    mb = mb * 10 + size_t(*c - '0');
  }
  return mb << 20;
}

struct Block {
  void* ptr;
  size_t bytes;
};

class BufferCache final : public c10::Allocator {
 public:
  BufferCache() : limit_(limit_from_env()) {}

  c10::DataPtr allocate(size_t n) override {
    const size_t bytes = (std::max<size_t>(n, 1) + kHuge - 1) / kHuge * kHuge;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if (it->bytes != bytes) continue;
        Block b = *it;
        idle_.erase(it);
        idle_bytes_ -= b.bytes;
        ++hits_;
        return make(b);
      }
      ++misses_;
    }
    void* p = std::aligned_alloc(kHuge, bytes);
    if (p == nullptr) {
      release_idle(0);  // the idle blocks may be what is missing
      p = std::aligned_alloc(kHuge, bytes);
    }
    TORCH_CHECK(p != nullptr, "mgnet buffer cache: out of memory allocating ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    (void)madvise(p, bytes, MADV_HUGEPAGE);  // a hint: ignored where transparent huge pages are off
#endif
    return make(Block{p, bytes});
  }

  void copy_data(void* dest, const void* src, size_t count) const override { std::memcpy(dest, src, count); }

  // A block whose tensor died: kept (newest first) while the idle ones fit the limit.
  void give_back(Block b) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (b.bytes > limit_) {
        drop.push_back(b.ptr);
      } else {
        idle_.push_front(b);
        idle_bytes_ += b.bytes;
        trim_locked(limit_, drop);
      }
    }
    for (void* p : drop) std::free(p);
  }

  // Frees idle blocks until at most `keep` bytes stay idle.
  void release_idle(size_t keep) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      trim_locked(keep, drop);
    }
    for (void* p : drop) std::free(p);
  }

  void set_limit(size_t limit) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = limit;
    }
    release_idle(limit);
  }

  std::vector<int64_t> info() {
    std::lock_guard<std::mutex> lock(mu_);
    return {int64_t(limit_), int64_t(idle_bytes_), int64_t(idle_.size()), hits_, misses_};
  }

  bool enabled() {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_ > 0;
  }

 private:
  struct Ctx {
    BufferCache* cache;
    Block block;
  };

  static void deleter(void* ctx) {
    auto* c = static_cast<Ctx*>(ctx);
    c->cache->give_back(c->block);
    delete c;
  }

  c10::DataPtr make(Block b) {
    return {b.ptr, new Ctx{this, b}, &BufferCache::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  void trim_locked(size_t keep, std::vector<void*>& drop) {
    while (idle_bytes_ > keep && !idle_.empty()) {  // oldest first
      drop.push_back(idle_.back().ptr);
      idle_bytes_ -= idle_.back().bytes;
      idle_.pop_back();
    }
  }

  std::mutex mu_;
  std::list<Block> idle_;
  size_t idle_bytes_ = 0;
  size_t limit_;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may outlive static destruction at interpreter exit.
BufferCache& cache() {
  static BufferCache* c = new BufferCache();
  return *c;
}

}  // namespace

at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "empty_cached: CPU tensors only");
  const at::ScalarType dtype = c10::typeMetaToScalarType(options.dtype());
  const int64_t nbytes = c10::multiply_integers(sizes) * int64_t(c10::elementSize(dtype));
  if (nbytes < kBufferCacheMinBytes || !cache().enabled()) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

namespace {

// [limit, idle bytes, idle blocks, hits, misses]
std::vector<int64_t> buffer_cache_info() { return cache().info(); }

void empty_buffer_cache() { cache().release_idle(0); }

void set_buffer_cache_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "set_buffer_cache_limit: the limit must be >= 0 bytes, got ", bytes);
  cache().set_limit(size_t(bytes));
}

}  // namespace
}  // namespace mgnet

TORCH_LIBRARY_FRAGMENT(mgnet_C, m) {
  m.def("buffer_cache_info", &mgnet::buffer_cache_info);
  m.def("empty_buffer_cache", &mgnet::empty_buffer_cache);
  m.def("set_buffer_cache_limit", &mgnet::set_buffer_cache_limit);
}
