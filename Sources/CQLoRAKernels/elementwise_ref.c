// Scalar reference of the elementwise passes (the SwiGLU activation, the
// exponentials of softmax and cross-entropy, LoRA's dropout); dispatch.c picks
// the SIMD paths.
#include "CQLoRAKernels.h"
#include "internal.h"

// Cephes' expf, the formula elementwise_simd.c computes lane by lane.
static float qk_exp_ref_one(float x) {
    const float low = -87.33654f, high = 88.37626f, magic = 12582912.0f;  // 1.5 · 2²³
    if (!(x >= low)) return x < low ? 0.0f : x;  // below the cut (−∞ included) → 0; NaN stays NaN
    const float c = x > high ? high : x;
    // Adding 1.5·2²³ rounds c·log2(e) to the nearest integer n in the low mantissa bits.
    const float shifted = c * 1.44269504088896341f + magic;
    const float n = shifted - magic;
    // ln2 in two parts, so that n·ln2 is exact enough for the reduction.
    const float r = c - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = p * (r * r) + r + 1.0f;
    union { float f; int32_t i; } s = {shifted}, m = {magic}, two;
    two.i = (s.i - m.i + 127) << 23;
    return er * two.f;
}

void qk_swiglu_forward_ref(float *restrict a, const float *restrict g, const float *restrict u, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = g[i] / (1.0f + qk_exp_ref_one(-g[i])) * u[i];
}

void qk_swiglu_backward_ref(float *dg, float *restrict du, const float *da, const float *restrict g,
                            const float *restrict u, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float x = g[i], d = da[i], up = u[i];
        const float sigmoid = 1.0f / (1.0f + qk_exp_ref_one(-x));
        du[i] = d * x * sigmoid;
        dg[i] = d * up * sigmoid * (1.0f + x * (1.0f - sigmoid));
    }
}

double qk_exp_shifted_ref(float *y, const float *x, int64_t n, float shift, float scale) {
    double total = 0;
    for (int64_t start = 0; start < n; start += QK_EXP_RUN) {
        const int64_t end = n - start < QK_EXP_RUN ? n : start + QK_EXP_RUN;
        float run = 0;
        for (int64_t i = start; i < end; i++) {
            const float e = qk_exp_ref_one(x[i] - shift);
            run += e;
            if (y) y[i] = e * scale;
        }
        total += run;
    }
    return total;
}

static inline int kept(const uint64_t *bits, int64_t i) { return (int)((bits[i >> 6] >> (i & 63)) & 1); }

void qk_dropout_apply_ref(float *restrict out, const float *restrict x, const uint64_t *restrict bits, int64_t n,
                          float keep) {
    for (int64_t i = 0; i < n; i++) out[i] = kept(bits, i) ? x[i] * keep : 0.0f;
}

void qk_dropout_accumulate_ref(float *restrict dx, const float *restrict g, const uint64_t *restrict bits, int64_t n,
                               float keep) {
    for (int64_t i = 0; i < n; i++) {
        const float d = kept(bits, i) ? g[i] * keep : 0.0f;
        dx[i] = dx[i] + d;
    }
}
