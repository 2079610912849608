// Declarations shared by the C files of this target only (not part of the API).
#ifndef CQLORAKERNELS_INTERNAL_H
#define CQLORAKERNELS_INTERNAL_H

#include "CQLoRAKernels.h"

#include <float.h>

const float *qk_table_for(int32_t type);
// The 16 values a 4-bit code stands for before scaling: code - 8 for INT4
// (exact in fp32), the NF4 or FP4 table otherwise.
void qk_nibble_values(float *values, int32_t type);
void qk_sorted_table(const float *table, int count, int *order, float *mid);
int qk_bucketize(float s, const float *mid, int count);

// bitsandbytes clamps a block's absmax to this before taking the reciprocal, so
// an all-zero block scales to 0 (the code of zero) instead of 0 * inf = NaN.
#define QK_ABSMAX_FLOOR 1e-38f

// The factor x is multiplied by to get its pre-rounding code, from the block's
// exact absmax m: 1/m for NF4/FP4, 127/m (INT8) or 7/m (INT4). Computed as torch
// does for bitsandbytes (`1.0 / t` and `127.0 / t` are `reciprocal(t) * c`); the
// integer types cap it at FLT_MAX so tiny blocks never produce inf (then 0 * inf).
static inline float qk_block_inv(int32_t type, float m) {
    const float r = 1.0f / (m > QK_ABSMAX_FLOOR ? m : QK_ABSMAX_FLOOR);
    if (type == QK_TYPE_NF4 || type == QK_TYPE_FP4) return r;
    const float inv = r * (type == QK_TYPE_INT8 ? 127.0f : 7.0f);
    return inv < FLT_MAX ? inv : FLT_MAX;
}

// Quantizes one block of `len` < B elements (the tensor's last block), padding it
// with zeros; shared by every ISA so tails are the reference by construction.
void qk_quantize_tail_block(uint8_t *restrict codes, float *restrict absmax,
                            const float *restrict x, int64_t len, int32_t type, int32_t block_size);

#if defined(__x86_64__)
void qk_quantize_avx2(uint8_t *restrict codes, float *restrict absmax,
                      const float *restrict x, int64_t n, int32_t type, int32_t block_size);
void qk_dequantize_avx2(float *restrict y, const uint8_t *restrict codes, const float *restrict absmax,
                        int64_t n_blocks, int32_t type, int32_t block_size);
void qk_f16_to_f32_avx2(float *restrict y, const uint16_t *restrict x, int64_t n);
void qk_f32_to_f16_avx2(uint16_t *restrict y, const float *restrict x, int64_t n);
void qk_bf16_to_f32_avx2(float *restrict y, const uint16_t *restrict x, int64_t n);
int64_t qk_find_nonfinite_avx2(const float *x, int64_t n);
#endif

// Elementwise passes (elementwise_ref.c, elementwise_simd.c): elements per
// float partial sum of qk_exp_shifted.
#define QK_EXP_RUN 64
#if defined(__x86_64__)
void qk_swiglu_forward_avx2(float *restrict a, const float *restrict g, const float *restrict u, int64_t n);
void qk_swiglu_backward_avx2(float *dg, float *restrict du, const float *da, const float *restrict g,
                             const float *restrict u, int64_t n);
double qk_exp_shifted_avx2(float *y, const float *x, int64_t n, float shift, float scale);
void qk_dropout_apply_avx2(float *restrict out, const float *restrict x, const uint64_t *restrict bits, int64_t n,
                           float keep);
void qk_dropout_accumulate_avx2(float *restrict dx, const float *restrict g, const uint64_t *restrict bits,
                                int64_t n, float keep);
#elif defined(__aarch64__)
void qk_swiglu_forward_neon(float *restrict a, const float *restrict g, const float *restrict u, int64_t n);
void qk_swiglu_backward_neon(float *dg, float *restrict du, const float *da, const float *restrict g,
                             const float *restrict u, int64_t n);
double qk_exp_shifted_neon(float *y, const float *x, int64_t n, float shift, float scale);
void qk_dropout_apply_neon(float *restrict out, const float *restrict x, const uint64_t *restrict bits, int64_t n,
                           float keep);
void qk_dropout_accumulate_neon(float *restrict dx, const float *restrict g, const uint64_t *restrict bits,
                                int64_t n, float keep);
#endif

// Products with a packed weight (qgemm_ref.c, qgemm_avx2.c).
// Up to this many rows of X the fused decode-in-registers path runs; above
// it, the dequantized-tile GEMM. Summation orders differ between the two, so
// the choice depends on n and W only.
#define QK_GEMV_MAX_N 4
// The same for the AVX-512 path (qgemm_avx512.c).
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

// Rows of X per pass of a tiled product over W: at most mc, split evenly so
// that no pass is a sliver that pays for a whole dequantization of W on its own.
static inline int64_t qk_chunk_rows(int64_t n, int64_t mc) {
    const int64_t passes = (n + mc - 1) / mc;
    return (n + passes - 1) / passes;
}

void qk_dequantize_span_ref(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                            float *restrict tmp);
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
size_t qk_matmul_scratch_floats_avx2(const qk_packed *w, int64_t n, int32_t direction);
// Whether a forward product of n rows takes the tiled GEMM (else a few-rows path).
int qk_matmul_forward_tiled_avx2(const qk_packed *w, int64_t n);
void qk_dequantize_span_avx2(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                             float *restrict tmp);
void qk_matmul_forward_avx2(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                            int64_t begin, int64_t end, float *restrict scratch);
void qk_matmul_backward_avx2(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                             int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch);
void qk_block_steps_avx2(float *restrict d, const qk_packed *w, int64_t first, int64_t count);
// Prefetches (into L1) the cache lines that start within base[from, to):
// each line once when consecutive calls cover consecutive ranges.
static inline void qk_prefetch_lines(const char *base, size_t from, size_t to) {
    for (size_t at = (from + 63) & ~(size_t)63; at < to; at += 64) _mm_prefetch(base + at, _MM_HINT_T0);
}
// DQ8 block steps looked up per block in per-group tables, for the few-rows
// forward paths and the one-row backward (filled in qgemm_avx2.c): slot g % slots holds the steps of
// the 256 codes of group g, dynamic8[q] · group scale + offset (÷ 127 for
// INT8, ÷ 7 for INT4; the reference's roundings, in its order). Groups [first, first + count) are
// filled. A block step is then two scalar loads, on units those loops leave
// idle, where decoding steps with vector gathers or shuffles competed with
// the lookups of the weights.
typedef struct {
    float *s;  // slots · QK_DQ_GROUP floats, 64-byte aligned
    int64_t slots, first, count;
} qk_group_tables;
// Slots enough for the groups of any `blocks` consecutive blocks (a power of
// two); the tables take slots · QK_DQ_GROUP floats of scratch.
int64_t qk_group_slots(int64_t blocks);
// Fills the tables of groups [g0, g1] that are not filled yet, keeping those
// in [g0, first + count): callers move forward through the rows.
void qk_group_tables_fill(qk_group_tables *t, const qk_packed *w, int64_t g0, int64_t g1);
// The same, without a call (which spills every vector register of the
// caller's loop) when the groups are filled already.
static inline void qk_group_tables_need(qk_group_tables *t, const qk_packed *w, int64_t g0, int64_t g1) {
    if (g0 < t->first || g1 >= t->first + t->count) qk_group_tables_fill(t, w, g0, g1);
}
// The step of block b. The empty asm keeps compilers from vectorizing the
// index arithmetic of several lookups, which put it back on the vector pipes.
static inline const float *qk_group_step(const qk_group_tables *t, const qk_packed *w, uint64_t b) {
    __asm__("" : "+r"(b));
    return t->s + ((b / QK_DQ_GROUP) & (uint64_t)(t->slots - 1)) * QK_DQ_GROUP + ((const uint8_t *)w->scales)[b];
}
// qgemm_avx512.c: whether the AVX-512 sub-paths may run (the switch is on and
// the CPU has AVX-512F), and the few-rows paths.
int qk_avx512_allowed(void);
// scales_vbmi.c: whether the CPU has AVX-512 VBMI (and AVX-512 may run), and
// DQ8 absmax values of blocks [first, first + count) decoded with it.
int qk_vbmi_allowed(void);
void qk_dq8_absmax_vbmi(float *restrict absmax, const qk_packed *w, int64_t first, int64_t count);
int qk_gemv_avx512_applies(const qk_packed *w, int64_t n);
// Scratch floats the few-rows forward needs for n rows of x (x in chunk order).
size_t qk_gemv_avx512_scratch_floats(const qk_packed *w, int64_t n);
void qk_gemv_forward_avx512(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                            int64_t begin, int64_t end, float *restrict scratch);
// n = 1, 4-bit: scratch holds the group tables (qk_gemv_avx512_scratch_floats).
void qk_gemv_backward_avx512(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                             int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch);
// qgemm_tiled_avx512.c: the many-rows products, when the CPU has AVX-512F.
size_t qk_tiled_avx512_scratch_floats(void);
void qk_tiled_forward_avx512(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                             int64_t begin, int64_t end, float *restrict scratch);
void qk_tiled_backward_avx512(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                              int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch);
#endif

#endif
