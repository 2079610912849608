// The machine's fp32 multiply-add ceiling, for benchmarks that report how
// much of it a workload uses. Twelve independent accumulators cover the FMA
// latency × ports of current cores (Zen 4: 4 × 2 halves; Skylake and later:
// 4 × 2), with the widest vectors the kernels use: AVX-512 where the
// products' tiled GEMM runs on it, AVX2+FMA, NEON, else scalar. One body in
// clang's vector types; a · b + c contracts into one FMA where there is one.
#include "CQLoRAKernels.h"
#include "internal.h"

enum { CHAINS = 12 };

#define QK_PROBE(SUFFIX, ATTR, W)                                                          \
    typedef float vp_##SUFFIX __attribute__((ext_vector_type(W)));                         \
    ATTR static double probe_##SUFFIX(int64_t iterations, float *sink) {                   \
        vp_##SUFFIX acc[CHAINS];                                                           \
        for (int c = 0; c < CHAINS; c++) acc[c] = (float)c;                                \
        for (int64_t i = 0; i < iterations; i++)                                           \
            for (int c = 0; c < CHAINS; c++) acc[c] = acc[c] * 0.999999f + 1e-7f;          \
        float total = 0;                                                                   \
        for (int c = 0; c < CHAINS; c++)                                                   \
            for (int l = 0; l < W; l++) total += acc[c][l];                                \
        *sink = total;                                                                     \
        return 2.0 * W * CHAINS * (double)iterations;                                      \
    }

QK_PROBE(scalar, , 1)
#if defined(__x86_64__) || defined(__i386__)
QK_PROBE(avx512, __attribute__((target("avx512f"))), 16)
QK_PROBE(avx2, __attribute__((target("avx2,fma"))), 8)
#elif defined(__aarch64__)
QK_PROBE(neon, , 4)
#endif

double qk_fma_probe(int64_t iterations, float *sink) {
#if defined(__x86_64__) || defined(__i386__)
    if (qk_isa_active() == QK_ISA_AVX2)
        return qk_avx512_allowed() ? probe_avx512(iterations, sink) : probe_avx2(iterations, sink);
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) return probe_neon(iterations, sink);
#endif
    return probe_scalar(iterations, sink);
}
