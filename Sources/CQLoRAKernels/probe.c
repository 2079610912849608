// The machine's fp32 multiply-add ceiling, for benchmarks that report how
// much of it a workload uses. Twelve independent accumulators cover the FMA
// latency × ports of current cores (Zen 4: 4 × 2 halves; Skylake and later:
// 4 × 2), with the widest vectors the kernels use: AVX-512 where the
// products' tiled GEMM runs on it, AVX2+FMA, NEON, else scalar.
#include "CQLoRAKernels.h"
#include "internal.h"

enum { CHAINS = 12 };

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx512f"))) static double probe_avx512(int64_t iterations, float *sink) {
    __m512 acc[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (int64_t i = 0; i < iterations; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    __m512 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm512_add_ps(s, acc[c]);
    *sink = _mm512_reduce_add_ps(s);
    return 2.0 * 16 * CHAINS * (double)iterations;
}

__attribute__((target("avx2,fma"))) static double probe_avx2(int64_t iterations, float *sink) {
    __m256 acc[CHAINS];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps((float)c);
    for (int64_t i = 0; i < iterations; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    float lanes[8], total = 0;
    for (int c = 0; c < CHAINS; c++) {
        _mm256_storeu_ps(lanes, acc[c]);
        for (int l = 0; l < 8; l++) total += lanes[l];
    }
    *sink = total;
    return 2.0 * 8 * CHAINS * (double)iterations;
}
#elif defined(__aarch64__)
#include <arm_neon.h>

static double probe_neon(int64_t iterations, float *sink) {
    float32x4_t acc[CHAINS];
    const float32x4_t a = vdupq_n_f32(0.999999f), b = vdupq_n_f32(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = vdupq_n_f32((float)c);
    for (int64_t i = 0; i < iterations; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = vfmaq_f32(b, acc[c], a);
    float total = 0;
    for (int c = 0; c < CHAINS; c++) total += vaddvq_f32(acc[c]);
    *sink = total;
    return 2.0 * 4 * CHAINS * (double)iterations;
}
#endif

static double probe_scalar(int64_t iterations, float *sink) {
    float acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = (float)c;
    for (int64_t i = 0; i < iterations; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = acc[c] * 0.999999f + 1e-7f;
    float total = 0;
    for (int c = 0; c < CHAINS; c++) total += acc[c];
    *sink = total;
    return 2.0 * CHAINS * (double)iterations;
}

double qk_fma_probe(int64_t iterations, float *sink) {
#if defined(__x86_64__) || defined(__i386__)
    if (qk_isa_active() == QK_ISA_AVX2)
        return qk_avx512_allowed() ? probe_avx512(iterations, sink) : probe_avx2(iterations, sink);
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) return probe_neon(iterations, sink);
#endif
    return probe_scalar(iterations, sink);
}
