// AVX2 + FMA + F16C paths of the block codec. Each function returns exactly the
// bits of its reference in codec_ref.c (the tests compare them on random data):
// the same fp32 operations in the same order, eight lanes at a time, and the
// reference itself for the partial last block and the tails of the conversions.
// Non-goal: double quantization, which touches one float per block.
#if defined(__x86_64__)
#include "CQLoRAKernels.h"
#include "internal.h"

#include <immintrin.h>

#pragma STDC FP_CONTRACT OFF

#define QK_AVX2 __attribute__((target("avx2,fma,f16c")))

// ---------------------------------------------------------------------------
// Quantize
// ---------------------------------------------------------------------------

// max |x| over a block (B a multiple of 8). max_ps returns its second operand
// when the first is NaN, so NaNs never win, as in the reference.
QK_AVX2 static float absmax_avx2(const float *x, int64_t B) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int64_t i = 0; i < B; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

// round_half_even(s) clamped to [-top, top]; min first so NaN gives top (fminf's rule).
QK_AVX2 static __m256i int_code8(__m256 s, float top) {
    __m256 q = _mm256_round_ps(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_max_ps(_mm256_min_ps(q, _mm256_set1_ps(top)), _mm256_set1_ps(-top));
    return _mm256_cvttps_epi32(q);
}

// Sorted-table index of s: how many midpoints lie strictly below it (0 for NaN).
QK_AVX2 static __m256i bucket8(__m256 s, const __m256 mid[15]) {
    __m256i c = _mm256_setzero_si256();
    for (int i = 0; i < 15; i++)
        c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(mid[i], s, _CMP_LT_OQ)));
    return c;
}

// Code of each of 8 elements as int32: the INT8 code, or the 4-bit nibble (for
// NF4/FP4 still the sorted index, mapped to the nibble after packing).
QK_AVX2 static __m256i code8(const float *x, __m256 inv, int32_t type, const __m256 mid[15]) {
    const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(x), inv);
    switch (type) {
    case QK_TYPE_INT8: return int_code8(s, 127.0f);
    case QK_TYPE_INT4: return _mm256_add_epi32(int_code8(s, 7.0f), _mm256_set1_epi32(8));
    default: return bucket8(s, mid);
    }
}

// Four vectors of int32 codes in [-127, 127] to 32 bytes, in element order.
QK_AVX2 static __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

QK_AVX2 void qk_quantize_avx2(uint8_t *restrict codes, float *restrict absmax,
                              const float *restrict x, int64_t n, int32_t type, int32_t block_size) {
    const int64_t B = block_size, h = B / 2, full = n / B;
    const size_t bb = qk_block_bytes(type, block_size);
    const int table = type == QK_TYPE_NF4 || type == QK_TYPE_FP4;
    __m256 mid[15];
    __m256i order = _mm256_setzero_si256();
    if (table) {
        int ord[16];
        float m[15];
        qk_sorted_table(qk_table_for(type), 16, ord, m);
        for (int i = 0; i < 15; i++) mid[i] = _mm256_set1_ps(m[i]);
        uint8_t o[32];
        for (int i = 0; i < 32; i++) o[i] = (uint8_t)ord[i & 15];
        order = _mm256_loadu_si256((const __m256i *)o);
    }
    uint8_t nib[256];
    for (int64_t b = 0; b < full; b++) {
        const float *xb = x + b * B;
        const float m = absmax_avx2(xb, B);
        absmax[b] = m;
        const __m256 inv = _mm256_set1_ps(qk_block_inv(type, m));
        uint8_t *c = codes + (size_t)b * bb;
        uint8_t *dst = type == QK_TYPE_INT8 ? c : nib;
        for (int64_t i = 0; i < B; i += 32) {
            __m256i v = pack32(code8(xb + i, inv, type, mid), code8(xb + i + 8, inv, type, mid),
                               code8(xb + i + 16, inv, type, mid), code8(xb + i + 24, inv, type, mid));
            if (table) v = _mm256_shuffle_epi8(order, v);
            _mm256_storeu_si256((__m256i *)(dst + i), v);
        }
        if (type == QK_TYPE_INT8) continue;
        // Split halves: byte j = element j | element j + B/2 << 4 (nibbles < 16,
        // so the 16-bit shift cannot carry into the neighbouring byte).
        for (int64_t j = 0; j < h; j += 16) {
            const __m128i lo = _mm_loadu_si128((const __m128i *)(nib + j));
            const __m128i hi = _mm_loadu_si128((const __m128i *)(nib + h + j));
            _mm_storeu_si128((__m128i *)(c + j), _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
        }
    }
    if (n > full * B)
        qk_quantize_tail_block(codes + (size_t)full * bb, absmax + full, x + full * B, n - full * B, type, block_size);
}

// ---------------------------------------------------------------------------
// Dequantize
// ---------------------------------------------------------------------------

// value(nibble) for 8 nibbles: two 8-entry permutes, chosen by nibble bit 3.
QK_AVX2 static __m256 table8(__m256i nib, __m256 lo, __m256 hi) {
    const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(nib, 28));
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, nib), _mm256_permutevar8x32_ps(hi, nib), bit3);
}

QK_AVX2 void qk_dequantize_avx2(float *restrict y, const uint8_t *restrict codes, const float *restrict absmax,
                                int64_t n_blocks, int32_t type, int32_t block_size) {
    const int64_t B = block_size, h = B / 2;
    const size_t bb = qk_block_bytes(type, block_size);
    const __m256i fifteen = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
    const float *t = qk_table_for(type);
    const __m256 tlo = _mm256_loadu_ps(t), thi = _mm256_loadu_ps(t + 8);
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *c = codes + (size_t)b * bb;
        float *o = y + b * B;
        const float m = absmax[b];
        if (type == QK_TYPE_INT8) {
            const __m256 d = _mm256_set1_ps(m / 127.0f);
            for (int64_t i = 0; i < B; i += 8) {
                const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(c + i)));
                _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
            }
            continue;
        }
        const __m256 d = _mm256_set1_ps(type == QK_TYPE_INT4 ? m / 7.0f : m);
        for (int64_t j = 0; j < h; j += 8) {
            const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + j)));
            const __m256i lo = _mm256_and_si256(bytes, fifteen), hi = _mm256_srli_epi32(bytes, 4);
            __m256 vlo, vhi;
            if (type == QK_TYPE_INT4) {
                vlo = _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, eight));
                vhi = _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, eight));
            } else {
                vlo = table8(lo, tlo, thi);
                vhi = table8(hi, tlo, thi);
            }
            _mm256_storeu_ps(o + j, _mm256_mul_ps(vlo, d));
            _mm256_storeu_ps(o + h + j, _mm256_mul_ps(vhi, d));
        }
    }
}

// ---------------------------------------------------------------------------
// Conversions and the non-finite scan
// ---------------------------------------------------------------------------

QK_AVX2 void qk_f16_to_f32_avx2(float *restrict y, const uint16_t *restrict x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    qk_f16_to_f32_ref(y + i, x + i, n - i);
}

QK_AVX2 void qk_f32_to_f16_avx2(uint16_t *restrict y, const float *restrict x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    qk_f32_to_f16_ref(y + i, x + i, n - i);
}

QK_AVX2 void qk_bf16_to_f32_avx2(float *restrict y, const uint16_t *restrict x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_si256((__m256i *)(y + i), _mm256_slli_epi32(w, 16));
    }
    qk_bf16_to_f32_ref(y + i, x + i, n - i);
}

QK_AVX2 int64_t qk_find_nonfinite_avx2(const float *x, int64_t n) {
    const __m256i exp = _mm256_set1_epi32(0x7f800000);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        unsigned any = 0;
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8 * k)), exp);
            any |= (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, exp))) << (8 * k);
        }
        if (any) return i + __builtin_ctz(any);
    }
    const int64_t r = qk_find_nonfinite_ref(x + i, n - i);
    return r < 0 ? -1 : i + r;
}

#endif
