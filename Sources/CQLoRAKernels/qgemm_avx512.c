// AVX-512 decode for the few-rows products with 4-bit types, used by the AVX2
// entry points when the CPU also has AVX-512F. In AVX2 a 16-entry fp32 table
// lookup costs about 13 shuffles per 32 weights (qgemm_avx2.c), which caps a
// core well below its share of memory bandwidth. AVX-512's vpermps looks up
// 16 floats in a 16-entry table at once: one zero-extension, one shift and two
// lookups per 32 weights, in natural order, so x and dx need no permutation.
// Same numerics as the AVX2 path: each block's partial sum is scaled once.
// 32 registers hold the sums of up to 8 rows of x, so this path also covers
// small batches (QK_GEMV512_MAX_N) that AVX2 hands to the tiled GEMM.
#include "CQLoRAKernels.h"
#include "internal.h"

#include <stdatomic.h>

static _Atomic int allow_avx512 = 1;

int qk_matmul_allow_avx512(int allow) {
    return atomic_exchange_explicit(&allow_avx512, allow ? 1 : 0, memory_order_relaxed);
}

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define AVX512_INLINE __attribute__((target("avx512f,avx2,fma,f16c"), always_inline)) static inline

int qk_gemv_avx512_applies(const qk_packed *w, int64_t n) {
    if (n > QK_GEMV512_MAX_N || w->type == QK_TYPE_INT8 || w->cols % w->block_size != 0) return 0;
    if (!atomic_load_explicit(&allow_avx512, memory_order_relaxed)) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

AVX512 static __m512 table_of(int32_t type) {
    float t[16];
    for (int v = 0; v < 16; v++)
        t[v] = type == QK_TYPE_INT4 ? (float)(v - 8) : type == QK_TYPE_NF4 ? qk_nf4_table[v] : qk_fp4_table[v];
    return _mm512_loadu_ps(t);
}

// 16 code bytes: low nibbles (weights h..h+15 of the block) and high nibbles
// (weights B/2+h..B/2+h+15). vpermps reads only the low four bits of an index.
AVX512_INLINE void decode16(__m512 *lo, __m512 *hi, const uint8_t *c, __m512 table) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
    *lo = _mm512_permutexvar_ps(v, table);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
}

enum { STEPS = 64 };

AVX512_INLINE void forward_rows(float *restrict y, const float *restrict x, const qk_packed *w, int64_t begin,
                                int64_t end, const int NT) {
    const int64_t in = w->cols, out = w->rows, B = w->block_size, h = B / 2, bpr = in / B;
    const size_t bb = qk_block_bytes(w->type, w->block_size);
    const __m512 table = table_of(w->type);
    float d[STEPS];
    for (int64_t o = begin; o < end; o++) {
        __m512 acc[QK_GEMV512_MAX_N];
        for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
        const uint8_t *c = w->codes + (size_t)(o * bpr) * bb;
        for (int64_t b = 0; b < bpr; b++, c += bb) {
            if (b % STEPS == 0) qk_block_steps_avx2(d, w, o * bpr + b, bpr - b < STEPS ? bpr - b : STEPS);
            __m512 p0[QK_GEMV512_MAX_N], p1[QK_GEMV512_MAX_N];
            for (int t = 0; t < NT; t++) p0[t] = p1[t] = _mm512_setzero_ps();
            for (int64_t j = 0; j < h; j += 16) {
                __m512 lo, hi;
                decode16(&lo, &hi, c + j, table);
                for (int t = 0; t < NT; t++) {
                    const float *xb = x + t * in + b * B + j;
                    p0[t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), p0[t]);
                    p1[t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + h), p1[t]);
                }
            }
            const __m512 step = _mm512_set1_ps(d[b % STEPS]);
            for (int t = 0; t < NT; t++) acc[t] = _mm512_fmadd_ps(_mm512_add_ps(p0[t], p1[t]), step, acc[t]);
        }
        for (int t = 0; t < NT; t++) y[t * out + o] = _mm512_reduce_add_ps(acc[t]);
    }
}

// dx[:, begin:end] += dy · W over whole blocks, rows of W four at a time
// (each dx vector loaded and stored once per four rows, rows summed in order).
// Rows [o, o + R) of W (R a constant: the loop over rows unrolls) over blocks
// [b0, b1) of the slice: dx += dy[:, o..o+R) · W[o..o+R, slice].
AVX512_INLINE void backward_group(float *restrict dx, const float *restrict dy, const qk_packed *w, int64_t o,
                                  int64_t b0, int64_t b1, const int NT, const int R) {
    const int64_t in = w->cols, out = w->rows, B = w->block_size, h = B / 2, bpr = in / B;
    const size_t bb = qk_block_bytes(w->type, w->block_size);
    const __m512 table = table_of(w->type);
    float d[4][STEPS];
    for (int64_t b = b0; b < b1; b++) {
        if ((b - b0) % STEPS == 0)
            for (int r = 0; r < R; r++)
                qk_block_steps_avx2(d[r], w, (o + r) * bpr + b, b1 - b < STEPS ? b1 - b : STEPS);
        float s[4][QK_GEMV512_MAX_N];  // dy · block step, broadcast when used
        const uint8_t *c[4];
        for (int r = 0; r < R; r++) {
            for (int t = 0; t < NT; t++) s[r][t] = dy[t * out + o + r] * d[r][(b - b0) % STEPS];
            c[r] = w->codes + (size_t)((o + r) * bpr + b) * bb;
        }
        for (int64_t j = 0; j < h; j += 16) {
            __m512 vlo[QK_GEMV512_MAX_N], vhi[QK_GEMV512_MAX_N];
            for (int t = 0; t < NT; t++) {
                vlo[t] = _mm512_loadu_ps(dx + t * in + b * B + j);
                vhi[t] = _mm512_loadu_ps(dx + t * in + b * B + h + j);
            }
            for (int r = 0; r < R; r++) {
                __m512 lo, hi;
                decode16(&lo, &hi, c[r] + j, table);
                for (int t = 0; t < NT; t++) {
                    const __m512 st = _mm512_set1_ps(s[r][t]);
                    vlo[t] = _mm512_fmadd_ps(st, lo, vlo[t]);
                    vhi[t] = _mm512_fmadd_ps(st, hi, vhi[t]);
                }
            }
            for (int t = 0; t < NT; t++) {
                _mm512_storeu_ps(dx + t * in + b * B + j, vlo[t]);
                _mm512_storeu_ps(dx + t * in + b * B + h + j, vhi[t]);
            }
        }
    }
}

// dx[:, begin:end] += dy · W over whole blocks, rows of W four at a time
// (each dx vector loaded and stored once per four rows, rows summed in order).
AVX512_INLINE void backward_rows(float *restrict dx, const float *restrict dy, const qk_packed *w, int64_t begin,
                                 int64_t end, const int NT) {
    const int64_t B = w->block_size, b0 = begin / B, b1 = end / B;
    int64_t o = 0;
    for (; o + 4 <= w->rows; o += 4) backward_group(dx, dy, w, o, b0, b1, NT, 4);
    for (; o < w->rows; o++) backward_group(dx, dy, w, o, b0, b1, NT, 1);
}

AVX512 void qk_gemv_forward_avx512(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                                   int64_t begin, int64_t end) {
#define FWD(NT) forward_rows(y, x, w, begin, end, NT);
    QK_FOR_ROWS8(n, FWD)
#undef FWD
}

AVX512 void qk_gemv_backward_avx512(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                                    int64_t begin, int64_t end, int32_t accumulate) {
    if (!accumulate)
        for (int64_t i = 0; i < n; i++) memset(dx + i * w->cols + begin, 0, (size_t)(end - begin) * sizeof(float));
#define BWD(NT) backward_rows(dx, dy, w, begin, end, NT);
    QK_FOR_ROWS8(n, BWD)
#undef BWD
}

#endif
