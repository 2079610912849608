// LoRA's B-side gradients in one pass over dy: dB = s·dyᵀ·u and du = s·dy·B
// share their big operand, dy [n, out], while their other operands are r wide.
// As two BLAS calls each reads dy and both are skinny; here each element of
// dy, broadcast once, feeds one multiply-add into a column of dB and one into
// a row of du, with both held in registers. Measured on one Zen 4 core, r = 16,
// n = 512, out 256-1376: 107 GFLOP/s with AVX-512 (1.5-1.6x OpenBLAS's two
// calls, 67-73), 79-88 with AVX2; r = 8: 1.9-2.1x.
//
// The r columns go W at a time (dB and du are independent across them); per
// slice, TB rows of du stay in registers while the columns of dB go by JB at
// a time. One body in clang's vector types, compiled per instruction set.
#include "CQLoRAKernels.h"
#include "internal.h"

void qk_lora_b_gradients_ref(float *db, float *du, int64_t lddu, const float *dy, int64_t ldy, const float *u,
                             int64_t ldu, const float *b, int64_t n, int64_t o, int64_t r, float scale) {
    for (int64_t t = 0; t < n; t++)
        for (int64_t q = 0; q < r; q++) {
            float sum = 0;
            for (int64_t j = 0; j < o; j++) sum += dy[t * ldy + j] * b[j * r + q];
            du[t * lddu + q] = scale * sum;
        }
    for (int64_t j = 0; j < o; j++)
        for (int64_t q = 0; q < r; q++) {
            float sum = 0;
            for (int64_t t = 0; t < n; t++) sum += dy[t * ldy + j] * u[t * ldu + q];
            db[j * r + q] += scale * sum;
        }
}

#define UNROLL _Pragma("clang loop unroll(full)")

// lora_b_SUFFIX does the slices of W lanes of r from r0 on that fit and returns
// where it stopped, so narrower versions can take the rest.
#define QK_LORA_B(SUFFIX, ATTR, W, TB, JB)                                                                    \
    typedef float vl_##SUFFIX __attribute__((ext_vector_type(W)));                                          \
                                                                                                            \
    ATTR __attribute__((always_inline)) static inline vl_##SUFFIX load_##SUFFIX(const float *p) {            \
        vl_##SUFFIX v;                                                                                      \
        __builtin_memcpy(&v, p, sizeof v);                                                                  \
        return v;                                                                                           \
    }                                                                                                       \
                                                                                                            \
    /* Columns [j, j + JJ) of dB against rows [t, t + TT) of dy, whose u and du slices are in uv, acc. */   \
    ATTR __attribute__((always_inline)) static inline void columns_##SUFFIX(                                 \
        float *db, const float *dy, int64_t ldy, const float *b, int64_t r, int64_t t, int64_t j,             \
        int64_t r0, float scale, const vl_##SUFFIX *uv, vl_##SUFFIX *acc, const int TT, const int JJ) {      \
        vl_##SUFFIX g[JB], bv[JB];                                                                          \
        UNROLL for (int c = 0; c < JJ; c++) {                                                               \
            g[c] = 0;                                                                                       \
            bv[c] = load_##SUFFIX(b + (j + c) * r + r0);                                                    \
        }                                                                                                   \
        UNROLL for (int a = 0; a < TT; a++) {                                                               \
            const float *row = dy + (t + a) * ldy + j;                                                      \
            UNROLL for (int c = 0; c < JJ; c++) {                                                           \
                const float d = row[c];                                                                     \
                g[c] = g[c] + d * uv[a];                                                                    \
                acc[a] = acc[a] + d * bv[c];                                                                \
            }                                                                                               \
        }                                                                                                   \
        UNROLL for (int c = 0; c < JJ; c++) {                                                               \
            const vl_##SUFFIX sum = load_##SUFFIX(db + (j + c) * r + r0) + scale * g[c];                    \
            __builtin_memcpy(db + (j + c) * r + r0, &sum, sizeof sum);                                      \
        }                                                                                                   \
    }                                                                                                       \
                                                                                                            \
    ATTR __attribute__((always_inline)) static inline void rows_##SUFFIX(                                    \
        float *db, float *du, int64_t lddu, const float *dy, int64_t ldy, const float *u, int64_t ldu,        \
        const float *b, int64_t o, int64_t r, int64_t t, int64_t r0, float scale, const int TT) {           \
        vl_##SUFFIX uv[TB], acc[TB];                                                                        \
        UNROLL for (int a = 0; a < TT; a++) {                                                               \
            uv[a] = load_##SUFFIX(u + (t + a) * ldu + r0);                                                  \
            acc[a] = 0;                                                                                     \
        }                                                                                                   \
        int64_t j = 0;                                                                                      \
        for (; j + JB <= o; j += JB) columns_##SUFFIX(db, dy, ldy, b, r, t, j, r0, scale, uv, acc, TT, JB);  \
        for (; j < o; j++) columns_##SUFFIX(db, dy, ldy, b, r, t, j, r0, scale, uv, acc, TT, 1);            \
        UNROLL for (int a = 0; a < TT; a++) {                                                               \
            const vl_##SUFFIX out = scale * acc[a];                                                         \
            __builtin_memcpy(du + (t + a) * lddu + r0, &out, sizeof out);                                   \
        }                                                                                                   \
    }                                                                                                       \
                                                                                                            \
    ATTR static int64_t lora_b_##SUFFIX(float *db, float *du, int64_t lddu, const float *dy, int64_t ldy,     \
                                        const float *u, int64_t ldu, const float *b, int64_t n, int64_t o,    \
                                        int64_t r, float scale, int64_t r0) {                               \
        for (; r0 + W <= r; r0 += W) {                                                                      \
            int64_t t = 0;                                                                                  \
            for (; t + TB <= n; t += TB) rows_##SUFFIX(db, du, lddu, dy, ldy, u, ldu, b, o, r, t, r0, scale, TB); \
            for (; t < n; t++) rows_##SUFFIX(db, du, lddu, dy, ldy, u, ldu, b, o, r, t, r0, scale, 1);      \
        }                                                                                                   \
        return r0;                                                                                          \
    }

// Registers: TB rows of u and du plus JB columns of B and dB, the broadcast
// from memory: 32 with AVX-512 or NEON, 16 with AVX2; the single lanes
// left over are plain floats.
QK_LORA_B(scalar, , 1, 4, 4)
#if defined(__x86_64__) || defined(__i386__)
QK_LORA_B(avx512, __attribute__((target("avx512f"))), 16, 8, 8)
QK_LORA_B(avx2, __attribute__((target("avx2,fma"))), 8, 4, 4)
#elif defined(__aarch64__)
QK_LORA_B(neon, , 4, 8, 8)
#endif

int32_t qk_lora_b_lanes(void) {
#if defined(__x86_64__) || defined(__i386__)
    return qk_isa_active() == QK_ISA_AVX2 ? 8 : 1;
#elif defined(__aarch64__)
    return qk_isa_active() == QK_ISA_NEON ? 4 : 1;
#else
    return 1;
#endif
}

void qk_lora_b_gradients(float *db, float *du, int64_t lddu, const float *dy, int64_t ldy, const float *u,
                         int64_t ldu, const float *b, int64_t n, int64_t o, int64_t r, float scale) {
#if defined(__x86_64__) || defined(__i386__)
    if (qk_isa_active() == QK_ISA_AVX2) {
        int64_t r0 = qk_avx512_allowed() ? lora_b_avx512(db, du, lddu, dy, ldy, u, ldu, b, n, o, r, scale, 0) : 0;
        r0 = lora_b_avx2(db, du, lddu, dy, ldy, u, ldu, b, n, o, r, scale, r0);
        lora_b_scalar(db, du, lddu, dy, ldy, u, ldu, b, n, o, r, scale, r0);
        return;
    }
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) {
        const int64_t r0 = lora_b_neon(db, du, lddu, dy, ldy, u, ldu, b, n, o, r, scale, 0);
        lora_b_scalar(db, du, lddu, dy, ldy, u, ldu, b, n, o, r, scale, r0);
        return;
    }
#endif
    qk_lora_b_gradients_ref(db, du, lddu, dy, ldy, u, ldu, b, n, o, r, scale);
}
