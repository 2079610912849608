// Declarations shared by the C files of this target only (not part of the API).
#ifndef CQLORAKERNELS_INTERNAL_H
#define CQLORAKERNELS_INTERNAL_H

#include "CQLoRAKernels.h"

const float *qk_table_for(int32_t type);
void qk_sorted_table(const float *table, int count, int *order, float *mid);
int qk_bucketize(float s, const float *mid, int count);

void qk_f16_to_f32_ref(float *restrict y, const uint16_t *restrict x, int64_t n);
void qk_f32_to_f16_ref(uint16_t *restrict y, const float *restrict x, int64_t n);

// Products with a packed weight (qgemm_ref.c, qgemm_avx2.c).
// Up to this many rows of X the fused decode-in-registers path runs; above
// it, the dequantized-tile GEMM. Summation orders differ between the two, so
// the choice depends on n and W only.
#define QK_GEMV_MAX_N 4
// The same for the AVX-512 4-bit path (qgemm_avx512.c).
#define QK_GEMV512_MAX_N 8

// Expands F(NT) with NT = n as a constant (n clamped to 1..4 or 1..8), so the
// few-rows kernels are compiled once per row count with their loops unrolled.
#define QK_FOR_ROWS4(n, F) \
    switch (n) { case 1: F(1) break; case 2: F(2) break; case 3: F(3) break; default: F(4) break; }
#define QK_FOR_ROWS8(n, F)                                                                       \
    switch (n) {                                                                                 \
    case 1: F(1) break; case 2: F(2) break; case 3: F(3) break; case 4: F(4) break;             \
    case 5: F(5) break; case 6: F(6) break; case 7: F(7) break; default: F(8) break;            \
    }

void qk_dequantize_span_ref(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                            float *restrict tmp);
#if defined(__x86_64__) || defined(__i386__)
size_t qk_matmul_scratch_floats_avx2(const qk_packed *w, int64_t n, int32_t direction);
void qk_dequantize_span_avx2(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                             float *restrict tmp);
void qk_matmul_forward_avx2(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                            int64_t begin, int64_t end, float *restrict scratch);
void qk_matmul_backward_avx2(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                             int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch);
void qk_block_steps_avx2(float *restrict d, const qk_packed *w, int64_t first, int64_t count);
// qgemm_avx512.c: the 4-bit few-rows paths, when the CPU has AVX-512F.
int qk_gemv_avx512_applies(const qk_packed *w, int64_t n);
void qk_gemv_forward_avx512(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                            int64_t begin, int64_t end);
void qk_gemv_backward_avx512(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                             int64_t begin, int64_t end, int32_t accumulate);
#endif

#endif
