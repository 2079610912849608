// Double-quantized (DQ8) block scales decoded 64 at a time with AVX-512 VBMI
// byte lookups. The few-rows products decode one scale per block, and a gather
// of the 256-entry code table costs about 1.3 cycles per scale on Zen 4: a
// sixth of a 4-bit GEMV's time for 64-weight blocks. Here each byte of the fp32
// code values has its own 256-entry plane, looked up for 64 codes at once with
// two 128-entry vpermi2b and a blend on the code's top bit (about 0.4 cycles
// per scale in long runs; masks and two group scales only where a run of 64
// ends early or crosses a group, which cost a third more). Unpacking
// interleaves the four planes back into floats within 128-bit lanes, so the
// codes are first permuted to leave the floats in block order. The two
// roundings are the reference's: dynamic8[q] · group scale, then + offset.
#include "CQLoRAKernels.h"
#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#define VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))

// planes[p][q] is byte p (little-endian) of qk_dynamic8_table[q].
static uint8_t planes[4][256] __attribute__((aligned(64)));
static int cpu_has_vbmi;

__attribute__((constructor)) static void fill_planes(void) {
    for (int q = 0; q < 256; q++) {
        uint32_t bits;
        memcpy(&bits, &qk_dynamic8_table[q], sizeof bits);
        for (int p = 0; p < 4; p++) planes[p][q] = (uint8_t)(bits >> (8 * p));
    }
    __builtin_cpu_init();
    cpu_has_vbmi = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
}

int qk_vbmi_allowed(void) { return cpu_has_vbmi && qk_avx512_allowed(); }

// dynamic8[q] for the codes of blocks [b, b + n) of w, n <= 64, as the fp32
// bits of blocks b + 16 k .. b + 16 k + 15 in value[k].
VBMI static inline __attribute__((always_inline)) void lookup64(__m512i value[4], const qk_packed *w, int64_t b, int64_t n) {
    // After the two unpack levels, lane L (of four 128-bit lanes) of result k
    // holds bytes 16L + 4k .. 16L + 4k + 3 of the looked-up vectors; that has
    // to be blocks 16k + 4L .. 16k + 4L + 3.
    static const uint8_t order[64] = {
        0,  1,  2,  3,  16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51,
        4,  5,  6,  7,  20, 21, 22, 23, 36, 37, 38, 39, 52, 53, 54, 55,
        8,  9,  10, 11, 24, 25, 26, 27, 40, 41, 42, 43, 56, 57, 58, 59,
        12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63,
    };
    const __mmask64 valid = n >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << n) - 1;
    const __m512i codes = _mm512_maskz_loadu_epi8(valid, (const uint8_t *)w->scales + b);
    const __m512i q = _mm512_permutexvar_epi8(_mm512_loadu_si512(order), codes);
    const __mmask64 upper = _mm512_movepi8_mask(q);
    __m512i byte[4];
    for (int p = 0; p < 4; p++) {
        const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(planes[p]), q, _mm512_load_si512(planes[p] + 64));
        const __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(planes[p] + 128), q, _mm512_load_si512(planes[p] + 192));
        byte[p] = _mm512_mask_blend_epi8(upper, lo, hi);
    }
    const __m512i b01lo = _mm512_unpacklo_epi8(byte[0], byte[1]), b01hi = _mm512_unpackhi_epi8(byte[0], byte[1]);
    const __m512i b23lo = _mm512_unpacklo_epi8(byte[2], byte[3]), b23hi = _mm512_unpackhi_epi8(byte[2], byte[3]);
    value[0] = _mm512_unpacklo_epi16(b01lo, b23lo);
    value[1] = _mm512_unpackhi_epi16(b01lo, b23lo);
    value[2] = _mm512_unpacklo_epi16(b01hi, b23hi);
    value[3] = _mm512_unpackhi_epi16(b01hi, b23hi);
}

// Blocks [b, b + n) of w, n <= 64, into d[0, n).
VBMI static inline __attribute__((always_inline)) void decode64(float *restrict d, const qk_packed *w, int64_t b, int64_t n) {
    __m512i value[4];
    lookup64(value, w, b, n);
    const int64_t g0 = b / QK_DQ_GROUP, g1 = (b + n - 1) / QK_DQ_GROUP;
    const __m512 offset = _mm512_set1_ps(w->offset), s0 = _mm512_set1_ps(w->group_scales[g0]);
    if (n == 64 && g0 == g1) {
        // The common case, without masks: one group, every lane stored.
        for (int k = 0; k < 4; k++)
            _mm512_storeu_ps(d + 16 * k, _mm512_add_ps(_mm512_mul_ps(_mm512_castsi512_ps(value[k]), s0), offset));
        return;
    }
    // The blocks lie in at most two groups; blocks from `boundary` on are in the second.
    const int64_t boundary = g1 * QK_DQ_GROUP - b;
    const __m512 s1 = _mm512_set1_ps(w->group_scales[g1]);
    for (int k = 0; k < 4 && 16 * k < n; k++) {
        const int64_t split = boundary - 16 * k, left = n - 16 * k;
        const __mmask16 second = split <= 0 ? 0xFFFF : split >= 16 ? 0 : (__mmask16)(0xFFFFu << split);
        const __m512 scaled = _mm512_mul_ps(_mm512_castsi512_ps(value[k]), _mm512_mask_blend_ps(second, s0, s1));
        _mm512_mask_storeu_ps(d + 16 * k, left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1), _mm512_add_ps(scaled, offset));
    }
}

VBMI void qk_dq8_absmax_vbmi(float *restrict absmax, const qk_packed *w, int64_t first, int64_t count) {
    int64_t i = 0;
    for (; i + 64 <= count; i += 64) decode64(absmax + i, w, first + i, 64);  // n known: no masks
    if (i < count) decode64(absmax + i, w, first + i, count - i);
}

int qk_scales_decode_vbmi(float *restrict absmax, const qk_packed *w, int64_t first, int64_t count) {
    if (w->scale_kind != QK_SCALE_DQ8 || !qk_vbmi_allowed()) return 0;
    qk_dq8_absmax_vbmi(absmax, w, first, count);
    return 1;
}

#else

int qk_scales_decode_vbmi(float *restrict absmax, const qk_packed *w, int64_t first, int64_t count) {
    (void)absmax, (void)w, (void)first, (void)count;
    return 0;
}

#endif
