// AVX-512 decode for the few-rows products, used by the AVX2 entry points
// when the CPU also has AVX-512F. In AVX2 a 16-entry fp32 table lookup costs
// about 13 shuffles per 32 weights (qgemm_avx2.c), which caps a core well
// below its share of memory bandwidth. AVX-512's vpermps looks up 16 floats in
// a 16-entry table at once: one zero-extension, one shift and two lookups per
// 32 weights, in natural order, so x and dx need no permutation. INT8 codes
// are sign-extended and converted, 16 at a time.
// The forward scales each block's lookup table (4-bit) or partial sums
// (INT8) once; the backward scales dy by the block step once per block.
// A single row of x through a 4-bit weight (decode, the case memory bandwidth
// bounds) takes a leaner path that drops the zero-extensions: see
// chunked_forward.
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

// Read once: the few-rows paths ask for every 64 blocks of a row, and the
// CPU model lookups showed in decode profiles (0.7 % of samples).
static int cpu_has_avx512f;

__attribute__((constructor)) static void detect_avx512f(void) {
    __builtin_cpu_init();
    cpu_has_avx512f = __builtin_cpu_supports("avx512f");
}

int qk_avx512_allowed(void) {
    return cpu_has_avx512f && atomic_load_explicit(&allow_avx512, memory_order_relaxed);
}

int qk_gemv_avx512_applies(const qk_packed *w, int64_t n) {
    return n <= QK_GEMV512_MAX_N && w->cols % w->block_size == 0 && qk_avx512_allowed();
}

AVX512 static __m512 table_of(int32_t type) {
    float t[16];
    qk_nibble_values(t, type);
    return _mm512_loadu_ps(t);
}

// A unit is 32 weights of a block, decoded into two vectors of code values
// (not yet scaled). 4-bit, unit u: code bytes 16u..16u+15, whose low nibbles
// are weights 16u.. of the block and high nibbles weights B/2+16u.. (vpermps
// reads only the low four bits of an index). INT8: weights 32u..32u+31.
AVX512_INLINE void decode_unit(__m512 *v0, __m512 *v1, const uint8_t *c, int64_t u, __m512 table, const int int8) {
    if (int8) {
        *v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(c + 32 * u))));
        *v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(c + 32 * u + 16))));
    } else {
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + 16 * u)));
        *v0 = _mm512_permutexvar_ps(q, table);
        *v1 = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
    }
}

// Where the two vectors of unit u start within the block.
static inline int64_t unit_pos0(int64_t u, const int int8) { return int8 ? 32 * u : 16 * u; }
static inline int64_t unit_pos1(int64_t u, int64_t B, const int int8) { return int8 ? 32 * u + 16 : B / 2 + 16 * u; }

enum { STEPS = 64 };

// Steps of blocks [first, first + count) of w: DQ8 scales through the VBMI
// byte lookups where the CPU has them (a gather of the code table costs
// several times more), otherwise as AVX2 does; the same bits either way.
AVX512_INLINE void block_steps(float *restrict d, const qk_packed *w, int64_t first, int64_t count) {
    if (w->scale_kind != QK_SCALE_DQ8 || !qk_vbmi_allowed()) {
        qk_block_steps_avx2(d, w, first, count);
        return;
    }
    qk_dq8_absmax_vbmi(d, w, first, count);
    if (w->type == QK_TYPE_INT8 || w->type == QK_TYPE_INT4) {
        const float div = w->type == QK_TYPE_INT8 ? 127.0f : 7.0f;
        int64_t i = 0;
        for (; i + 16 <= count; i += 16) _mm512_storeu_ps(d + i, _mm512_div_ps(_mm512_loadu_ps(d + i), _mm512_set1_ps(div)));
        for (; i < count; i++) d[i] = d[i] / div;
    }
}

// Rows [o, o + R) of y = x·Wᵀ for NT rows of x. The R rows of W share every
// load of x. 4-bit types: each block's 16-entry table is scaled by the block
// step once, so the lookups yield the dequantized weights themselves (bit for
// bit the reference's) and go straight into the running sums. INT8: each
// block's partial sums of code · x are scaled once. Block steps come from the
// group tables t (T: DQ8 scales) or are decoded STEPS blocks at a time.
AVX512_INLINE void forward_group(float *restrict y, const float *restrict x, const qk_packed *w, int64_t o,
                                 __m512 table, const int NT, const int R, const int int8, const int T,
                                 qk_group_tables *t) {
    const int64_t in = w->cols, out = w->rows, B = w->block_size, bpr = in / B;
    const size_t bb = qk_block_bytes(w->type, w->block_size);
    float d[4][STEPS], s[4];
    if (T) qk_group_tables_need(t, w, o * bpr / QK_DQ_GROUP, ((o + R) * bpr - 1) / QK_DQ_GROUP);
    const int prefetch = o + 2 * R <= out;
    const char *next = (const char *)(w->codes + (size_t)(o + R) * bpr * bb);
    __m512 a0[4][QK_GEMV512_MAX_N], a1[4][QK_GEMV512_MAX_N];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < NT; t++) a0[r][t] = a1[r][t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < bpr; b++) {
        if (!T && b % STEPS == 0)
            for (int r = 0; r < R; r++)
                block_steps(d[r], w, (o + r) * bpr + b, bpr - b < STEPS ? bpr - b : STEPS);
        for (int r = 0; r < R; r++) s[r] = T ? *qk_group_step(t, w, (uint64_t)((o + r) * bpr + b)) : d[r][b % STEPS];
        __m512 scaled[4], p0[4][QK_GEMV512_MAX_N], p1[4][QK_GEMV512_MAX_N];
        for (int r = 0; r < R; r++) {
            if (!int8) scaled[r] = _mm512_mul_ps(table, _mm512_set1_ps(s[r]));
            for (int t = 0; t < NT; t++) p0[r][t] = p1[r][t] = _mm512_setzero_ps();
        }
        // Each row's codes are only a few cache lines long, too short a
        // stream for the hardware prefetcher to learn before it ends: fetch
        // the next group's codes (contiguous after this group's), as many
        // lines per block as this group reads.
        if (prefetch) qk_prefetch_lines(next, (size_t)b * R * bb, (size_t)(b + 1) * R * bb);
        for (int64_t u = 0; u < B / 32; u++) {
            const int64_t j0 = b * B + unit_pos0(u, int8), j1 = b * B + unit_pos1(u, B, int8);
            for (int r = 0; r < R; r++) {
                __m512 v0, v1;
                decode_unit(&v0, &v1, w->codes + (size_t)((o + r) * bpr + b) * bb, u, int8 ? table : scaled[r], int8);
                for (int t = 0; t < NT; t++) {
                    const __m512 x0 = _mm512_loadu_ps(x + t * in + j0), x1 = _mm512_loadu_ps(x + t * in + j1);
                    if (int8) {
                        p0[r][t] = _mm512_fmadd_ps(v0, x0, p0[r][t]);
                        p1[r][t] = _mm512_fmadd_ps(v1, x1, p1[r][t]);
                    } else if (NT > 1) {
                        a0[r][t] = _mm512_fmadd_ps(v1, x1, _mm512_fmadd_ps(v0, x0, a0[r][t]));
                    } else {
                        a0[r][t] = _mm512_fmadd_ps(v0, x0, a0[r][t]);
                        a1[r][t] = _mm512_fmadd_ps(v1, x1, a1[r][t]);
                    }
                }
            }
        }
        if (int8)
            for (int r = 0; r < R; r++) {
                const __m512 step = _mm512_set1_ps(s[r]);
                for (int t = 0; t < NT; t++) a0[r][t] = _mm512_fmadd_ps(_mm512_add_ps(p0[r][t], p1[r][t]), step, a0[r][t]);
            }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < NT; t++) y[t * out + o + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r][t], a1[r][t]));
}

// Rows [begin, end) of y: R rows of W at a time while the sums of R · NT
// pairs fit in registers, the rest one by one. 4-bit types with several rows
// of x keep one sum per pair instead of two, for more rows of W per load of x:
// at 4096 wide, x (NT rows) no longer fits L1 beside the codes, and each row
// of W read it again from L2 (one core, W in L2: 1.14-1.22x at n = 2-4 with
// four rows instead of two, 1.7x at n = 8 with two rows instead of one).
AVX512_INLINE void forward_rows(float *restrict y, const float *restrict x, const qk_packed *w, int64_t begin,
                                int64_t end, const int NT, const int int8, const int T, qk_group_tables *t) {
    const int R = NT == 1 ? 4 : !int8 ? (NT <= 4 ? 4 : 2) : NT <= 4 ? 2 : 1;
    const __m512 table = int8 ? _mm512_setzero_ps() : table_of(w->type);
    int64_t o = begin;
    for (; o + R <= end; o += R) forward_group(y, x, w, o, table, NT, R, int8, T, t);
    for (; o < end; o++) forward_group(y, x, w, o, table, NT, 1, int8, T, t);
}

// One row of x (decode), 4-bit types: the codes are read 64 bytes at a time
// as 16 dwords, each holding eight codes, and looked up eight times with
// shifts of 4: 8 shuffles and 7 shifts per 64 bytes, against 12 shuffles (the
// zero-extensions are shuffles too) and 4 shifts in natural order; shuffles
// are what a Zen 4 core runs out of first. Lane i of
// lookup k holds the weight of nibble k of dword i, so x is first permuted
// into that order (chunk_order_x) in the caller's scratch. Each chunk's sums
// are scaled once, lane by lane, by the step of the block the lane lies in.
// The core, not memory, bounds this path on Zen 4: with W in L2 it reads
// 15.0 GB/s of codes per core (NF4/64/DQ8, 4096 wide). Every 16 weights take
// a shift, a lookup and an FMA, 512-bit operations that occupy one of four
// shared pipes for two cycles each, and each chunk's scaling takes three
// more: 26 per 64 bytes and row, 13 cycles at best, 15 measured for the loop
// alone; variants with fewer operations ran faster in proportion (without
// any scaling, 11 % faster). Loads at byte offsets 1-3 instead of three
// shifts, or more partial sums, gained nothing: the unaligned loads cost what
// the shifts did.
enum { CHUNK = 64, CHUNK_WEIGHTS = 128 };

static size_t chunk_x_floats(const qk_packed *w) { return (size_t)((w->cols / 2 + CHUNK - 1) / CHUNK) * CHUNK_WEIGHTS; }

// Rows of W at most per group of the few-rows paths (chunked_group,
// forward_group).
enum { GROUP_ROWS = 4 };

// DQ8 block steps come from the group tables (see chunked_group; for one row
// of x, blocks of 64 or more), slots for every group of scales a group of
// rows can touch.
static int64_t group_slots(const qk_packed *w) { return qk_group_slots(GROUP_ROWS * (w->cols / w->block_size)); }

static int uses_group_tables(const qk_packed *w) { return w->scale_kind == QK_SCALE_DQ8 && w->block_size >= 64; }

// M(B, T) with the block size B and the use of group tables T as constants,
// so the chunk loops unroll for each.
#define CHUNK_VARIANTS(B, tables, M)     \
    switch (B) {                         \
    case 32: M(32, 0); break;            \
    case 64:                             \
        if (tables) M(64, 1);            \
        else M(64, 0);                   \
        break;                           \
    case 128:                            \
        if (tables) M(128, 1);           \
        else M(128, 0);                  \
        break;                           \
    default:                             \
        if (tables) M(256, 1);           \
        else M(256, 0);                  \
        break;                           \
    }

size_t qk_gemv_avx512_scratch_floats(const qk_packed *w, int64_t n) {
    // forward_group: the group tables of up to four rows.
    if (n != 1 || w->type == QK_TYPE_INT8)
        return w->scale_kind == QK_SCALE_DQ8 ? (size_t)(group_slots(w) * QK_DQ_GROUP) : 0;
    // x in chunk order, then the group tables, or a group of rows' block steps
    // (+ 16: chunk_steps reads a vector from a chunk's first step).
    if (uses_group_tables(w)) return chunk_x_floats(w) + (size_t)(group_slots(w) * QK_DQ_GROUP);
    return chunk_x_floats(w) + (size_t)(GROUP_ROWS * (w->cols / w->block_size)) + 16;
}

// xp[128 c + 16 k + i] = the weight of nibble k (low, high, low, ...) of byte
// 64 c + 4 i + k / 2 of a row: the low nibble of byte p of a block is weight p
// of the block, the high nibble weight B/2 + p. Bytes past the row give 0.
// Runs of 16 bytes never straddle a half block (B/2 >= 16), so each is one
// load of x for its low nibbles and one for its high nibbles.
AVX512 static void chunk_order_x(float *restrict xp, const float *restrict x, int64_t in, int64_t B) {
    const int64_t half = B / 2, row_bytes = in / 2, chunks = (row_bytes + CHUNK - 1) / CHUNK;
    // Lane i of a lookup takes byte 4 i + m of the chunk: byte 4 (i % 4) + m of run i / 4.
    __m512i pick[4];
    for (int m = 0; m < 4; m++) {
        int32_t idx[16];
        for (int i = 0; i < 16; i++) idx[i] = (i % 8) / 4 * 16 + 4 * (i % 4) + m;
        pick[m] = _mm512_loadu_si512(idx);
    }
    for (int64_t c = 0; c < chunks; c++) {
        __m512 lo[4], hi[4];
        for (int s = 0; s < 4; s++) {
            const int64_t p = c * CHUNK + 16 * s, col = p / half * B + p % half;
            lo[s] = p < row_bytes ? _mm512_loadu_ps(x + col) : _mm512_setzero_ps();
            hi[s] = p < row_bytes ? _mm512_loadu_ps(x + col + half) : _mm512_setzero_ps();
        }
        for (int m = 0; m < 4; m++) {
            _mm512_storeu_ps(xp + c * CHUNK_WEIGHTS + 32 * m, _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(lo[0], pick[m], lo[1]),
                                                                             _mm512_permutex2var_ps(lo[2], pick[m], lo[3])));
            _mm512_storeu_ps(xp + c * CHUNK_WEIGHTS + 32 * m + 16, _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(hi[0], pick[m], hi[1]),
                                                                                  _mm512_permutex2var_ps(hi[2], pick[m], hi[3])));
        }
    }
}

// lo in lanes 0-7, hi in lanes 8-15: the steps of a chunk of two 64-blocks.
AVX512_INLINE __m512 halves(float lo, float hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(lo)), _mm256_castps_pd(_mm256_set1_ps(hi)), 1));
}

// The step of each lane's block in a chunk whose first block's step is d[0].
AVX512_INLINE __m512 chunk_steps(const float *d, const int B) {
    if (B >= 128) return _mm512_set1_ps(d[0]);
    if (B == 64) return halves(d[0], d[1]);
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_loadu_ps(d));
}

// acc[r] += the scaled sums of chunk c of rows r < R, whose lanes' block
// steps are step[r]; `mask` selects the dwords of a short last chunk.
AVX512_INLINE void chunk_rows(__m512 *acc, const uint8_t *const *row, int64_t c, const float *restrict xc,
                              const __m512 *step, __m512 table, const int R, __mmask16 mask) {
    __m512i q[GROUP_ROWS];
    __m512 p0[GROUP_ROWS], p1[GROUP_ROWS];
    for (int r = 0; r < R; r++) q[r] = _mm512_maskz_loadu_epi32(mask, row[r] + c * CHUNK);
    for (int k = 0; k < 8; k += 2) {
        const __m512 x0 = _mm512_loadu_ps(xc + 16 * k), x1 = _mm512_loadu_ps(xc + 16 * k + 16);
        for (int r = 0; r < R; r++) {
            const __m512 v0 = _mm512_permutexvar_ps(_mm512_srli_epi32(q[r], 4 * k), table);
            const __m512 v1 = _mm512_permutexvar_ps(_mm512_srli_epi32(q[r], 4 * k + 4), table);
            p0[r] = k ? _mm512_fmadd_ps(v0, x0, p0[r]) : _mm512_mul_ps(v0, x0);
            p1[r] = k ? _mm512_fmadd_ps(v1, x1, p1[r]) : _mm512_mul_ps(v1, x1);
        }
    }
    // The sums of lanes past a short last chunk are zero, but their steps may
    // lie past the row's, in scratch nothing wrote: zeroed, or 0 · NaN is NaN.
    for (int r = 0; r < R; r++)
        acc[r] = _mm512_fmadd_ps(_mm512_add_ps(p0[r], p1[r]), _mm512_maskz_mov_ps(mask, step[r]), acc[r]);
}

// The lane steps of chunk c of a row whose first block is b0: from the group
// tables (T; the loop itself looks them up, two scalar loads each on
// units it leaves idle: decoding them with vector shuffles before the loop
// took 5 % of the time from L2), or from the decoded steps d of the row.
// `last` marks a short last chunk, whose blocks past the row must not be read.
AVX512_INLINE __m512 lane_steps(const qk_group_tables *t, const qk_packed *w, int64_t b0, const float *d, int64_t c,
                                const int B, const int T, const int last) {
    if (!T) return chunk_steps(d + c * CHUNK_WEIGHTS / B, B);
    if (B >= 128) return _mm512_set1_ps(*qk_group_step(t, w, b0 + c * CHUNK_WEIGHTS / B));
    const float *s0 = qk_group_step(t, w, b0 + 2 * c), *s1 = last ? s0 : qk_group_step(t, w, b0 + 2 * c + 1);
    return halves(*s0, *s1);
}

// Rows [o, o + R) of y = x·Wᵀ, R <= GROUP_ROWS: the rows share the loads of
// x, each reads its own stream of codes, and the next rows' codes are
// prefetched as in forward_group. Four rows ran faster than two once the
// prefetches of wide rows went to L2 (Zen 4, 2 threads, from memory: 1.07-1.10x
// at 4096 and 5632 wide, 1.01x at 2048; one core from L2, 1.04x). Block
// steps come from the group tables t where there are some; otherwise the
// rows' steps are decoded first, in one call, into `steps`: decoding them in
// windows per row paid the call's fixed cost more often (5-7 % of the time on
// rows 2048 wide, where each row is half a run of 64 scales).
// x in chunk order takes 4 bytes per weight of a row, so rows of 4096 and
// longer leave too little of L1 for the prefetched codes as well, which then
// evicted x: those rows' codes are prefetched into L2 only (Zen 4, 2 threads,
// from memory: 1.15x at 4096 wide, 1.07x at 5120, 1.26x at 8192, 1.36x at
// 11008; at 3072 that cost a fifth of the speed).
AVX512_INLINE void chunked_group(float *restrict y, const float *restrict xp, const qk_packed *w, int64_t o,
                                 __m512 table, const int R, const int B, const int T, qk_group_tables *t,
                                 float *restrict steps) {
    const int64_t in = w->cols, bpr = in / B, row_bytes = in / 2, full = row_bytes / CHUNK;
    if (T) qk_group_tables_need(t, w, o * bpr / QK_DQ_GROUP, ((o + R) * bpr - 1) / QK_DQ_GROUP);
    else block_steps(steps, w, o * bpr, R * bpr);
    const __mmask16 tail = (__mmask16)((1u << (row_bytes % CHUNK / 4)) - 1);
    const float *d[GROUP_ROWS];
    const uint8_t *row[GROUP_ROWS];
    const char *next = (const char *)(w->codes + (size_t)(o + R) * row_bytes);
    const int prefetch = o + 2 * R <= w->rows, to_l2 = in >= 4096;
    __m512 acc[GROUP_ROWS], step[GROUP_ROWS];
    for (int r = 0; r < R; r++) {
        acc[r] = _mm512_setzero_ps();
        row[r] = w->codes + (size_t)(o + r) * row_bytes;
        d[r] = steps + r * bpr;
    }
    // The next rows' scale codes: a line or two that the table lookups would
    // otherwise wait for at the start of each row.
    if (T && prefetch) qk_prefetch_lines((const char *)w->scales, (size_t)(o + R) * bpr, (size_t)(o + 2 * R) * bpr);
    for (int64_t c = 0; c < full; c++) {
        if (prefetch)
            for (int r = 0; r < R; r++) {
                if (to_l2) _mm_prefetch(next + (c * R + r) * CHUNK, _MM_HINT_T1);
                else _mm_prefetch(next + (c * R + r) * CHUNK, _MM_HINT_T0);
            }
        for (int r = 0; r < R; r++) step[r] = lane_steps(t, w, (o + r) * bpr, d[r], c, B, T, 0);
        chunk_rows(acc, row, c, xp + c * CHUNK_WEIGHTS, step, table, R, 0xFFFF);
    }
    if (tail) {
        for (int r = 0; r < R; r++) step[r] = lane_steps(t, w, (o + r) * bpr, d[r], full, B, T, 1);
        chunk_rows(acc, row, full, xp + full * CHUNK_WEIGHTS, step, table, R, tail);
    }
    for (int r = 0; r < R; r++) y[o + r] = _mm512_reduce_add_ps(acc[r]);
}

AVX512 static void chunked_forward(float *restrict y, const float *restrict x, const qk_packed *w, int64_t begin,
                                   int64_t end, float *restrict scratch) {
    chunk_order_x(scratch, x, w->cols, w->block_size);
    float *steps = scratch + chunk_x_floats(w);
    qk_group_tables t = {steps, uses_group_tables(w) ? group_slots(w) : 0, 0, 0};
    const __m512 table = table_of(w->type);
    int64_t o = begin;
#define ROWS(B, T)                                                                              \
    do {                                                                                        \
        for (; o + 4 <= end; o += 4) chunked_group(y, scratch, w, o, table, 4, B, T, &t, steps); \
        for (; o + 2 <= end; o += 2) chunked_group(y, scratch, w, o, table, 2, B, T, &t, steps); \
        if (o < end) chunked_group(y, scratch, w, o, table, 1, B, T, &t, steps);                 \
    } while (0)
    CHUNK_VARIANTS(w->block_size, t.slots, ROWS)
#undef ROWS
}

// Rows [o, o + R) of W (R a constant: the loop over rows unrolls) over blocks
// [b0, b1) of the slice: dx += dy[:, o..o+R) · W[o..o+R, slice], rows of dx
// ld floats apart. Each dx vector is loaded and stored once per R rows;
// every dx element still sums the rows of W in order, one FMA each.
AVX512_INLINE void backward_group(float *restrict dx, int64_t ld, const float *restrict dy, const qk_packed *w,
                                  int64_t o, int64_t b0, int64_t b1, __m512 table, const int NT, const int R,
                                  const int int8) {
    const int64_t in = w->cols, out = w->rows, B = w->block_size, bpr = in / B;
    const size_t bb = qk_block_bytes(w->type, w->block_size), row_bytes = (size_t)bpr * bb;
    // Offset of the next group's first row: those rows over this slice are
    // prefetched as in forward_group.
    const size_t next = (size_t)(o + R) * row_bytes;
    const int prefetch = o + 2 * R <= out;
    float d[4][STEPS];
    for (int64_t b = b0; b < b1; b++) {
        if ((b - b0) % STEPS == 0)
            for (int r = 0; r < R; r++)
                block_steps(d[r], w, (o + r) * bpr + b, b1 - b < STEPS ? b1 - b : STEPS);
        // dy · block step, broadcast once per block and kept in registers: read
        // back from the stack after each unit's dx stores, it could be taken
        // for a load that depends on them (their addresses can match in the
        // low 12 bits), which made this kernel several times slower in some
        // processes than in others.
        __m512 s[4][QK_GEMV512_MAX_N];
        const uint8_t *c[4];
        for (int r = 0; r < R; r++) {
            for (int t = 0; t < NT; t++) s[r][t] = _mm512_set1_ps(dy[t * out + o + r] * d[r][(b - b0) % STEPS]);
            c[r] = w->codes + (size_t)(o + r) * row_bytes + (size_t)b * bb;
            if (prefetch) qk_prefetch_lines((const char *)w->codes, next + r * row_bytes + b * bb, next + r * row_bytes + (b + 1) * bb);
        }
        for (int64_t u = 0; u < B / 32; u++) {
            float *d0 = dx + b * B + unit_pos0(u, int8), *d1 = dx + b * B + unit_pos1(u, B, int8);
            __m512 a0[QK_GEMV512_MAX_N], a1[QK_GEMV512_MAX_N];
            for (int t = 0; t < NT; t++) {
                a0[t] = _mm512_loadu_ps(d0 + t * ld);
                a1[t] = _mm512_loadu_ps(d1 + t * ld);
            }
            for (int r = 0; r < R; r++) {
                __m512 v0, v1;
                decode_unit(&v0, &v1, c[r], u, table, int8);
                for (int t = 0; t < NT; t++) {
                    a0[t] = _mm512_fmadd_ps(s[r][t], v0, a0[t]);
                    a1[t] = _mm512_fmadd_ps(s[r][t], v1, a1[t]);
                }
            }
            for (int t = 0; t < NT; t++) {
                _mm512_storeu_ps(d0 + t * ld, a0[t]);
                _mm512_storeu_ps(d1 + t * ld, a1[t]);
            }
        }
    }
}

// Floats of dx one tile holds (16 KB), and the padding after each row.
enum { TILE_FLOATS = 4096, TILE_PAD = 16 };

// dx[:, begin:end] += dy · W over whole blocks, in tiles of columns whose dx
// (NT rows, at most TILE_FLOATS) is copied to a buffer on the stack, each
// row TILE_PAD floats past a multiple of 64 bytes: every group of rows loads
// and stores all of its tile's dx, which a whole slice at n = 8 (8 × 2048
// floats) had to take from L2, and rows of dx 4096 floats apart share L1
// sets with each other and with the codes. Rows of W four at a time for up
// to two rows of dy, else two: with four, the broadcast dy · step (R · NT
// registers) and the 2 · NT running dx vectors outgrew the 32 registers.
AVX512_INLINE void backward_rows(float *restrict dx, const float *restrict dy, const qk_packed *w, int64_t begin,
                                 int64_t end, const int NT, const int int8) {
    const int64_t in = w->cols, B = w->block_size, b0 = begin / B, b1 = end / B;
    const int64_t tile = TILE_FLOATS / NT / B > 1 ? TILE_FLOATS / NT / B : 1;
    const __m512 table = int8 ? _mm512_setzero_ps() : table_of(w->type);
    _Alignas(64) float buf[TILE_FLOATS + QK_GEMV512_MAX_N * TILE_PAD];
    for (int64_t t0 = b0; t0 < b1; t0 += tile) {
        const int64_t t1 = t0 + tile < b1 ? t0 + tile : b1, cols = (t1 - t0) * B, ld = cols + TILE_PAD;
        for (int t = 0; t < NT; t++) memcpy(buf + t * ld, dx + t * in + t0 * B, (size_t)cols * sizeof(float));
        // dx of block b of the tile at base + b·B, as backward_group indexes it.
        float *base = buf - t0 * B;
        int64_t o = 0;
        if (NT <= 2)
            for (; o + 4 <= w->rows; o += 4) backward_group(base, ld, dy, w, o, t0, t1, table, NT, 4, int8);
        else
            for (; o + 2 <= w->rows; o += 2) backward_group(base, ld, dy, w, o, t0, t1, table, NT, 2, int8);
        for (; o < w->rows; o++) backward_group(base, ld, dy, w, o, t0, t1, table, NT, 1, int8);
        for (int t = 0; t < NT; t++) memcpy(dx + t * in + t0 * B, buf + t * ld, (size_t)cols * sizeof(float));
    }
}

// One row of dy (4-bit types): dx in chunk order, as the decode reads x
// (chunk_order_x), so each 64 bytes of codes take 7 shifts, 8 lookups and 8
// FMAs per row of W, against 4 zero-extensions, 8 lookups and 4 shifts in
// natural order, where the shuffles bounded the loop (one core, 2048 rows:
// 13.0 GB/s of codes against 9.5). Tiles of dx (at most TILE_FLOATS, and
// STEPS blocks, the most block_steps decodes at once) start on a block and a
// chunk, so chunk_order_x permutes each into a buffer on the stack as it
// does x; slices that do not start on a chunk (128 columns) take
// backward_rows.

// Column of tile position p = 128 c + 16 k + i (lookup k, lane i of chunk c),
// as chunk_order_x places it: nibble k of byte 64 c + 4 i + k / 2 of the
// tile (B a power of two: half a block = 1 << hs bytes); -1 past the tile's
// `bytes`.
static inline int64_t chunk_column(int64_t p, int64_t bytes, int hs) {
    const int64_t c = p / CHUNK_WEIGHTS, k = p % CHUNK_WEIGHTS / 16, i = p % 16, byte = CHUNK * c + 4 * i + k / 2;
    if (byte >= bytes) return -1;
    return ((byte >> hs) << (hs + 1)) + ((k % 2) << hs) + (byte & ((1 << hs) - 1));
}

// Rows [o, o + R) of W over a tile of dx in chunk order: tile += dy[o..o+R) ·
// W[o..o+R, tile], rows in order for every element. Block steps come from
// the group tables t (T, as in chunked_group; decoding `blocks` steps per row
// and tile took 12 % of the time) or are decoded into d. The next rows'
// codes over the tile are prefetched chunk by chunk into L2, where L1 would
// evict the tile (Zen 4, 2 threads, from memory: 4096x4096 0.35-0.36 ms
// against 0.47-0.56, 11008x4096 0.91-0.94 against 1.26-2.17).
AVX512_INLINE void chunked_back_group(float *restrict tile, const float *restrict dy, const qk_packed *w, int64_t o,
                                      int64_t byte0, int64_t b0, int64_t blocks, int64_t bytes, __m512 table,
                                      float *restrict d, qk_group_tables *t, const int R, const int B, const int T) {
    const int64_t bpr = w->cols / B, row_bytes = w->cols / 2, chunks = (bytes + CHUNK - 1) / CHUNK, full = bytes / CHUNK;
    const __mmask16 tail = (__mmask16)((1u << (bytes % CHUNK / 4)) - 1);
    const int prefetch = o + 2 * R <= w->rows;
    const uint8_t *row[GROUP_ROWS];
    __m512 g[GROUP_ROWS];
    if (T) qk_group_tables_need(t, w, (o * bpr + b0) / QK_DQ_GROUP, ((o + R - 1) * bpr + b0 + blocks - 1) / QK_DQ_GROUP);
    for (int r = 0; r < R; r++) {
        if (!T) block_steps(d + r * blocks, w, (o + r) * bpr + b0, blocks);
        row[r] = w->codes + (size_t)(o + r) * row_bytes + byte0;
        g[r] = _mm512_set1_ps(dy[o + r]);
    }
    for (int64_t c = 0; c < chunks; c++) {
        const __mmask16 mask = c < full ? 0xFFFF : tail;
        __m512i q[GROUP_ROWS];
        __m512 st[GROUP_ROWS];
        for (int r = 0; r < R; r++) {
            if (prefetch) _mm_prefetch((const char *)row[r] + R * row_bytes + c * CHUNK, _MM_HINT_T1);
            q[r] = _mm512_maskz_loadu_epi32(mask, row[r] + c * CHUNK);
            // Lanes past the tile get 0, whatever the steps past it hold.
            const __m512 lanes = lane_steps(t, w, (o + r) * bpr + b0, d + r * blocks, c, B, T, c == full);
            st[r] = _mm512_maskz_mov_ps(mask, _mm512_mul_ps(g[r], lanes));
        }
        for (int k = 0; k < 8; k++) {
            float *at = tile + c * CHUNK_WEIGHTS + 16 * k;
            __m512 a = _mm512_load_ps(at);
            for (int r = 0; r < R; r++)
                a = _mm512_fmadd_ps(st[r], _mm512_permutexvar_ps(_mm512_srli_epi32(q[r], 4 * k), table), a);
            _mm512_store_ps(at, a);
        }
    }
}

// dx[begin:end] += dy · W[:, begin:end] for one row of dy, W 4-bit, begin on
// a chunk and a block; scratch holds the group tables.
AVX512 static void chunked_backward(float *restrict dx, const float *restrict dy, const qk_packed *w, int64_t begin,
                                    int64_t end, float *restrict scratch) {
    const int64_t B = w->block_size;
    const int64_t span = TILE_FLOATS < STEPS * B ? TILE_FLOATS : STEPS * B;
    const int hs = __builtin_ctzll((unsigned long long)(B / 2));
    const __m512 table = table_of(w->type);
    _Alignas(64) float tile[TILE_FLOATS];
    // Steps of four rows' blocks over a tile, + 16: chunk_steps reads a vector.
    float d[GROUP_ROWS * STEPS + 16];
    qk_group_tables t = {scratch, uses_group_tables(w) ? group_slots(w) : 0, 0, 0};
    for (int64_t col0 = begin; col0 < end; col0 += span) {
        const int64_t cols = end - col0 < span ? end - col0 : span, byte0 = col0 / 2, bytes = cols / 2;
        const int64_t positions = (bytes + CHUNK - 1) / CHUNK * CHUNK_WEIGHTS, blocks = cols / B, b0 = col0 / B;
        chunk_order_x(tile, dx + col0, cols, B);
        int64_t o = 0;
#define GROUPS(BS, T)                                                                                    \
    do {                                                                                                 \
        for (; o + GROUP_ROWS <= w->rows; o += GROUP_ROWS)                                               \
            chunked_back_group(tile, dy, w, o, byte0, b0, blocks, bytes, table, d, &t, GROUP_ROWS, BS, T); \
        for (; o < w->rows; o++) chunked_back_group(tile, dy, w, o, byte0, b0, blocks, bytes, table, d, &t, 1, BS, T); \
    } while (0)
        CHUNK_VARIANTS(B, t.slots, GROUPS)
#undef GROUPS
        for (int64_t p = 0; p < positions; p++) {
            const int64_t col = chunk_column(p, bytes, hs);
            if (col >= 0) dx[col0 + col] = tile[p];
        }
    }
}

AVX512 void qk_gemv_forward_avx512(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                                   int64_t begin, int64_t end, float *restrict scratch) {
    if (n == 1 && w->type != QK_TYPE_INT8) {
        chunked_forward(y, x, w, begin, end, scratch);
        return;
    }
    qk_group_tables t = {scratch, group_slots(w), 0, 0};
#define FWD_T(NT, T)                                                                           \
    if (w->type == QK_TYPE_INT8) forward_rows(y, x, w, begin, end, NT, 1, T, &t);              \
    else forward_rows(y, x, w, begin, end, NT, 0, T, &t);
#define FWD(NT)                                                                                \
    if (w->scale_kind == QK_SCALE_DQ8) {                                                       \
        FWD_T(NT, 1)                                                                           \
    } else {                                                                                   \
        FWD_T(NT, 0)                                                                           \
    }
    QK_FOR_ROWS8(n, FWD)
#undef FWD
#undef FWD_T
}

AVX512 void qk_gemv_backward_avx512(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                                    int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch) {
    if (!accumulate)
        for (int64_t i = 0; i < n; i++) memset(dx + i * w->cols + begin, 0, (size_t)(end - begin) * sizeof(float));
    if (n == 1 && w->type != QK_TYPE_INT8 && begin % CHUNK_WEIGHTS == 0) {
        chunked_backward(dx, dy, w, begin, end, scratch);
        return;
    }
#define BWD(NT)                                                                                \
    if (w->type == QK_TYPE_INT8) backward_rows(dx, dy, w, begin, end, NT, 1);                  \
    else backward_rows(dx, dy, w, begin, end, NT, 0);
    QK_FOR_ROWS8(n, BWD)
#undef BWD
}

#endif
