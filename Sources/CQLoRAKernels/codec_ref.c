// Scalar reference of the block codec: quantize, dequantize, double quantization,
// scale decoding and dtype conversions. Every fast path is tested bit-identical
// against these functions, and `qlora quantize` output is defined by them.
// Non-goal: speed. Keep this file obviously correct.
#include "CQLoRAKernels.h"
#include "internal.h"

#include <math.h>
#include <string.h>

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
// so a value exactly on a midpoint takes the lower code.
int qk_bucketize(float s, const float *mid, int count) {
    int lo = 0, hi = count;
    while (lo < hi) {
        int m = (lo + hi) / 2;
        if (mid[m] < s) lo = m + 1; else hi = m;
    }
    return lo;
}

static float block_absmax(const float *x, int64_t len) {
    float m = 0.0f;
    for (int64_t i = 0; i < len; i++) {
        float a = fabsf(x[i]);
        if (a > m) m = a;
    }
    return m;
}

static uint8_t code_4bit(float x, float inv, int32_t type, const int *order, const float *mid) {
    if (type == QK_TYPE_INT4) {
        float c = nearbyintf(x * inv);
        if (c > 7.0f) c = 7.0f;
        if (c < -7.0f) c = -7.0f;
        return (uint8_t)((int)c + 8);
    }
    float s = x * inv;
    if (s > 1.0f) s = 1.0f;
    if (s < -1.0f) s = -1.0f;
    return (uint8_t)order[qk_bucketize(s, mid, 15)];
}

void qk_quantize_ref(uint8_t *restrict codes, float *restrict absmax,
                     const float *restrict x, int64_t n, int32_t type, int32_t block_size) {
    const int64_t B = block_size;
    const int64_t n_blocks = (n + B - 1) / B;
    const size_t bb = qk_block_bytes(type, block_size);
    int order[16] = {0};
    float mid[15] = {0};
    if (type == QK_TYPE_NF4 || type == QK_TYPE_FP4) qk_sorted_table(qk_table_for(type), 16, order, mid);

    float buf[256];
    for (int64_t b = 0; b < n_blocks; b++) {
        int64_t len = n - b * B < B ? n - b * B : B;
        memcpy(buf, x + b * B, (size_t)len * sizeof(float));
        for (int64_t i = len; i < B; i++) buf[i] = 0.0f;
        const float m = block_absmax(buf, B);
        absmax[b] = m;
        uint8_t *c = codes + (size_t)b * bb;
        if (type == QK_TYPE_INT8) {
            const float inv = m > 0.0f ? 127.0f / m : 0.0f;
            for (int64_t i = 0; i < B; i++) {
                float q = nearbyintf(buf[i] * inv);
                if (q > 127.0f) q = 127.0f;
                if (q < -127.0f) q = -127.0f;
                c[i] = (uint8_t)(int8_t)q;
            }
            continue;
        }
        // A zero block has no direction: every element takes the code of 0.
        float inv;
        if (type == QK_TYPE_INT4) inv = m > 0.0f ? 7.0f / m : 0.0f;
        else inv = m > 0.0f ? 1.0f / m : 0.0f;
        const int64_t h = B / 2;
        for (int64_t j = 0; j < h; j++) {
            uint8_t lo = code_4bit(buf[j], inv, type, order, mid);
            uint8_t hi = code_4bit(buf[j + h], inv, type, order, mid);
            c[j] = (uint8_t)(lo | (hi << 4));
        }
    }
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

void qk_double_quantize(uint8_t *restrict q, float *restrict group_scales, float *restrict offset,
                        const float *restrict absmax, int64_t n_blocks) {
    double sum = 0.0;
    for (int64_t b = 0; b < n_blocks; b++) sum += absmax[b];
    const float off = n_blocks > 0 ? (float)(sum / (double)n_blocks) : 0.0f;
    *offset = off;

    int order[256];
    float mid[255];
    qk_sorted_table(qk_dynamic8_table, 256, order, mid);
    for (int64_t g = 0; g * QK_DQ_GROUP < n_blocks; g++) {
        const int64_t first = g * QK_DQ_GROUP;
        const int64_t len = n_blocks - first < QK_DQ_GROUP ? n_blocks - first : QK_DQ_GROUP;
        float gmax = 0.0f;
        for (int64_t i = 0; i < len; i++) {
            float a = fabsf(absmax[first + i] - off);
            if (a > gmax) gmax = a;
        }
        group_scales[g] = gmax;
        const float inv = gmax > 0.0f ? 1.0f / gmax : 0.0f;
        for (int64_t i = 0; i < len; i++) {
            float s = (absmax[first + i] - off) * inv;
            if (s > 1.0f) s = 1.0f;
            if (s < -1.0f) s = -1.0f;
            q[first + i] = (uint8_t)order[qk_bucketize(s, mid, 255)];
        }
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

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13);
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
    if (ax >= 0x7f800000u) return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);  // Inf / NaN
    if (ax >= 0x477ff000u) return sign | 0x7c00;  // rounds past 65504: overflow to Inf
    if (ax < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        if (ax < 0x33000000u) return sign;  // under half the smallest subnormal
        const uint32_t e = ax >> 23, man = (ax & 0x7fffff) | 0x800000;
        const uint32_t shift = 126 - e;  // 14 + (113 - e) ... man >> shift gives the half subnormal
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

void qk_bf16_to_f32(float *restrict y, const uint16_t *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const uint32_t bits = (uint32_t)x[i] << 16;
        memcpy(&y[i], &bits, 4);
    }
}

int64_t qk_find_nonfinite(const float *x, int64_t n) {
    const uint32_t *u = (const uint32_t *)(const void *)x;
    for (int64_t i = 0; i < n; i++)
        if ((u[i] & 0x7f800000u) == 0x7f800000u) return i;
    return -1;
}
