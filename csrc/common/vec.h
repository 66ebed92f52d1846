// SIMD helpers of the C++ CPU kernels: GCC/Clang vector extensions of float and double, loads and
// stores, horizontal sums, exp / log on whole vectors, norms and dot products.
//
// Width (MGNET_VEC_BYTES, overridable with -D): 64 bytes with AVX-512, 32 with AVX2, 16 otherwise
// (lanes<float>() = 16 / 8 / 4), so that one Vec is one register of the machine the kernels are built
// for (-march, setup.py's MGNET_CPU_ARCH) and vload can pin it there. The register blocks of the
// kernels are counted in vectors, so they shrink with the width; every helper here is written for any
// of the three widths.
#pragma once

#include <cmath>
#include <cstdint>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#ifndef MGNET_VEC_BYTES
#if defined(__AVX512F__)
#define MGNET_VEC_BYTES 64
#elif defined(__AVX2__)
#define MGNET_VEC_BYTES 32
#else
#define MGNET_VEC_BYTES 16
#endif
#endif
static_assert(MGNET_VEC_BYTES == 16 || MGNET_VEC_BYTES == 32 || MGNET_VEC_BYTES == 64,
              "MGNET_VEC_BYTES must be 16, 32 or 64");

// Whether one vector is one register (then vload may pin it in one with an "+v" asm constraint,
// which does not compile for a vector wider than the registers).
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) &&                        \
    ((MGNET_VEC_BYTES == 64 && defined(__AVX512F__)) || (MGNET_VEC_BYTES == 32 && defined(__AVX__)) || \
     (MGNET_VEC_BYTES == 16 && defined(__SSE2__)))
#define MGNET_VEC_ONE_REGISTER 1
#else
#define MGNET_VEC_ONE_REGISTER 0
#endif

namespace mgnet {
namespace vec {

typedef float vfloat __attribute__((vector_size(MGNET_VEC_BYTES)));
typedef double vdouble __attribute__((vector_size(MGNET_VEC_BYTES)));
typedef int32_t vint __attribute__((vector_size(MGNET_VEC_BYTES)));
typedef float vfloat_u __attribute__((vector_size(MGNET_VEC_BYTES), aligned(4), may_alias));
typedef double vdouble_u __attribute__((vector_size(MGNET_VEC_BYTES), aligned(8), may_alias));

template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = vfloat; using unaligned = vfloat_u; };
template <> struct VecOf<double> { using type = vdouble; using unaligned = vdouble_u; };
template <typename T> using Vec = typename VecOf<T>::type;
template <typename T> constexpr int lanes() { return int(sizeof(Vec<T>) / sizeof(T)); }

// A load the compiler keeps in a register (otherwise GCC folds it into every FMA that uses it and
// the inner loops become load-bound).
template <typename T> inline Vec<T> vload(const T* p) {
  Vec<T> v = *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
#if MGNET_VEC_ONE_REGISTER
  asm("" : "+v"(v));
#endif
  return v;
}
template <typename T> inline Vec<T> vloadf(const T* p) {  // foldable load
  return *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
}
template <typename T> inline void vstore(T* p, Vec<T> v) { *reinterpret_cast<typename VecOf<T>::unaligned*>(p) = v; }
// Streaming (non-temporal) store of one vector to a vector-aligned address: the line is written to memory
// without being read first (a plain store of a line not in cache reads it: a write-only output then
// costs twice its bytes) and without evicting the working set. Falls back to vstore where the ISA has
// none. Call vstream_fence() after the last one, before another thread may read what was written.
inline void vstream(float* p, Vec<float> v) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  _mm512_stream_ps(p, (__m512)v);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32
  _mm256_stream_ps(p, (__m256)v);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16
  _mm_stream_ps(p, (__m128)v);
#else
  *reinterpret_cast<Vec<float>*>(p) = v;
#endif
}
inline void vstream(double* p, Vec<double> v) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  _mm512_stream_pd(p, (__m512d)v);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32
  _mm256_stream_pd(p, (__m256d)v);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16
  _mm_stream_pd(p, (__m128d)v);
#else
  *reinterpret_cast<Vec<double>*>(p) = v;
#endif
}
inline void vstream_fence() {
#if MGNET_VEC_ONE_REGISTER
  _mm_sfence();
#endif
}
template <typename T> inline Vec<T> vzero() { return Vec<T>{}; }
template <typename T> inline Vec<T> vbcast(T x) { return vzero<T>() + x; }
// Broadcast of a value read from memory: one vbroadcastss / vbroadcastsd (vbcast's 0 + x is an add first,
// kept there because it maps -0 to +0 and callers' results are pinned to it).
inline vfloat vsplat(const float* p) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  return (vfloat)_mm512_set1_ps(*p);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32
  return (vfloat)_mm256_broadcast_ss(p);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16
  return (vfloat)_mm_load1_ps(p);
#else
  vfloat v;
  for (int l = 0; l < lanes<float>(); ++l) v[l] = *p;
  return v;
#endif
}
inline vdouble vsplat(const double* p) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  return (vdouble)_mm512_set1_pd(*p);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32
  return (vdouble)_mm256_broadcast_sd(p);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16
  return (vdouble)_mm_load1_pd(p);
#else
  vdouble v;
  for (int l = 0; l < lanes<double>(); ++l) v[l] = *p;
  return v;
#endif
}
// a * b + c rounded once where the ISA has FMA (a * b + c otherwise). -ffp-contract=fast contracts most
// such expressions, but not all (GCC leaves some as mul + add depending on the code around them): two
// paths that must give the same bits use these.
inline vfloat vfma(vfloat a, vfloat b, vfloat c) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  return (vfloat)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32 && defined(__FMA__)
  return (vfloat)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16 && defined(__FMA__)
  return (vfloat)_mm_fmadd_ps((__m128)a, (__m128)b, (__m128)c);
#else
  return a * b + c;
#endif
}
inline vdouble vfma(vdouble a, vdouble b, vdouble c) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  return (vdouble)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32 && defined(__FMA__)
  return (vdouble)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16 && defined(__FMA__)
  return (vdouble)_mm_fmadd_pd((__m128d)a, (__m128d)b, (__m128d)c);
#else
  return a * b + c;
#endif
}
template <typename T> inline T sfma(T a, T b, T c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}
// Lane-wise square root (libm per lane where the ISA has no vector instruction for this width).
inline vfloat vsqrt(vfloat x) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  return (vfloat)_mm512_sqrt_ps((__m512)x);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32
  return (vfloat)_mm256_sqrt_ps((__m256)x);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16
  return (vfloat)_mm_sqrt_ps((__m128)x);
#else
  for (int l = 0; l < lanes<float>(); ++l) x[l] = std::sqrt(x[l]);
  return x;
#endif
}
inline vdouble vsqrt(vdouble x) {
#if MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 64
  return (vdouble)_mm512_sqrt_pd((__m512d)x);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 32
  return (vdouble)_mm256_sqrt_pd((__m256d)x);
#elif MGNET_VEC_ONE_REGISTER && MGNET_VEC_BYTES == 16
  return (vdouble)_mm_sqrt_pd((__m128d)x);
#else
  for (int l = 0; l < lanes<double>(); ++l) x[l] = std::sqrt(x[l]);
  return x;
#endif
}
template <typename T> inline T hsum(Vec<T> v) {
  T s = 0;
  for (int l = 0; l < lanes<T>(); ++l) s += v[l];
  return s;
}

// Horizontal sums of lanes() vectors at once: lane k of the result = sum of a[k]'s lanes (a shuffle
// tree: each level adds the two halves of every group of lanes of two vectors).
inline vfloat reduce_lanes(const vfloat* a) {
#if MGNET_VEC_BYTES == 64
  vfloat t[8], u[4], v[2];
  for (int k = 0; k < 8; ++k)
    t[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int k = 0; k < 4; ++k)
    u[k] = __builtin_shufflevector(t[2 * k], t[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(t[2 * k], t[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int k = 0; k < 2; ++k)
    v[k] = __builtin_shufflevector(u[2 * k], u[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(u[2 * k], u[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(v[0], v[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(v[0], v[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#elif MGNET_VEC_BYTES == 32
  vfloat t[4], u[2];
  for (int k = 0; k < 4; ++k)
    t[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int k = 0; k < 2; ++k)
    u[k] = __builtin_shufflevector(t[2 * k], t[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(t[2 * k], t[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15);
#else
  vfloat t[2];
  for (int k = 0; k < 2; ++k)
    t[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 4, 5) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 2, 3, 6, 7);
  return __builtin_shufflevector(t[0], t[1], 0, 2, 4, 6) + __builtin_shufflevector(t[0], t[1], 1, 3, 5, 7);
#endif
}
inline vdouble reduce_lanes(const vdouble* a) {
#if MGNET_VEC_BYTES == 64
  vdouble t[4], u[2];
  for (int k = 0; k < 4; ++k)
    t[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int k = 0; k < 2; ++k)
    u[k] = __builtin_shufflevector(t[2 * k], t[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(t[2 * k], t[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  return __builtin_shufflevector(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15);
#elif MGNET_VEC_BYTES == 32
  vdouble t[2];
  for (int k = 0; k < 2; ++k)
    t[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 4, 5) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 2, 3, 6, 7);
  return __builtin_shufflevector(t[0], t[1], 0, 2, 4, 6) + __builtin_shufflevector(t[0], t[1], 1, 3, 5, 7);
#else
  return __builtin_shufflevector(a[0], a[1], 0, 2) + __builtin_shufflevector(a[0], a[1], 1, 3);
#endif
}

// exp / log on whole vectors. float: Cephes expf / logf (about 1 ulp), double: libm per lane.
inline vfloat vexp(vfloat x) {
  const vfloat lo = vbcast<float>(-87.33f), hi = vbcast<float>(88.37f);
  vfloat xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vfloat magic = vbcast<float>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vfloat f = xc * 1.44269504088896341f + magic;
  vfloat n = f - magic;
  vfloat r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vfloat p = vbcast<float>(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.0f;
  vint ni = (vint)f - (vint)magic;
  vfloat scale = (vfloat)((ni + 127) << 23);
  vfloat res = p * scale;
  return x < lo ? vzero<float>() : res;  // exp(-inf) = 0; NaN propagates
}
inline vdouble vexp(vdouble x) {
  for (int l = 0; l < lanes<double>(); ++l) x[l] = std::exp(x[l]);
  return x;
}
inline vfloat vlog(vfloat x) {  // x > 0, normal
  vint xi = (vint)x;
  vint e = ((xi >> 23) & 0xff) - 126;
  vfloat m = (vfloat)((xi & 0x807fffff) | 0x3f000000);  // x = m * 2^e, m in [0.5, 1)
  vfloat ef = __builtin_convertvector(e, vfloat);
  vint small = m < 0.707106781186547524f;
  ef = ef + __builtin_convertvector(small, vfloat);  // -1 where small
  m = small ? m + m - 1.0f : m - 1.0f;
  vfloat z = m * m;
  vfloat y = vbcast<float>(7.0376836292E-2f);
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y = y + ef * -2.12194440e-4f;
  y = y + z * -0.5f;
  return m + y + ef * 0.693359375f;
}
inline vdouble vlog(vdouble x) {
  for (int l = 0; l < lanes<double>(); ++l) x[l] = std::log(x[l]);
  return x;
}

// sum over c < n of term(c): vterm(c) gives the terms c .. c + L - 1 as a vector, sterm(c) one term.
// Two vector accumulators, then the scalar tail: the order of the additions depends only on n
// (never on threads).
template <typename T, typename VTerm, typename STerm>
inline T accumulate(int64_t n, VTerm vterm, STerm sterm) {
  constexpr int L = lanes<T>();
  Vec<T> a0 = vzero<T>(), a1 = vzero<T>();
  int64_t c = 0;
  for (; c + 2 * L <= n; c += 2 * L) {
    a0 += vterm(c);
    a1 += vterm(c + L);
  }
  for (; c + L <= n; c += L) a0 += vterm(c);
  T s = hsum<T>(a0 + a1);
  for (; c < n; ++c) s += sterm(c);
  return s;
}

// sum_c x[c]^2 and sum_c x[c] y[c] over n elements
template <typename T>
inline T sqnorm(const T* x, int64_t n) {
  return accumulate<T>(
      n, [&](int64_t c) { const Vec<T> v = vloadf(x + c); return v * v; }, [&](int64_t c) { return x[c] * x[c]; });
}

template <typename T>
inline T dot(const T* x, const T* y, int64_t n) {
  return accumulate<T>(
      n, [&](int64_t c) { return vloadf(x + c) * vloadf(y + c); }, [&](int64_t c) { return x[c] * y[c]; });
}

}  // namespace vec
}  // namespace mgnet
