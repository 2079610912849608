// AVX2 + FMA products with a packed weight. Two regimes:
//
// - Few rows of X (n <= QK_GEMV_MAX_N, decode): meant to be bound by memory.
//   Each packed byte is read once and decoded in registers; the block scale
//   multiplies a block's partial sum once instead of every weight. 4-bit codes
//   are looked up as four byte planes of the fp32 table with vpshufb (32
//   weights per lookup) and reassembled with unpacks; the unpacks leave the
//   weights in a fixed interleaved order, so x (forward) or dx (backward) is
//   permuted once per call to match it instead of shuffling every weight back.
//   On CPUs with AVX-512F every type takes qgemm_avx512.c instead.
// - More rows (training): bound by arithmetic. A tile of W (at most 256 × 256)
//   is dequantized once into scratch, laid out as 16-wide panels, and a 6 × 16
//   register-blocked micro-kernel runs over it for every row of X, so the
//   decoding cost vanishes next to the 2 · n flops per weight. On CPUs with
//   AVX-512F, qgemm_tiled_avx512.c does the same with 32 registers.
//
// Summation order depends on n, W and the path only (never on the slice),
// so results do not depend on how the caller splits the work across threads.
#include "CQLoRAKernels.h"
#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

// Tile sizes: X is packed MC rows × KC columns at a time; the dequantized
// tile (at most 256 × KC) and MB rows of packed X stay in L2, one 16 × KC
// panel of the tile (16 KB) stays in L1 while MB/6 panels of X stream past.
enum { MR = 6, NR = 16, KC = 256, MC = 516, NC_FWD = 128, NC_BWD = 256, MB = 144 };

// ----------------------------------------------------------------------------
// Scales and block decoding (bit-exact with the reference)
// ----------------------------------------------------------------------------

AVX2_INLINE float block_absmax(const qk_packed *w, int64_t b) {
    switch (w->scale_kind) {
    case QK_SCALE_F32: return ((const float *)w->scales)[b];
    case QK_SCALE_F16: return _cvtsh_ss(((const uint16_t *)w->scales)[b]);
    default: {
        // Two statements so the compiler cannot fuse them into an FMA the
        // reference does not do.
        float v = qk_dynamic8_table[((const uint8_t *)w->scales)[b]] * w->group_scales[b / QK_DQ_GROUP];
        v = v + w->offset;
        return v;
    }
    }
}

// What one code value is multiplied by: absmax / 127, absmax / 7 or absmax.
AVX2_INLINE float block_step(int32_t type, float absmax) {
    return type == QK_TYPE_INT8 ? absmax / 127.0f : type == QK_TYPE_INT4 ? absmax / 7.0f : absmax;
}

// Eight 4-bit codes (one per int32) to their table values.
AVX2_INLINE __m256 lookup16(__m256 lo, __m256 hi, __m256i idx) {
    const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// Blocks [b0, b0 + nb) of w into y, in natural order, bit-exact with qk_dequantize_ref.
AVX2 static void decode_blocks(float *restrict y, const qk_packed *w, int64_t b0, int64_t nb) {
    const int32_t type = w->type;
    const int64_t B = w->block_size, h = B / 2;
    const size_t bb = qk_block_bytes(type, w->block_size);
    const float *table = type == QK_TYPE_NF4 ? qk_nf4_table : qk_fp4_table;
    const __m256 tlo = _mm256_loadu_ps(table), thi = _mm256_loadu_ps(table + 8);
    const __m128i m4 = _mm_set1_epi8(15);
    const __m256i eight = _mm256_set1_epi32(8);
    for (int64_t b = b0; b < b0 + nb; b++, y += B) {
        const uint8_t *c = w->codes + (size_t)b * bb;
        const __m256 d = _mm256_set1_ps(block_step(type, block_absmax(w, b)));
        if (type == QK_TYPE_INT8) {
            for (int64_t i = 0; i < B; i += 8) {
                const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(c + i)));
                _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
            }
            continue;
        }
        for (int64_t j = 0; j < h; j += 8) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(c + j));
            const __m256i lo = _mm256_cvtepu8_epi32(_mm_and_si128(q, m4));
            const __m256i hi = _mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m4));
            __m256 vl, vh;
            if (type == QK_TYPE_INT4) {
                vl = _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, eight));
                vh = _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, eight));
            } else {
                vl = lookup16(tlo, thi, lo);
                vh = lookup16(tlo, thi, hi);
            }
            _mm256_storeu_ps(y + j, _mm256_mul_ps(vl, d));
            _mm256_storeu_ps(y + j + h, _mm256_mul_ps(vh, d));
        }
    }
}

void qk_dequantize_span_avx2(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                             float *restrict tmp) {
    const int64_t B = w->block_size;
    while (count > 0) {
        const int64_t b = first / B, skip = first - b * B;
        if (skip == 0 && count >= B) {
            const int64_t nb = count / B;
            decode_blocks(y, w, b, nb);
            y += nb * B;
            first += nb * B;
            count -= nb * B;
            continue;
        }
        const int64_t take = count < B - skip ? count : B - skip;
        decode_blocks(tmp, w, b, 1);
        memcpy(y, tmp + skip, (size_t)take * sizeof(float));
        y += take;
        first += take;
        count -= take;
    }
}

// ----------------------------------------------------------------------------
// Few rows: fused decode in registers
// ----------------------------------------------------------------------------
// Weights are decoded 32 at a time into four vectors whose element order is
// fixed per kind (sub_order below); x is permuted to match.
// - KIND_INT8: 32 code bytes, natural order.
// - KIND_LUT4 (INT4, NF4, FP4): 16 code bytes at byte offset h of a block; low
//   nibbles are weights h..h+15, high nibbles B/2+h..B/2+h+15. The codes index
//   four byte planes of the type's fp32 table (vpshufb, 32 lookups each) and
//   unpacks reassemble the floats: f[q] = [h+4q .. h+4q+3 | B/2+h+4q .. +3].
// Both cost about the same number of instructions per weight, which is what
// bounds this loop (not memory, not the shuffle ports): keep it lean.
enum { KIND_INT8, KIND_LUT4 };

// Natural index (within a block) of the weight at decoded position p.
static int64_t sub_order(int kind, int64_t B, int64_t p) {
    if (kind == KIND_INT8) return p;
    const int64_t u = p / 32, r = p % 32, q = r / 8, lane = (r % 8) / 4, e = r % 4;
    return 16 * u + 4 * q + e + lane * (B / 2);
}

typedef struct {
    __m256i plane[4];  // byte p of each of the 16 fp32 table values
    __m256i nibble;    // 0x0f in every byte
    __m256i shift;     // 0 for the low lane, 4 for the high lane
} lut4;

AVX2 static lut4 lut4_make(int32_t type) {
    float t[16];
    qk_nibble_values(t, type);
    uint8_t planes[4][16];
    for (int v = 0; v < 16; v++) {
        uint32_t u;
        memcpy(&u, &t[v], 4);
        for (int p = 0; p < 4; p++) planes[p][v] = (uint8_t)(u >> (8 * p));
    }
    lut4 l;
    for (int p = 0; p < 4; p++) l.plane[p] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)planes[p]));
    l.nibble = _mm256_set1_epi8(15);
    l.shift = _mm256_set_epi64x(4, 4, 0, 0);
    return l;
}

AVX2_INLINE void decode_lut4(__m256 f[4], const uint8_t *c, const lut4 *l) {
    __m256i q = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c));
    q = _mm256_and_si256(_mm256_srlv_epi64(q, l->shift), l->nibble);
    const __m256i b0 = _mm256_shuffle_epi8(l->plane[0], q), b1 = _mm256_shuffle_epi8(l->plane[1], q);
    const __m256i b2 = _mm256_shuffle_epi8(l->plane[2], q), b3 = _mm256_shuffle_epi8(l->plane[3], q);
    const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
    const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
    f[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
    f[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
    f[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
    f[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
}

AVX2_INLINE void decode_int8(__m256 f[4], const uint8_t *c) {
    for (int q = 0; q < 4; q++)
        f[q] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(c + 8 * q))));
}

// Weights s..s+31 (offset within the block) of the block whose codes start at c.
AVX2_INLINE void decode_unit(__m256 f[4], const uint8_t *c, int64_t s, const lut4 *l, const int kind) {
    if (kind == KIND_INT8) decode_int8(f, c + s);
    else decode_lut4(f, c + s / 2, l);
}

// Blocks decoded per batch of block steps (a stack buffer).
enum { STEP_BATCH = 64 };

// The step of blocks [first, first + count): absmax / 127, absmax / 7 or
// absmax, computed as the reference does, so the loops over weights carry no
// branch on the scale storage or the type.
AVX2 void qk_block_steps_avx2(float *restrict d, const qk_packed *w, int64_t first, int64_t count) {
    int64_t i = 0;
    switch (w->scale_kind) {
    case QK_SCALE_F32: memcpy(d, (const float *)w->scales + first, (size_t)count * sizeof(float)); break;
    case QK_SCALE_F16: {
        const uint16_t *h = (const uint16_t *)w->scales + first;
        for (; i + 8 <= count; i += 8) _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
        for (; i < count; i++) d[i] = _cvtsh_ss(h[i]);
        break;
    }
    default: {
        // dynamic8[q] · group scale + offset, eight blocks at a time when they
        // share a group (a gather of the code table; two roundings, no FMA,
        // like the reference).
        const uint8_t *q = (const uint8_t *)w->scales;
        const __m256 off = _mm256_set1_ps(w->offset);
        for (; i + 8 <= count; i += 8) {
            const int64_t b = first + i;
            if (b / QK_DQ_GROUP != (b + 7) / QK_DQ_GROUP) {
                for (int j = 0; j < 8; j++) d[i + j] = block_absmax(w, b + j);
                continue;
            }
            const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + b)));
            const __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(qk_dynamic8_table, idx, 4),
                                           _mm256_set1_ps(w->group_scales[b / QK_DQ_GROUP]));
            _mm256_storeu_ps(d + i, _mm256_add_ps(v, off));
        }
        for (; i < count; i++) d[i] = block_absmax(w, first + i);
    }
    }
    if (w->type == QK_TYPE_INT8 || w->type == QK_TYPE_INT4) {
        const float div = w->type == QK_TYPE_INT8 ? 127.0f : 7.0f;
        for (i = 0; i + 8 <= count; i += 8) _mm256_storeu_ps(d + i, _mm256_div_ps(_mm256_loadu_ps(d + i), _mm256_set1_ps(div)));
        for (; i < count; i++) d[i] = d[i] / div;
    }
}

int64_t qk_group_slots(int64_t blocks) {
    const int64_t span = (blocks - 1) / QK_DQ_GROUP + 2;
    int64_t slots = 1;
    while (slots < span) slots *= 2;
    return slots;
}

AVX2 void qk_group_tables_fill(qk_group_tables *t, const qk_packed *w, int64_t g0, int64_t g1) {
    const int64_t end = t->first + t->count;
    const int kept = g0 >= t->first && g0 < end;
    // A branch on the type inside the loop cost the AVX-512 decode 2 %.
    const int divide = w->type == QK_TYPE_INT8 || w->type == QK_TYPE_INT4;
    const __m256 div = _mm256_set1_ps(w->type == QK_TYPE_INT8 ? 127.0f : 7.0f), offset = _mm256_set1_ps(w->offset);
    for (int64_t g = kept ? end : g0; g <= g1; g++) {
        float *slot = t->s + (g & (t->slots - 1)) * QK_DQ_GROUP;
        const __m256 scale = _mm256_set1_ps(w->group_scales[g]);
        for (int i = 0; i < QK_DQ_GROUP; i += 8)
            _mm256_store_ps(slot + i, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(qk_dynamic8_table + i), scale), offset));
        if (divide)
            for (int i = 0; i < QK_DQ_GROUP; i += 8) _mm256_store_ps(slot + i, _mm256_div_ps(_mm256_load_ps(slot + i), div));
    }
    const int64_t last = kept && end - 1 > g1 ? end - 1 : g1;
    t->first = g0;
    t->count = last - g0 + 1;
}

// dst[p] = src[natural(p)] over a whole row of blocks (forward: permute x).
static void permute_row(float *restrict dst, const float *restrict src, int64_t len, int kind, int64_t B) {
    int64_t order[256];
    for (int64_t p = 0; p < B; p++) order[p] = sub_order(kind, B, p);
    for (int64_t b = 0; b < len; b += B)
        for (int64_t p = 0; p < B; p++) dst[b + p] = src[b + order[p]];
}

// dst[natural(p)] (+)= src[p] (backward: un-permute dx).
static void unpermute_row(float *restrict dst, const float *restrict src, int64_t len, int kind, int64_t B,
                          int accumulate) {
    int64_t order[256];
    for (int64_t p = 0; p < B; p++) order[p] = sub_order(kind, B, p);
    for (int64_t b = 0; b < len; b += B)
        for (int64_t p = 0; p < B; p++) {
            const float v = src[b + p];
            dst[b + order[p]] = accumulate ? dst[b + order[p]] + v : v;
        }
}

AVX2_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Rows [begin, end) of y = x·Wᵀ for NT (1..QK_GEMV_MAX_N) rows of x, already
// permuted into xp (NT × in). Each block's partial sum is scaled once, by a
// step from the group tables g (G: DQ8 scales; 1.1x at n = 1 on Zen 4, where
// gathering the steps of 8 blocks from the code table took 9 % of the time)
// or decoded in batches.
AVX2_INLINE void gemv_forward(float *restrict y, const float *restrict xp, const qk_packed *w,
                              int64_t begin, int64_t end, qk_group_tables *g, const int NT, const int kind,
                              const int G) {
    const int64_t in = w->cols, out = w->rows, B = w->block_size, bpr = in / B;
    const size_t bb = qk_block_bytes(w->type, w->block_size);
    const lut4 l = lut4_make(w->type);
    float d[STEP_BATCH];
    for (int64_t o = begin; o < end; o++) {
        __m256 acc[QK_GEMV_MAX_N];
        for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
        const uint8_t *c = w->codes + (size_t)(o * bpr) * bb;
        if (G) qk_group_tables_need(g, w, o * bpr / QK_DQ_GROUP, ((o + 1) * bpr - 1) / QK_DQ_GROUP);
        // The next row's codes, block by block as this row's are read: a row
        // is too short a stream for the hardware prefetcher to learn (Zen 4,
        // AVX-512 switched off, 2 threads, from memory: 1.2-1.4x at 4096 and
        // 11008 wide, 0.99x at 1024).
        const char *next = (const char *)c + (size_t)bpr * bb;
        const int prefetch = o + 1 < w->rows;
        for (int64_t b = 0; b < bpr; b++, c += bb) {
            if (prefetch) qk_prefetch_lines(next, (size_t)b * bb, (size_t)(b + 1) * bb);
            if (!G && b % STEP_BATCH == 0) qk_block_steps_avx2(d, w, o * bpr + b, bpr - b < STEP_BATCH ? bpr - b : STEP_BATCH);
            __m256 p0[QK_GEMV_MAX_N], p1[QK_GEMV_MAX_N];
            for (int t = 0; t < NT; t++) p0[t] = p1[t] = _mm256_setzero_ps();
            const float *xb = xp + b * B;
            for (int64_t s = 0; s < B; s += 32) {
                __m256 f[4];
                decode_unit(f, c, s, &l, kind);
                for (int t = 0; t < NT; t++) {
                    const float *xs = xb + t * in + s;
                    p0[t] = _mm256_fmadd_ps(f[0], _mm256_loadu_ps(xs), p0[t]);
                    p1[t] = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xs + 8), p1[t]);
                    p0[t] = _mm256_fmadd_ps(f[2], _mm256_loadu_ps(xs + 16), p0[t]);
                    p1[t] = _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xs + 24), p1[t]);
                }
            }
            const __m256 step = _mm256_set1_ps(G ? *qk_group_step(g, w, (uint64_t)(o * bpr + b)) : d[b % STEP_BATCH]);
            for (int t = 0; t < NT; t++) acc[t] = _mm256_fmadd_ps(_mm256_add_ps(p0[t], p1[t]), step, acc[t]);
        }
        for (int t = 0; t < NT; t++) y[t * out + o] = hsum(acc[t]);
    }
}

// Rows [o, o + R) of W (R a constant: the loop over rows unrolls) over the
// slice's blocks [b0, b1): dxp += dy[:, o..o+R) · W[o..o+R, slice], in decoded
// order (dxp holds the slice, `len` floats per row of dy).
AVX2_INLINE void backward_group(float *restrict dxp, const float *restrict dy, const qk_packed *w, int64_t o,
                                int64_t b0, int64_t b1, const int NT, const int R, const int kind) {
    const int64_t out = w->rows, B = w->block_size, bpr = w->cols / B, len = (b1 - b0) * B;
    const size_t bb = qk_block_bytes(w->type, w->block_size);
    const lut4 l = lut4_make(w->type);
    float d[4][STEP_BATCH];
    for (int64_t b = b0; b < b1; b++) {
        if ((b - b0) % STEP_BATCH == 0)
            for (int r = 0; r < R; r++)
                qk_block_steps_avx2(d[r], w, (o + r) * bpr + b, b1 - b < STEP_BATCH ? b1 - b : STEP_BATCH);
        __m256 s[4][QK_GEMV_MAX_N];  // [row][token]: dy · block step
        const uint8_t *c[4];
        for (int r = 0; r < R; r++) {
            for (int t = 0; t < NT; t++) s[r][t] = _mm256_set1_ps(dy[t * out + o + r] * d[r][(b - b0) % STEP_BATCH]);
            c[r] = w->codes + (size_t)((o + r) * bpr + b) * bb;
        }
        float *db = dxp + (b - b0) * B;
        for (int64_t u = 0; u < B; u += 32) {
            __m256 v[QK_GEMV_MAX_N][4];
            for (int t = 0; t < NT; t++)
                for (int q = 0; q < 4; q++) v[t][q] = _mm256_loadu_ps(db + t * len + u + 8 * q);
            for (int r = 0; r < R; r++) {
                __m256 f[4];
                decode_unit(f, c[r], u, &l, kind);
                for (int t = 0; t < NT; t++)
                    for (int q = 0; q < 4; q++) v[t][q] = _mm256_fmadd_ps(s[r][t], f[q], v[t][q]);
            }
            for (int t = 0; t < NT; t++)
                for (int q = 0; q < 4; q++) _mm256_storeu_ps(db + t * len + u + 8 * q, v[t][q]);
        }
    }
}

// Columns [begin, end) (whole blocks) of dxp += dy·W for NT rows of dy, rows
// of W four at a time so each dx vector is loaded and stored once per four
// rows; every dx element still sums the rows of W in order, one FMA each.
AVX2_INLINE void gemv_backward(float *restrict dxp, const float *restrict dy, const qk_packed *w,
                               int64_t begin, int64_t end, const int NT, const int kind) {
    const int64_t B = w->block_size, b0 = begin / B, b1 = end / B;
    int64_t o = 0;
    for (; o + 4 <= w->rows; o += 4) backward_group(dxp, dy, w, o, b0, b1, NT, 4, kind);
    for (; o < w->rows; o++) backward_group(dxp, dy, w, o, b0, b1, NT, 1, kind);
}

// Scratch of the few-rows forward: x permuted, then (DQ8) the group tables of
// one row's blocks.
static size_t gemv_tables_offset(const qk_packed *w, int64_t n) { return (size_t)(n * w->cols + 15) / 16 * 16; }

static size_t gemv_forward_scratch_floats(const qk_packed *w, int64_t n) {
    if (w->scale_kind != QK_SCALE_DQ8) return (size_t)(n * w->cols);
    return gemv_tables_offset(w, n) + (size_t)(qk_group_slots(w->cols / w->block_size) * QK_DQ_GROUP);
}

AVX2 static void gemv_forward_any(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                                  int64_t begin, int64_t end, float *restrict xp) {
    const int64_t in = w->cols;
    const int kind = w->type == QK_TYPE_INT8 ? KIND_INT8 : KIND_LUT4;
    for (int64_t i = 0; i < n; i++) permute_row(xp + i * in, x + i * in, in, kind, w->block_size);
    qk_group_tables g = {xp + gemv_tables_offset(w, n), qk_group_slots(in / w->block_size), 0, 0};
#define FWD_G(NT, G)                                                                           \
    if (kind == KIND_INT8) gemv_forward(y, xp, w, begin, end, &g, NT, KIND_INT8, G);           \
    else gemv_forward(y, xp, w, begin, end, &g, NT, KIND_LUT4, G);
#define FWD(NT)                                                                                \
    if (w->scale_kind == QK_SCALE_DQ8) {                                                       \
        FWD_G(NT, 1)                                                                           \
    } else {                                                                                   \
        FWD_G(NT, 0)                                                                           \
    }
    QK_FOR_ROWS4(n, FWD)
#undef FWD
#undef FWD_G
}

AVX2 static void gemv_backward_any(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                                   int64_t begin, int64_t end, int accumulate, float *restrict dxp) {
    const int64_t in = w->cols, len = end - begin;
    const int kind = w->type == QK_TYPE_INT8 ? KIND_INT8 : KIND_LUT4;
    memset(dxp, 0, (size_t)(n * len) * sizeof(float));
#define BWD(NT)                                                                                \
    if (kind == KIND_INT8) gemv_backward(dxp, dy, w, begin, end, NT, KIND_INT8);               \
    else gemv_backward(dxp, dy, w, begin, end, NT, KIND_LUT4);
    QK_FOR_ROWS4(n, BWD)
#undef BWD
    for (int64_t i = 0; i < n; i++)
        unpermute_row(dx + i * in + begin, dxp + i * len, len, kind, w->block_size, accumulate);
}

// ----------------------------------------------------------------------------
// Many rows: dequantized tile + register-blocked micro-kernel
// ----------------------------------------------------------------------------

// C[6 × 16] (=|+=) A-panel · B-panel over kc; a is [kc][6], b is [kc][16].
AVX2 __attribute__((noinline)) static void micro_6x16(const float *restrict a, const float *restrict b, int64_t kc, float *restrict c,
                            int64_t ldc, int first) {
    // The C rows come from far away (Y is large); ask for them now so they
    // arrive while the k loop runs instead of stalling the stores after it.
    for (int r = 0; r < MR; r++) _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t k = 0; k < kc; k++, a += MR, b += NR) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 ak = _mm256_broadcast_ss(a);
        c00 = _mm256_fmadd_ps(ak, b0, c00);
        c01 = _mm256_fmadd_ps(ak, b1, c01);
        ak = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(ak, b0, c10);
        c11 = _mm256_fmadd_ps(ak, b1, c11);
        ak = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(ak, b0, c20);
        c21 = _mm256_fmadd_ps(ak, b1, c21);
        ak = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(ak, b0, c30);
        c31 = _mm256_fmadd_ps(ak, b1, c31);
        ak = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(ak, b0, c40);
        c41 = _mm256_fmadd_ps(ak, b1, c41);
        ak = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(ak, b0, c50);
        c51 = _mm256_fmadd_ps(ak, b1, c51);
    }
#define STORE_ROW(r, v0, v1)                                                                    \
    if (first) {                                                                                \
        _mm256_storeu_ps(c + (r) * ldc, v0);                                                    \
        _mm256_storeu_ps(c + (r) * ldc + 8, v1);                                                \
    } else {                                                                                    \
        _mm256_storeu_ps(c + (r) * ldc, _mm256_add_ps(_mm256_loadu_ps(c + (r) * ldc), v0));     \
        _mm256_storeu_ps(c + (r) * ldc + 8, _mm256_add_ps(_mm256_loadu_ps(c + (r) * ldc + 8), v1)); \
    }
    STORE_ROW(0, c00, c01)
    STORE_ROW(1, c10, c11)
    STORE_ROW(2, c20, c21)
    STORE_ROW(3, c30, c31)
    STORE_ROW(4, c40, c41)
    STORE_ROW(5, c50, c51)
#undef STORE_ROW
}

// The micro-kernel on a partial tile (rows < 6 or cols < 16): computed into a
// local tile, then merged. Same per-element summation order as the full tile.
AVX2 static void micro_edge(const float *restrict a, const float *restrict b, int64_t kc, float *restrict c,
                            int64_t ldc, int first, int64_t rows, int64_t cols) {
    float t[MR * NR];
    micro_6x16(a, b, kc, t, NR, 1);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) c[r * ldc + j] = first ? t[r * NR + j] : c[r * ldc + j] + t[r * NR + j];
}

// Rows [0, m) × columns [0, kc) of a (leading dimension lda) into [⌈m/6⌉][kc][6], zero padded.
static void pack_a(float *restrict ap, const float *restrict a, int64_t lda, int64_t m, int64_t kc) {
    for (int64_t r0 = 0; r0 < m; r0 += MR, ap += MR * kc) {
        const int64_t rows = m - r0 < MR ? m - r0 : MR;
        for (int64_t r = 0; r < MR; r++) {
            if (r < rows) {
                const float *src = a + (r0 + r) * lda;
                for (int64_t k = 0; k < kc; k++) ap[k * MR + r] = src[k];
            } else {
                for (int64_t k = 0; k < kc; k++) ap[k * MR + r] = 0.0f;
            }
        }
    }
}

AVX2_INLINE void transpose8(__m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Forward tile: rows [o0, o0 + nc) × columns [k0, k0 + kc) of W, transposed
// into panels [⌈nc/16⌉][kc][16] (panel j holds W rows o0+16j..o0+16j+15).
// `rows` is a 16 × KC staging area, `tmp` one block.
AVX2 static void pack_w_forward(float *restrict bp, const qk_packed *w, int64_t o0, int64_t nc, int64_t k0,
                                int64_t kc, float *restrict rows, float *restrict tmp) {
    const int64_t in = w->cols;
    for (int64_t j0 = 0; j0 < nc; j0 += NR, bp += NR * kc) {
        for (int64_t r = 0; r < NR; r++) {
            if (j0 + r < nc) qk_dequantize_span_avx2(rows + r * KC, w, (o0 + j0 + r) * in + k0, kc, tmp);
            else memset(rows + r * KC, 0, (size_t)kc * sizeof(float));
        }
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8)
            for (int64_t h = 0; h < NR; h += 8) {
                __m256 v[8];
                for (int q = 0; q < 8; q++) v[q] = _mm256_loadu_ps(rows + (h + q) * KC + k);
                transpose8(v);
                for (int q = 0; q < 8; q++) _mm256_store_ps(bp + (k + q) * NR + h, v[q]);
            }
        for (; k < kc; k++)
            for (int64_t r = 0; r < NR; r++) bp[k * NR + r] = rows[r * KC + k];
    }
}

// Backward tile: rows [k0, k0 + kc) × columns [j0, j0 + nc) of W into panels
// [⌈nc/16⌉][kc][16] (panel p holds columns j0+16p..j0+16p+15), zero padded.
AVX2 static void pack_w_backward(float *restrict bp, const qk_packed *w, int64_t k0, int64_t kc, int64_t j0,
                                 int64_t nc, float *restrict row, float *restrict tmp) {
    const int64_t in = w->cols, panels = (nc + NR - 1) / NR;
    memset(row + nc, 0, (size_t)(panels * NR - nc) * sizeof(float));
    for (int64_t k = 0; k < kc; k++) {
        qk_dequantize_span_avx2(row, w, (k0 + k) * in + j0, nc, tmp);
        for (int64_t p = 0; p < panels; p++) {
            _mm256_store_ps(bp + (p * kc + k) * NR, _mm256_loadu_ps(row + p * NR));
            _mm256_store_ps(bp + (p * kc + k) * NR + 8, _mm256_loadu_ps(row + p * NR + 8));
        }
    }
}

// C[m × nc] (=|+=) packed A · packed B panels, C with leading dimension ldc.
AVX2 static void tile_multiply(float *restrict c, int64_t ldc, const float *restrict ap, const float *restrict bp,
                               int64_t m, int64_t nc, int64_t kc, int first) {
    for (int64_t i0 = 0; i0 < m; i0 += MB) {
        const int64_t i1 = m - i0 < MB ? m : i0 + MB;
        for (int64_t j = 0; j < nc; j += NR) {
            const float *b = bp + j * kc;
            const int64_t cols = nc - j < NR ? nc - j : NR;
            for (int64_t i = i0; i < i1; i += MR) {
                const float *a = ap + i * kc;
                const int64_t rows = m - i < MR ? m - i : MR;
                if (rows == MR && cols == NR) micro_6x16(a, b, kc, c + i * ldc + j, ldc, first);
                else micro_edge(a, b, kc, c + i * ldc + j, ldc, first, rows, cols);
            }
        }
    }
}

typedef struct {
    float *a;     // MC_pad × KC
    float *b;     // 256 × KC
    float *rows;  // 16 × KC (also one row of 256 + 16)
    float *tmp;   // one block
} tile_scratch;

static tile_scratch tile_scratch_split(float *scratch) {
    const size_t a = (size_t)((MC + MR - 1) / MR * MR) * KC;
    tile_scratch s = {scratch, scratch + a, scratch + a + (size_t)NC_BWD * KC, scratch + a + (size_t)(NC_BWD + NR) * KC};
    return s;
}

static size_t tile_scratch_floats(void) {
    return (size_t)((MC + MR - 1) / MR * MR) * KC + (size_t)(NC_BWD + NR) * KC + 256;
}

AVX2 static void tiled_forward(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                               int64_t begin, int64_t end, float *restrict scratch) {
    const int64_t in = w->cols, out = w->rows;
    const tile_scratch s = tile_scratch_split(scratch);
    const int64_t mc = qk_chunk_rows(n, MC);
    for (int64_t i0 = 0; i0 < n; i0 += mc) {
        const int64_t m = n - i0 < mc ? n - i0 : mc;
        for (int64_t k0 = 0; k0 < in; k0 += KC) {
            const int64_t kc = in - k0 < KC ? in - k0 : KC;
            pack_a(s.a, x + i0 * in + k0, in, m, kc);
            for (int64_t o0 = begin; o0 < end; o0 += NC_FWD) {
                const int64_t nc = end - o0 < NC_FWD ? end - o0 : NC_FWD;
                pack_w_forward(s.b, w, o0, nc, k0, kc, s.rows, s.tmp);
                tile_multiply(y + i0 * out + o0, out, s.a, s.b, m, nc, kc, k0 == 0);
            }
        }
    }
}

AVX2 static void tiled_backward(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                                int64_t begin, int64_t end, int accumulate, float *restrict scratch) {
    const int64_t in = w->cols, out = w->rows;
    const tile_scratch s = tile_scratch_split(scratch);
    const int64_t mc = qk_chunk_rows(n, MC);
    for (int64_t i0 = 0; i0 < n; i0 += mc) {
        const int64_t m = n - i0 < mc ? n - i0 : mc;
        for (int64_t k0 = 0; k0 < out; k0 += KC) {
            const int64_t kc = out - k0 < KC ? out - k0 : KC;
            pack_a(s.a, dy + i0 * out + k0, out, m, kc);
            for (int64_t j0 = begin; j0 < end; j0 += NC_BWD) {
                const int64_t nc = end - j0 < NC_BWD ? end - j0 : NC_BWD;
                pack_w_backward(s.b, w, k0, kc, j0, nc, s.rows, s.tmp);
                tile_multiply(dx + i0 * in + j0, in, s.a, s.b, m, nc, kc, k0 == 0 && !accumulate);
            }
        }
    }
}

// ----------------------------------------------------------------------------
// Entry points
// ----------------------------------------------------------------------------

static int gemv_applies(const qk_packed *w, int64_t n) {
    return n <= QK_GEMV_MAX_N && w->cols % w->block_size == 0;
}

int qk_matmul_forward_tiled_avx2(const qk_packed *w, int64_t n) {
    return !qk_gemv_avx512_applies(w, n) && !gemv_applies(w, n);
}

size_t qk_matmul_scratch_floats_avx2(const qk_packed *w, int64_t n, int32_t direction) {
    (void)direction;
    size_t floats = gemv_applies(w, n) ? gemv_forward_scratch_floats(w, n) : 0;
    if (tile_scratch_floats() > floats) floats = tile_scratch_floats();
    if (qk_tiled_avx512_scratch_floats() > floats) floats = qk_tiled_avx512_scratch_floats();
    if (qk_gemv_avx512_scratch_floats(w, n) > floats) floats = qk_gemv_avx512_scratch_floats(w, n);
    return floats;
}

void qk_matmul_forward_avx2(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                            int64_t begin, int64_t end, float *restrict scratch) {
    if (n <= 0 || end <= begin) return;
    if (w->cols == 0) {
        for (int64_t i = 0; i < n; i++) memset(y + i * w->rows + begin, 0, (size_t)(end - begin) * sizeof(float));
        return;
    }
    if (qk_gemv_avx512_applies(w, n)) qk_gemv_forward_avx512(y, x, n, w, begin, end, scratch);
    else if (gemv_applies(w, n)) gemv_forward_any(y, x, n, w, begin, end, scratch);
    else if (qk_avx512_allowed()) qk_tiled_forward_avx512(y, x, n, w, begin, end, scratch);
    else tiled_forward(y, x, n, w, begin, end, scratch);
}

void qk_matmul_backward_avx2(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                             int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch) {
    if (n <= 0 || end <= begin) return;
    if (w->rows == 0) {
        if (!accumulate)
            for (int64_t i = 0; i < n; i++) memset(dx + i * w->cols + begin, 0, (size_t)(end - begin) * sizeof(float));
        return;
    }
    const int64_t B = w->block_size;
    const int aligned = begin % B == 0 && end % B == 0;
    if (aligned && qk_gemv_avx512_applies(w, n)) qk_gemv_backward_avx512(dx, dy, n, w, begin, end, accumulate, scratch);
    else if (aligned && gemv_applies(w, n)) gemv_backward_any(dx, dy, n, w, begin, end, accumulate, scratch);
    else if (qk_avx512_allowed()) qk_tiled_backward_avx512(dx, dy, n, w, begin, end, accumulate, scratch);
    else tiled_backward(dx, dy, n, w, begin, end, accumulate, scratch);
}

#endif
