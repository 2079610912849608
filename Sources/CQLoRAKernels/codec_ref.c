// Scalar reference of the block codec: quantize, dequantize, double quantization,
// scale decoding and dtype conversions. Every fast path is tested bit-identical
// against these functions, and `qlora quantize` output is defined by them.
// Non-goal: speed. Keep this file obviously correct.
#include "CQLoRAKernels.h"
#include "internal.h"

#include <math.h>
#include <string.h>

// Bit-exactness with bitsandbytes needs every product rounded on its own: no a*b+c
// fused into one FMA (clang fuses within an expression on FMA targets by default).
#pragma STDC FP_CONTRACT OFF

size_t qk_block_bytes(int32_t type, int32_t block_size) {
    if (block_size != 32 && block_size != 64 && block_size != 128 && block_size != 256) return 0;
    switch (type) {
    case QK_TYPE_INT8: return (size_t)block_size;
    case QK_TYPE_INT4:
    case QK_TYPE_NF4:
    case QK_TYPE_FP4: return (size_t)block_size / 2;
    default: return 0;
    }
}

const float *qk_table_for(int32_t type) {
    return type == QK_TYPE_NF4 ? qk_nf4_table : qk_fp4_table;
}

void qk_nibble_values(float *values, int32_t type) {
    for (int v = 0; v < 16; v++) values[v] = type == QK_TYPE_INT4 ? (float)(v - 8) : qk_table_for(type)[v];
}

// Sorted view of a code table: what bitsandbytes' bucketize over midpoints sees.
// `order[i]` is the code whose value is the i-th smallest (stable, so FP4's two
// zeros keep nibble 0 before nibble 8), `mid[i]` the fp32 midpoint of i and i+1.
void qk_sorted_table(const float *table, int count, int *order, float *mid) {
    for (int i = 0; i < count; i++) order[i] = i;
    for (int i = 1; i < count; i++) {
        int k = order[i], j = i - 1;
        while (j >= 0 && table[order[j]] > table[k]) { order[j + 1] = order[j]; j--; }
        order[j + 1] = k;
    }
    for (int i = 0; i + 1 < count; i++) mid[i] = (table[order[i]] + table[order[i + 1]]) / 2.0f;
}

// Number of midpoints strictly below s: torch.bucketize(s, mid, right=False),
// so a value exactly on a midpoint takes the lower code (and NaN takes code 0).
int qk_bucketize(float s, const float *mid, int count) {
    int lo = 0, hi = count;
    while (lo < hi) {
        int m = (lo + hi) / 2;
        if (mid[m] < s) lo = m + 1; else hi = m;
    }
    return lo;
}

// ---------------------------------------------------------------------------
// 4/8-bit blocks
// ---------------------------------------------------------------------------

static float block_absmax(const float *x, int64_t len) {
    float m = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a;
    }
    return m;
}

// Integer code of a scaled value, rounded half to even. fminf first so a NaN
// lands on the top code, as the SIMD min/max order does.
static int code_int(float scaled, float top) {
    return (int)fmaxf(fminf(nearbyintf(scaled), top), -top);
}

// The sorted NF4/FP4 table a quantizer call searches (unused for INT4/INT8).
typedef struct {
    int order[16];
    float mid[15];
} sorted_table;

static sorted_table sorted_table_for(int32_t type) {
    sorted_table t = {{0}, {0}};
    if (type == QK_TYPE_NF4 || type == QK_TYPE_FP4) qk_sorted_table(qk_table_for(type), 16, t.order, t.mid);
    return t;
}

// Codes of one block of B elements whose scaled values are x[i] * inv, or
// x[i] / div when div != 0 (how bitsandbytes scales a partial last 4-bit block).
static void quantize_block(uint8_t *restrict c, const float *restrict x, float inv, float div,
                           int32_t type, int64_t B, const sorted_table *t) {
    if (type == QK_TYPE_INT8) {
        for (int64_t i = 0; i < B; i++) c[i] = (uint8_t)(int8_t)code_int(x[i] * inv, 127.0f);
        return;
    }
    uint8_t nib[256];
    for (int64_t i = 0; i < B; i++) {
        if (type == QK_TYPE_INT4) {
            nib[i] = (uint8_t)(code_int(x[i] * inv, 7.0f) + 8);
        } else {
            const float s = div != 0.0f ? x[i] / div : x[i] * inv;
            nib[i] = (uint8_t)t->order[qk_bucketize(s, t->mid, 15)];
        }
    }
    const int64_t h = B / 2;
    for (int64_t j = 0; j < h; j++) c[j] = (uint8_t)(nib[j] | (nib[j + h] << 4));
}

void qk_quantize_tail_block(uint8_t *restrict codes, float *restrict absmax,
                            const float *restrict x, int64_t len, int32_t type, int32_t block_size) {
    float buf[256];
    memcpy(buf, x, (size_t)len * sizeof(float));
    for (int64_t i = len; i < block_size; i++) buf[i] = 0.0f;
    const float m = block_absmax(buf, block_size);
    *absmax = m;
    const float div = m > QK_ABSMAX_FLOOR ? m : QK_ABSMAX_FLOOR;
    const int divides = type == QK_TYPE_NF4 || type == QK_TYPE_FP4;
    const sorted_table t = sorted_table_for(type);
    quantize_block(codes, buf, qk_block_inv(type, m), divides ? div : 0.0f, type, block_size, &t);
}

void qk_quantize_ref(uint8_t *restrict codes, float *restrict absmax,
                     const float *restrict x, int64_t n, int32_t type, int32_t block_size) {
    const int64_t B = block_size, full = n / B;
    const size_t bb = qk_block_bytes(type, block_size);
    const sorted_table t = sorted_table_for(type);
    for (int64_t b = 0; b < full; b++) {
        const float m = block_absmax(x + b * B, B);
        absmax[b] = m;
        quantize_block(codes + (size_t)b * bb, x + b * B, qk_block_inv(type, m), 0.0f, type, B, &t);
    }
    if (n > full * B)
        qk_quantize_tail_block(codes + (size_t)full * bb, absmax + full, x + full * B, n - full * B, type, block_size);
}

void qk_dequantize_ref(float *restrict y, const uint8_t *restrict codes, const float *restrict absmax,
                       int64_t n_blocks, int32_t type, int32_t block_size) {
    const int64_t B = block_size, h = B / 2;
    const size_t bb = qk_block_bytes(type, block_size);
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *c = codes + (size_t)b * bb;
        float *o = y + b * B;
        const float m = absmax[b];
        switch (type) {
        case QK_TYPE_INT8: {
            const float d = m / 127.0f;
            for (int64_t i = 0; i < B; i++) o[i] = (float)(int8_t)c[i] * d;
            break;
        }
        case QK_TYPE_INT4: {
            const float d = m / 7.0f;
            for (int64_t j = 0; j < h; j++) {
                o[j] = (float)((int)(c[j] & 15) - 8) * d;
                o[j + h] = (float)((int)(c[j] >> 4) - 8) * d;
            }
            break;
        }
        default: {
            const float *t = qk_table_for(type);
            for (int64_t j = 0; j < h; j++) {
                o[j] = t[c[j] & 15] * m;
                o[j + h] = t[c[j] >> 4] * m;
            }
        }
        }
    }
}

// ---------------------------------------------------------------------------
// Double quantization (bitsandbytes compress_statistics)
// ---------------------------------------------------------------------------

static int ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int r = 0;
    for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1) r++;
    return r;
}

// torch's CPU `row_sum` over `count` items of `w` float lanes each (item i at
// x + i*w): four interleaved accumulators, each a four-level cascade.
static void torch_row_sum(float out[8], const float *x, int64_t count, int w) {
    float acc[4][4][8] = {{{0}}};
    const int64_t rows = count / 4;
    int power = ceil_log2(rows) / 4;
    if (power < 4) power = 4;
    const int64_t step = (int64_t)1 << power, mask = step - 1;
    int64_t i = 0;
    while (i + step <= rows) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < w; l++) acc[0][k][l] += x[(i * 4 + k) * w + l];
        for (int level = 1; level < 4; level++) {
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < w; l++) {
                    acc[level][k][l] += acc[level - 1][k][l];
                    acc[level - 1][k][l] = 0.0f;
                }
            if ((i & (mask << (level * power))) != 0) break;
        }
    }
    for (; i < rows; i++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += x[(i * 4 + k) * w + l];
    for (int level = 1; level < 4; level++)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += acc[level][k][l];
    for (int64_t t = rows * 4; t < count; t++)
        for (int l = 0; l < w; l++) acc[0][0][l] += x[t * w + l];
    for (int k = 1; k < 4; k++)
        for (int l = 0; l < w; l++) acc[0][0][l] += acc[0][k][l];
    for (int l = 0; l < w; l++) out[l] = acc[0][0][l];
}

// torch.mean of a contiguous float32 vector on one CPU thread of an AVX2 build:
// the cascade sum above over 8-float vectors, then the scalar tail, the 8 lanes,
// and a float division. bitsandbytes takes its double-quant offset from it, so
// the offset bits match only in this summation order.
static float torch_mean(const float *x, int64_t n) {
    float lanes[8], sum = 0.0f;
    if (n >= 8) {
        const int64_t nv = n / 8;
        torch_row_sum(lanes, x, nv, 8);
        for (int64_t k = nv * 8; k < n; k++) sum += x[k];
        for (int l = 0; l < 8; l++) sum += lanes[l];
    } else {
        torch_row_sum(lanes, x, n, 1);
        sum += lanes[0];
    }
    return sum / (float)n;
}

// bitsandbytes' CPU 8-bit quantizer (cquantize_blockwise_cpu_fp32) does not
// search the code table per value: it snaps the scaled value onto a grid of
// 65536 points over [-1, 1] and returns the nearest code of that grid point.
// Fused or separate multiply-add give the same grid index for every value.
static int dynamic8_code(float scaled, const float *mid) {
    if (scaled < -1.0f) scaled = -1.0f;
    if (scaled > 1.0f) scaled = 1.0f;
    const uint16_t g = (uint16_t)((scaled + 1.0f) * 0.5f * 65535.0f + 0.5f);
    const float grid = -1.0f + (2.0f * (float)g) / 65535.0f;
    return qk_bucketize(grid, mid, 255);
}

void qk_double_quantize(uint8_t *restrict q, float *restrict group_scales, float *restrict offset,
                        const float *restrict absmax, int64_t n_blocks) {
    const float off = n_blocks > 0 ? torch_mean(absmax, n_blocks) : 0.0f;
    *offset = off;

    float mid[255];
    for (int i = 0; i < 255; i++) mid[i] = 0.5f * (qk_dynamic8_table[i] + qk_dynamic8_table[i + 1]);
    for (int64_t g = 0; g * QK_DQ_GROUP < n_blocks; g++) {
        const int64_t first = g * QK_DQ_GROUP;
        const int64_t len = n_blocks - first < QK_DQ_GROUP ? n_blocks - first : QK_DQ_GROUP;
        float centered[QK_DQ_GROUP];
        float gmax = 0.0f;
        for (int64_t i = 0; i < len; i++) {
            centered[i] = absmax[first + i] - off;
            const float a = fabsf(centered[i]);
            if (a > gmax) gmax = a;
        }
        group_scales[g] = gmax;
        // A group of equal scales stores code 0 (bitsandbytes does); it decodes to
        // dynamic8[0] * 0 + offset = offset exactly.
        const float inv = gmax > 0.0f ? 1.0f / gmax : 0.0f;
        for (int64_t i = 0; i < len; i++)
            q[first + i] = gmax > 0.0f ? (uint8_t)dynamic8_code(centered[i] * inv, mid) : 0;
    }
}

void qk_scales_decode(float *restrict absmax, const qk_packed *w, int64_t first, int64_t count) {
    switch (w->scale_kind) {
    case QK_SCALE_F32:
        memcpy(absmax, (const float *)w->scales + first, (size_t)count * sizeof(float));
        break;
    case QK_SCALE_F16:
        qk_f16_to_f32(absmax, (const uint16_t *)w->scales + first, count);
        break;
    default: {
        const uint8_t *q = (const uint8_t *)w->scales;
        for (int64_t i = 0; i < count; i++) {
            const int64_t b = first + i;
            absmax[i] = qk_dynamic8_table[q[b]] * w->group_scales[b / QK_DQ_GROUP] + w->offset;
        }
    }
    }
}

// ---------------------------------------------------------------------------
// Element conversions (NaNs as x86 F16C converts them: quieted, payload kept)
// ---------------------------------------------------------------------------

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man ? 0x400000u | (man << 13) : 0);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {  // subnormal half: normalize
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff);  // NaN
    if (ax >= 0x477ff000u) return sign | 0x7c00;  // Inf, or rounds past 65504
    if (ax < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        if (ax < 0x33000000u) return sign;  // at most half the smallest subnormal
        const uint32_t e = ax >> 23, man = (ax & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e;  // man >> shift is the half's subnormal mantissa
        uint32_t r = man >> shift;
        const uint32_t rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1))) r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = ((ax >> 13) - (112u << 10));
    const uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return sign | (uint16_t)r;
}

void qk_f16_to_f32_ref(float *restrict y, const uint16_t *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = half_to_float(x[i]);
}

void qk_f32_to_f16_ref(uint16_t *restrict y, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = float_to_half(x[i]);
}

void qk_bf16_to_f32_ref(float *restrict y, const uint16_t *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const uint32_t bits = (uint32_t)x[i] << 16;
        memcpy(&y[i], &bits, 4);
    }
}

int64_t qk_find_nonfinite_ref(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return i;
    }
    return -1;
}
