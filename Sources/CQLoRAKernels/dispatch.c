// Run-time choice between the scalar reference and the SIMD paths. The SIMD
// code is compiled with per-function target attributes, never with global
// -mavx2, so one binary runs everywhere and the reference is always there.
#include "CQLoRAKernels.h"
#include "internal.h"

#include <stdatomic.h>

static _Atomic int active_isa = -1;

qk_isa qk_isa_detect(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return QK_ISA_AVX2;
    return QK_ISA_SCALAR;
#elif defined(__aarch64__)
    return QK_ISA_NEON;
#else
    return QK_ISA_SCALAR;
#endif
}

qk_isa qk_isa_active(void) {
    int isa = atomic_load_explicit(&active_isa, memory_order_relaxed);
    if (isa < 0) {
        isa = (int)qk_isa_detect();
        atomic_store_explicit(&active_isa, isa, memory_order_relaxed);
    }
    return (qk_isa)isa;
}

qk_isa qk_isa_set(qk_isa isa) {
    const qk_isa best = qk_isa_detect();
    if (isa != QK_ISA_SCALAR && isa != best) isa = QK_ISA_SCALAR;
    atomic_store_explicit(&active_isa, (int)isa, memory_order_relaxed);
    return isa;
}

// The AVX2 paths exist only in x86-64 builds; elsewhere every call is the reference.

void qk_quantize(uint8_t *restrict codes, float *restrict absmax,
                 const float *restrict x, int64_t n, int32_t type, int32_t block_size) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_quantize_avx2(codes, absmax, x, n, type, block_size); return; }
#endif
    qk_quantize_ref(codes, absmax, x, n, type, block_size);
}

void qk_dequantize(float *restrict y, const uint8_t *restrict codes, const float *restrict absmax,
                   int64_t n_blocks, int32_t type, int32_t block_size) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_dequantize_avx2(y, codes, absmax, n_blocks, type, block_size); return; }
#endif
    qk_dequantize_ref(y, codes, absmax, n_blocks, type, block_size);
}

void qk_f16_to_f32(float *restrict y, const uint16_t *restrict x, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_f16_to_f32_avx2(y, x, n); return; }
#endif
    qk_f16_to_f32_ref(y, x, n);
}

void qk_f32_to_f16(uint16_t *restrict y, const float *restrict x, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_f32_to_f16_avx2(y, x, n); return; }
#endif
    qk_f32_to_f16_ref(y, x, n);
}

void qk_bf16_to_f32(float *restrict y, const uint16_t *restrict x, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_bf16_to_f32_avx2(y, x, n); return; }
#endif
    qk_bf16_to_f32_ref(y, x, n);
}

int64_t qk_find_nonfinite(const float *x, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) return qk_find_nonfinite_avx2(x, n);
#endif
    return qk_find_nonfinite_ref(x, n);
}

// Elementwise passes: SIMD paths in x86-64 (AVX2 + FMA) and arm64 (NEON) builds.

void qk_swiglu_forward(float *restrict a, const float *restrict g, const float *restrict u, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_swiglu_forward_avx2(a, g, u, n); return; }
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) { qk_swiglu_forward_neon(a, g, u, n); return; }
#endif
    qk_swiglu_forward_ref(a, g, u, n);
}

void qk_swiglu_backward(float *dg, float *restrict du, const float *da, const float *restrict g,
                        const float *restrict u, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_swiglu_backward_avx2(dg, du, da, g, u, n); return; }
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) { qk_swiglu_backward_neon(dg, du, da, g, u, n); return; }
#endif
    qk_swiglu_backward_ref(dg, du, da, g, u, n);
}

double qk_exp_shifted(float *y, const float *x, int64_t n, float shift, float scale) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) return qk_exp_shifted_avx2(y, x, n, shift, scale);
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) return qk_exp_shifted_neon(y, x, n, shift, scale);
#endif
    return qk_exp_shifted_ref(y, x, n, shift, scale);
}

void qk_dropout_apply(float *restrict out, const float *restrict x, const uint64_t *restrict bits, int64_t n,
                      float keep) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_dropout_apply_avx2(out, x, bits, n, keep); return; }
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) { qk_dropout_apply_neon(out, x, bits, n, keep); return; }
#endif
    qk_dropout_apply_ref(out, x, bits, n, keep);
}

void qk_dropout_accumulate(float *restrict dx, const float *restrict g, const uint64_t *restrict bits, int64_t n,
                           float keep) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_dropout_accumulate_avx2(dx, g, bits, n, keep); return; }
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) { qk_dropout_accumulate_neon(dx, g, bits, n, keep); return; }
#endif
    qk_dropout_accumulate_ref(dx, g, bits, n, keep);
}

// ----------------------------------------------------------------------------
// Products with a packed weight
// ----------------------------------------------------------------------------

#if defined(__x86_64__) || defined(__i386__)
#define QK_HAVE_AVX2_MATMUL 1
#else
#define QK_HAVE_AVX2_MATMUL 0
#endif

size_t qk_matmul_scratch_floats(const qk_packed *w, int64_t n, int32_t direction) {
    size_t floats = (size_t)w->cols + 256;  // the reference: one row of W and one block
#if QK_HAVE_AVX2_MATMUL
    const size_t avx2 = qk_matmul_scratch_floats_avx2(w, n, direction);
    if (avx2 > floats) floats = avx2;
#else
    (void)n;
    (void)direction;
#endif
    return floats;
}

int64_t qk_matmul_grain(const qk_packed *w, int64_t n, int32_t direction) {
    (void)n;
    // Forward slices take rows of W in 16-row panels; backward slices take
    // whole blocks of each row when rows are a whole number of blocks.
    if (direction == QK_DIRECTION_BACKWARD && w->cols % w->block_size == 0) return w->block_size;
    return 16;
}

int64_t qk_matmul_slices_per_thread(const qk_packed *w, int64_t n, int32_t direction) {
    if (direction != QK_DIRECTION_FORWARD) return 1;
#if QK_HAVE_AVX2_MATMUL
    if (qk_isa_active() == QK_ISA_AVX2 && qk_matmul_forward_tiled_avx2(w, n)) return 1;
#else
    (void)w;
    (void)n;
#endif
    // The few-rows paths stream W from memory, and every slice starts its
    // streams cold. With two slices per thread instead of eight (Zen 4,
    // AVX-512, 2 threads) a 1.1B model decoded 5 % faster, a token's products
    // at 4 and 8 rows ran 1-4 % faster, and decoding next to a busy process
    // (what the spare slice is for) was no slower. The reference dequantizes
    // row by row and takes the same count.
    return 2;
}

void qk_dequantize_span(float *restrict y, const qk_packed *w, int64_t first, int64_t count, float *restrict tmp) {
#if QK_HAVE_AVX2_MATMUL
    if (qk_isa_active() == QK_ISA_AVX2) {
        qk_dequantize_span_avx2(y, w, first, count, tmp);
        return;
    }
#endif
    qk_dequantize_span_ref(y, w, first, count, tmp);
}

void qk_matmul_forward(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                       int64_t begin, int64_t end, float *restrict scratch) {
#if QK_HAVE_AVX2_MATMUL
    if (qk_isa_active() == QK_ISA_AVX2) {
        qk_matmul_forward_avx2(y, x, n, w, begin, end, scratch);
        return;
    }
#endif
    qk_matmul_forward_ref(y, x, n, w, begin, end, scratch);
}

void qk_matmul_backward(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                        int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch) {
#if QK_HAVE_AVX2_MATMUL
    if (qk_isa_active() == QK_ISA_AVX2) {
        qk_matmul_backward_avx2(dx, dy, n, w, begin, end, accumulate, scratch);
        return;
    }
#endif
    qk_matmul_backward_ref(dx, dy, n, w, begin, end, accumulate, scratch);
}
