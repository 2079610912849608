// Scalar reference of the elementwise passes (the SwiGLU activation and the
// exponentials of softmax and cross-entropy), and their run-time dispatch.
#include "CQLoRAKernels.h"
#include "internal.h"

float qk_exp_ref_one(float x) {
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

// The SIMD paths exist in x86-64 (AVX2 + FMA) and arm64 (NEON) builds only.

void qk_swiglu_forward(float *restrict a, const float *restrict g, const float *restrict u, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_swiglu_forward_avx2(a, g, u, n); return; }
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) { qk_swiglu_forward_neon(a, g, u, n); return; }
#endif
    qk_swiglu_forward_ref(a, g, u, n);
}

void qk_swiglu_backward(float *dg, float *restrict du, const float *da, const float *restrict g,
                        const float *restrict u, int64_t n) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) { qk_swiglu_backward_avx2(dg, du, da, g, u, n); return; }
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) { qk_swiglu_backward_neon(dg, du, da, g, u, n); return; }
#endif
    qk_swiglu_backward_ref(dg, du, da, g, u, n);
}

double qk_exp_shifted(float *y, const float *x, int64_t n, float shift, float scale) {
#if defined(__x86_64__)
    if (qk_isa_active() == QK_ISA_AVX2) return qk_exp_shifted_avx2(y, x, n, shift, scale);
#elif defined(__aarch64__)
    if (qk_isa_active() == QK_ISA_NEON) return qk_exp_shifted_neon(y, x, n, shift, scale);
#endif
    return qk_exp_shifted_ref(y, x, n, shift, scale);
}
