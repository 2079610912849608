// AVX-512 version of the many-rows products (the tiled GEMM of qgemm_avx2.c),
// taken by the AVX2 entry points on CPUs with AVX-512F while
// qk_matmul_allow_avx512 permits it. The plan is the same: dequantize a tile
// of W once per pass into panels and run a register-blocked micro-kernel over
// it for every row of X. With 32 registers the micro-tile is 12 rows of X ×
// 32 columns (24 accumulators), so each broadcast of X feeds two FMAs and the
// panel loads are a small share of the loads. Other differences:
// - X is not transposed into micro-panels: the kernel broadcasts straight
//   from its rows where they lie. Only when the rows are a multiple of 4 KiB
//   apart, which puts all of a micro-tile's rows in one L1 set, a pass first
//   copies them (a memcpy per row) into rows KC + 16 floats apart.
// - Partial tiles need no separate path: the kernel is compiled for each row
//   count 1..12, and masked loads and stores cover panels narrower than 32.
// - 4-bit codes decode 16 weights per table lookup (vpermps); the forward's
//   tile is transposed 16 × 16 in registers.
// Summation order is the AVX2 tile's: every output element sums its KC-wide
// chunks of k in order, each chunk one FMA per k in order starting from zero,
// then adds the chunk to the output. So both paths give the same bits, and
// neither depends on the slice.
#include "CQLoRAKernels.h"
#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define AVX512_INLINE __attribute__((target("avx512f,avx2,fma,f16c"), always_inline)) static inline

// MR × NR micro-tile; X is read MC rows × KC columns at a time (copied rows
// AS floats apart where it is copied), W tiles are NC × KC. One W tile
// (128 KB) stays in L2 (1 MiB on Zen 4) while the micro-kernel streams it.
// MC = 1032 keeps a training batch of 1024 rows in one pass over W, so each
// tile is decoded once; those rows of X (1 MB) then spill to L3, which the
// row-by-row broadcasts tolerate: the 31M model's training products
// (n = 1024) took 2-3 % less time than with MC = 516 (X in L2, W decoded
// twice), 11 of 14 pairs.
// Measured on Zen 4: wider W tiles (192, 256) cost up to a fifth of the speed
// at 64 rows.
enum { MR = 12, NR = 32, KC = 256, AS = KC + 16, MC = 1032, NC = 128 };

// Floats from one panel of the W tile to the next: a line more than the
// panel, so that the packing loops, which write every panel at the same k,
// do not land in one L1 set.
static inline int64_t panel_floats(int64_t kc) { return kc * NR + 16; }


size_t qk_tiled_avx512_scratch_floats(void) {
    return (size_t)MC * AS + (size_t)NC * KC + (size_t)NC + (size_t)16 * KC + 256;
}

typedef struct {
    float *a;      // MC × AS: rows of X (or dY)
    float *b;      // NC × KC + NC: the dequantized W tile as NR-wide panels, panel_floats apart
    float *stage;  // 16 × KC (forward) or NC + NR (backward): decoded rows of W
    float *tmp;    // one block
} scratch_parts;

static scratch_parts split_scratch(float *s) {
    scratch_parts p;
    p.a = s;
    p.b = p.a + (size_t)MC * AS;
    p.stage = p.b + (size_t)NC * KC + (size_t)NC;
    p.tmp = p.stage + (size_t)16 * KC;
    return p;
}

// ----------------------------------------------------------------------------
// Decoding rows of W (bit-exact with the reference)
// ----------------------------------------------------------------------------

AVX512 static __m512 table_of(int32_t type) {
    float t[16];
    qk_nibble_values(t, type);
    return _mm512_loadu_ps(t);
}

// Flat elements [first, first + count) of W into y. Whole blocks decode here,
// 16 weights per lookup; a span that starts or ends inside a block goes
// through the AVX2 span decoder.
AVX512 static void decode_span(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                               float *restrict tmp) {
    const int64_t B = w->block_size, h = B / 2;
    if (first % B != 0 || count % B != 0) {
        qk_dequantize_span_avx2(y, w, first, count, tmp);
        return;
    }
    const int32_t type = w->type;
    const size_t bb = qk_block_bytes(type, w->block_size);
    const __m512 table = table_of(type);
    enum { STEPS = KC / 32 > NC / 32 ? KC / 32 : NC / 32 };
    float d[STEPS];
    const int64_t b0 = first / B, nb = count / B;
    for (int64_t s = 0; s < nb; s += STEPS) {
        const int64_t take = nb - s < STEPS ? nb - s : STEPS;
        qk_block_steps_avx2(d, w, b0 + s, take);
        for (int64_t i = 0; i < take; i++, y += B) {
            const uint8_t *c = w->codes + (size_t)(b0 + s + i) * bb;
            const __m512 step = _mm512_set1_ps(d[i]);
            if (type == QK_TYPE_INT8) {
                for (int64_t j = 0; j < B; j += 16) {
                    const __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(c + j)));
                    _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_cvtepi32_ps(v), step));
                }
                continue;
            }
            // vpermps reads only the low four bits of each index.
            for (int64_t j = 0; j < h; j += 16) {
                const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + j)));
                _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_permutexvar_ps(q, table), step));
                _mm512_storeu_ps(y + h + j,
                                 _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table), step));
            }
        }
    }
}

AVX512_INLINE void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // u[4g + e], lane L: rows 4g..4g+3, column 4L + e.
    for (int g = 0; g < 16; g += 4) {
        u[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
        u[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
        u[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
        u[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
    for (int e = 0; e < 4; e++) {
        const __m512 v = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x88), x = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xDD);
        const __m512 v2 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x88);
        const __m512 x2 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xDD);
        r[e] = _mm512_shuffle_f32x4(v, v2, 0x88);
        r[8 + e] = _mm512_shuffle_f32x4(v, v2, 0xDD);
        r[4 + e] = _mm512_shuffle_f32x4(x, x2, 0x88);
        r[12 + e] = _mm512_shuffle_f32x4(x, x2, 0xDD);
    }
}

// Forward tile: rows [o0, o0 + nc) × columns [k0, k0 + kc) of W, transposed
// into panels [⌈nc/NR⌉][kc][NR] (panel p holds W rows o0+NR·p.., zero padded).
// Sixteen rows at a time are decoded into `stage` and transposed 16 × 16.
AVX512 static void pack_w_forward(float *restrict bp, const qk_packed *w, int64_t o0, int64_t nc, int64_t k0,
                                  int64_t kc, float *restrict stage, float *restrict tmp) {
    const int64_t in = w->cols, halves = (nc + 15) / 16;
    for (int64_t hv = 0; hv < halves; hv++) {
        float *panel = bp + (hv / 2) * panel_floats(kc) + (hv % 2) * 16;
        for (int64_t r = 0; r < 16; r++) {
            const int64_t o = hv * 16 + r;
            if (o < nc) decode_span(stage + r * KC, w, (o0 + o) * in + k0, kc, tmp);
            else memset(stage + r * KC, 0, (size_t)kc * sizeof(float));
        }
        int64_t k = 0;
        for (; k + 16 <= kc; k += 16) {
            __m512 v[16];
            for (int q = 0; q < 16; q++) v[q] = _mm512_loadu_ps(stage + q * KC + k);
            transpose16(v);
            for (int q = 0; q < 16; q++) _mm512_store_ps(panel + (k + q) * NR, v[q]);
        }
        for (; k < kc; k++)
            for (int q = 0; q < 16; q++) panel[k * NR + q] = stage[q * KC + k];
    }
    // An odd number of 16-row halves leaves the last panel's upper half empty.
    if (halves % 2)
        for (int64_t k = 0; k < kc; k++) _mm512_store_ps(bp + (halves / 2) * panel_floats(kc) + k * NR + 16, _mm512_setzero_ps());
}

// Backward tile: rows [k0, k0 + kc) × columns [j0, j0 + nc) of W into panels
// [⌈nc/NR⌉][kc][NR] (panel p holds columns j0+NR·p.., zero padded).
AVX512 static void pack_w_backward(float *restrict bp, const qk_packed *w, int64_t k0, int64_t kc, int64_t j0,
                                   int64_t nc, float *restrict row, float *restrict tmp) {
    const int64_t in = w->cols, panels = (nc + NR - 1) / NR;
    memset(row + nc, 0, (size_t)(panels * NR - nc) * sizeof(float));
    for (int64_t k = 0; k < kc; k++) {
        decode_span(row, w, (k0 + k) * in + j0, nc, tmp);
        for (int64_t p = 0; p < panels; p++) {
            float *dst = bp + p * panel_floats(kc) + k * NR;
            _mm512_store_ps(dst, _mm512_loadu_ps(row + p * NR));
            _mm512_store_ps(dst + 16, _mm512_loadu_ps(row + p * NR + 16));
        }
    }
}

// ----------------------------------------------------------------------------
// Micro-kernel and tile loops
// ----------------------------------------------------------------------------

// Fully unrolled loops over the rows keep the accumulators in registers.
#define UNROLL _Pragma("GCC unroll 16")

// C[R × 32] (=|+=) A[R rows, lda apart] · B panel [kc][32]; the masks select
// the valid columns of each half. R is a constant: the loops over rows unroll
// and the accumulators live in registers.
AVX512_INLINE void micro(const float *restrict a, int64_t lda, const float *restrict b, int64_t kc,
                         float *restrict c, int64_t ldc, __mmask16 m0, __mmask16 m1, int first, const int R) {
    UNROLL for (int r = 0; r < R; r++) {
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + 16), _MM_HINT_T0);
    }
    __m512 c0[MR], c1[MR];
    UNROLL for (int r = 0; r < R; r++) c0[r] = c1[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++, b += NR) {
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 ar = _mm512_set1_ps(a[r * lda + k]);
            c0[r] = _mm512_fmadd_ps(ar, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(ar, b1, c1[r]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) {
        float *cr = c + r * ldc;
        if (!first) {
            c0[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), c0[r]);
            c1[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), c1[r]);
        }
        _mm512_mask_storeu_ps(cr, m0, c0[r]);
        _mm512_mask_storeu_ps(cr + 16, m1, c1[r]);
    }
}

#define MICRO(R)                                                                                      \
    AVX512 __attribute__((noinline)) static void micro_##R(const float *restrict a, int64_t lda,           \
                                                           const float *restrict b, int64_t kc,            \
                                                           float *restrict c, int64_t ldc, __mmask16 m0,   \
                                                           __mmask16 m1, int first) {                      \
        micro(a, lda, b, kc, c, ldc, m0, m1, first, R);                                               \
    }
MICRO(1) MICRO(2) MICRO(3) MICRO(4) MICRO(5) MICRO(6) MICRO(7) MICRO(8) MICRO(9) MICRO(10) MICRO(11) MICRO(12)
#undef MICRO

typedef void (*micro_fn)(const float *restrict, int64_t, const float *restrict, int64_t, float *restrict,
                         int64_t, __mmask16, __mmask16, int);
static const micro_fn micro_rows[MR + 1] = {0,       micro_1, micro_2, micro_3, micro_4,  micro_5, micro_6,
                                            micro_7, micro_8, micro_9, micro_10, micro_11, micro_12};

// Asks for the codes and scales of flat elements [first, first + count) of W
// to be brought into L2. A tile reads a short piece of each of many rows,
// which the hardware prefetchers do not foresee; asked for while the tile
// before it is multiplied, the reads overlap that work instead of stalling
// the decoder.
static void prefetch_span(const qk_packed *w, int64_t first, int64_t count) {
    const int64_t B = w->block_size, bb = (int64_t)qk_block_bytes(w->type, w->block_size);
    const int64_t scale_bytes = w->scale_kind == QK_SCALE_F32 ? 4 : w->scale_kind == QK_SCALE_F16 ? 2 : 1;
    const char *codes = (const char *)w->codes, *scales = (const char *)w->scales;
    const int64_t b0 = first / B, b1 = (first + count - 1) / B;
    for (int64_t byte = first * bb / B; byte < (first + count) * bb / B + 64; byte += 64)
        _mm_prefetch(codes + byte, _MM_HINT_T1);
    for (int64_t byte = b0 * scale_bytes; byte <= b1 * scale_bytes; byte += 64)
        _mm_prefetch(scales + byte, _MM_HINT_T1);
}

// The W tile `tiled` packs after the one at (k0, j0): the next tile of the
// slice, else the slice's first at the next k0. Its rows of W (`count` of
// them, none past the end of W) are prefetched a share at a time.
typedef struct {
    const qk_packed *w;
    int backward;
    int64_t k0, j0, kc, nc, count;
} next_tile;

static next_tile next_tile_after(const qk_packed *w, int backward, int64_t k0, int64_t j0, int64_t begin,
                                 int64_t end) {
    const int64_t K = backward ? w->rows : w->cols;
    if (j0 + NC >= end) {
        j0 = begin;
        k0 += KC;
    } else {
        j0 += NC;
    }
    next_tile t = {w, backward, k0, j0, 0, 0, 0};
    if (k0 >= K) return t;
    t.kc = K - k0 < KC ? K - k0 : KC;
    t.nc = end - j0 < NC ? end - j0 : NC;
    t.count = backward ? t.kc : t.nc;
    return t;
}

// Rows [r0, r1) of the next tile's rows of W.
static void prefetch_rows(const next_tile *t, int64_t r0, int64_t r1) {
    const int64_t in = t->w->cols;
    for (int64_t r = r0; r < r1; r++) {
        if (t->backward) prefetch_span(t->w, (t->k0 + r) * in + t->j0, t->nc);
        else prefetch_span(t->w, (t->j0 + r) * in + t->k0, t->kc);
    }
}

// C[m × nc] (=|+=) A rows (lda apart) · B panels, C with leading dimension
// ldc. Each group of MR rows of A sweeps every panel while it stays in L1, and
// asks for its share of the next tile of W.
static void tile_multiply(float *restrict c, int64_t ldc, const float *restrict ap, int64_t lda,
                          const float *restrict bp, int64_t m, int64_t nc, int64_t kc, int first,
                          const next_tile *next) {
    const int64_t groups = (m + MR - 1) / MR;
    for (int64_t i = 0; i < m; i += MR) {
        // A burst of prefetches would overflow the miss queues: one share per group.
        const int64_t g = i / MR;
        prefetch_rows(next, next->count * g / groups, next->count * (g + 1) / groups);
        const micro_fn f = micro_rows[m - i < MR ? m - i : MR];
        for (int64_t j = 0; j < nc; j += NR) {
            const int64_t cols = nc - j < NR ? nc - j : NR;
            const __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
            const __mmask16 m1 = cols >= NR ? 0xFFFF : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
            f(ap + i * lda, lda, bp + j / NR * panel_floats(kc), kc, c + i * ldc + j, ldc, m0, m1, first);
        }
    }
}

// Rows [0, m) × columns [0, kc) of a (leading dimension lda) into rows AS apart.
static void copy_a(float *restrict ap, const float *restrict a, int64_t lda, int64_t m, int64_t kc) {
    for (int64_t r = 0; r < m; r++) memcpy(ap + r * AS, a + r * lda, (size_t)kc * sizeof(float));
}

// Both directions: C[n, ldc] (=|+=) A[n, K] · (W tile), where the forward
// has A = X (K = in), C = Y and tiles of rows of W; the backward A = dY
// (K = out), C = dX and tiles of columns of W. `zero` means the first chunk
// of K overwrites C.
static void tiled(float *restrict c, const float *restrict a, int64_t n, const qk_packed *w, int64_t begin,
                  int64_t end, int zero, int backward, float *restrict scratch) {
    const int64_t K = backward ? w->rows : w->cols, ldc = backward ? w->cols : w->rows;
    const int64_t mc = qk_chunk_rows(n, MC);
    const scratch_parts s = split_scratch(scratch);
    // Reading X's rows in place instead of copying them (every thread copied
    // all of X) was 3-12 % faster at n = 1024 on Zen 4 (K = 512, 768, 1376,
    // 1536, 5632, 11008); rows 4 KiB apart (K = 1024, 2048, 3072, 4096), all
    // in one L1 set, were 8-25 % slower in place.
    const int copied = K % 1024 == 0;
    for (int64_t i0 = 0; i0 < n; i0 += mc) {
        const int64_t m = n - i0 < mc ? n - i0 : mc;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = K - k0 < KC ? K - k0 : KC;
            if (copied) copy_a(s.a, a + i0 * K + k0, K, m, kc);
            const float *rows = copied ? s.a : a + i0 * K + k0;
            for (int64_t j0 = begin; j0 < end; j0 += NC) {
                const int64_t nc = end - j0 < NC ? end - j0 : NC;
                if (backward) pack_w_backward(s.b, w, k0, kc, j0, nc, s.stage, s.tmp);
                else pack_w_forward(s.b, w, j0, nc, k0, kc, s.stage, s.tmp);
                const next_tile next = next_tile_after(w, backward, k0, j0, begin, end);
                tile_multiply(c + i0 * ldc + j0, ldc, rows, copied ? AS : K, s.b, m, nc, kc, zero && k0 == 0, &next);
            }
        }
    }
}

void qk_tiled_forward_avx512(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                             int64_t begin, int64_t end, float *restrict scratch) {
    tiled(y, x, n, w, begin, end, 1, 0, scratch);
}

void qk_tiled_backward_avx512(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                              int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch) {
    tiled(dx, dy, n, w, begin, end, !accumulate, 1, scratch);
}

#endif
