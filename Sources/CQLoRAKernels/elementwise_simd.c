// SIMD versions of the elementwise passes (elementwise_ref.c has the scalar
// reference, dispatch.c the choice). One body, written with clang's vector types,
// is compiled at 8 lanes for AVX2 + FMA and at 4 lanes for NEON. Every lane
// runs the same instructions, and a partial last vector is computed from a
// padded copy, so an element's value never depends on its position or on
// how a caller split the buffer. The formulas are the reference's; with FMA
// contraction the results may differ from it in the last bit or two.
#include "CQLoRAKernels.h"
#include "internal.h"

#define QK_ELEMENTWISE(SUFFIX, ATTR, W)                                                                     \
    typedef float vf_##SUFFIX __attribute__((ext_vector_type(W)));                                          \
    typedef int32_t vi_##SUFFIX __attribute__((ext_vector_type(W)));                                        \
                                                                                                            \
    ATTR static inline vf_##SUFFIX load_##SUFFIX(const float *p, int64_t lanes, float fill) {               \
        vf_##SUFFIX v;                                                                                      \
        if (lanes == W) {                                                                                   \
            __builtin_memcpy(&v, p, sizeof v);                                                                        \
        } else {                                                                                            \
            for (int i = 0; i < W; i++) v[i] = i < lanes ? p[i] : fill;                                     \
        }                                                                                                   \
        return v;                                                                                           \
    }                                                                                                       \
                                                                                                            \
    ATTR static inline void store_##SUFFIX(float *p, vf_##SUFFIX v, int64_t lanes) {                        \
        if (lanes == W) {                                                                                   \
            __builtin_memcpy(p, &v, sizeof v);                                                                        \
        } else {                                                                                            \
            for (int i = 0; i < lanes; i++) p[i] = v[i];                                                    \
        }                                                                                                   \
    }                                                                                                       \
                                                                                                            \
    /* qk_exp_ref_one lane by lane, the branches as selects. */                                             \
    ATTR static inline vf_##SUFFIX exp_##SUFFIX(vf_##SUFFIX x) {                                            \
        const float low = -87.33654f, high = 88.37626f;                                                     \
        const vf_##SUFFIX magic = 12582912.0f;                                                              \
        vf_##SUFFIX c = __builtin_elementwise_min(x, (vf_##SUFFIX)high);                                    \
        c = __builtin_elementwise_max(c, (vf_##SUFFIX)low);                                                 \
        const vf_##SUFFIX shifted = c * 1.44269504088896341f + magic;                                       \
        const vf_##SUFFIX n = shifted - magic;                                                              \
        const vf_##SUFFIX r = c - n * 0.693359375f + n * 2.12194440e-4f;                                    \
        vf_##SUFFIX p = 1.9875691500e-4f;                                                                   \
        p = p * r + 1.3981999507e-3f;                                                                       \
        p = p * r + 8.3334519073e-3f;                                                                       \
        p = p * r + 4.1665795894e-2f;                                                                       \
        p = p * r + 1.6666665459e-1f;                                                                       \
        p = p * r + 5.0000001201e-1f;                                                                       \
        const vf_##SUFFIX er = p * (r * r) + r + 1.0f;                                                      \
        const vi_##SUFFIX two = ((vi_##SUFFIX)shifted - (vi_##SUFFIX)magic + 127) << 23;                    \
        const vi_##SUFFIX e = (vi_##SUFFIX)(er * (vf_##SUFFIX)two);                                         \
        /* Below the cut (−∞ included) 0; NaN (x != x) passes through. */                                   \
        const vi_##SUFFIX below = x < low, nan = x != x;                                                    \
        return (vf_##SUFFIX)((e & ~below & ~nan) | ((vi_##SUFFIX)x & nan));                                 \
    }                                                                                                       \
                                                                                                            \
    ATTR void qk_swiglu_forward_##SUFFIX(float *restrict a, const float *restrict g, const float *restrict u, \
                                         int64_t n) {                                                       \
        for (int64_t i = 0; i < n; i += W) {                                                                \
            const int64_t lanes = n - i < W ? n - i : W;                                                    \
            const vf_##SUFFIX x = load_##SUFFIX(g + i, lanes, 0);                                           \
            store_##SUFFIX(a + i, x / (1.0f + exp_##SUFFIX(-x)) * load_##SUFFIX(u + i, lanes, 0), lanes);   \
        }                                                                                                   \
    }                                                                                                       \
                                                                                                            \
    ATTR void qk_swiglu_backward_##SUFFIX(float *dg, float *restrict du, const float *da,                   \
                                          const float *restrict g, const float *restrict u, int64_t n) {    \
        for (int64_t i = 0; i < n; i += W) {                                                                \
            const int64_t lanes = n - i < W ? n - i : W;                                                    \
            const vf_##SUFFIX x = load_##SUFFIX(g + i, lanes, 0), d = load_##SUFFIX(da + i, lanes, 0);      \
            const vf_##SUFFIX up = load_##SUFFIX(u + i, lanes, 0);                                          \
            const vf_##SUFFIX sigmoid = 1.0f / (1.0f + exp_##SUFFIX(-x));                                   \
            store_##SUFFIX(du + i, d * x * sigmoid, lanes);                                                 \
            store_##SUFFIX(dg + i, d * up * sigmoid * (1.0f + x * (1.0f - sigmoid)), lanes);                \
        }                                                                                                   \
    }                                                                                                       \
                                                                                                            \
    ATTR double qk_exp_shifted_##SUFFIX(float *y, const float *x, int64_t n, float shift, float scale) {    \
        double total = 0;                                                                                   \
        for (int64_t start = 0; start < n; start += QK_EXP_RUN) {                                           \
            const int64_t end = n - start < QK_EXP_RUN ? n : start + QK_EXP_RUN;                            \
            vf_##SUFFIX run = 0;                                                                            \
            for (int64_t i = start; i < end; i += W) {                                                      \
                const int64_t lanes = end - i < W ? end - i : W;                                            \
                /* Missing lanes load −∞, whose exp is 0. */                                                \
                const vf_##SUFFIX e = exp_##SUFFIX(load_##SUFFIX(x + i, lanes, -__builtin_inff()) - shift); \
                run += e;                                                                                   \
                if (y) store_##SUFFIX(y + i, e * scale, lanes);                                             \
            }                                                                                               \
            float sum = 0;                                                                                  \
            for (int l = 0; l < W; l++) sum += run[l];                                                      \
            total += sum;                                                                                   \
        }                                                                                                   \
        return total;                                                                                       \
    }                                                                                                       \
                                                                                                            \
    /* x[i..i+W) · keep where the element's mask bit is set, else 0 (i a multiple of W, which      \
       divides 64). The product is rounded on its own: the and keeps it out of any FMA. */           \
    ATTR static inline vf_##SUFFIX kept_##SUFFIX(const float *x, const uint64_t *bits, int64_t i,          \
                                                  int64_t lanes, float keep) {                            \
        vi_##SUFFIX lane;                                                                                   \
        for (int l = 0; l < W; l++) lane[l] = l;                                                            \
        const vi_##SUFFIX word = (vi_##SUFFIX)(int32_t)((bits[i >> 6] >> (i & 63)) & ((1u << W) - 1));      \
        const vf_##SUFFIX v = load_##SUFFIX(x + i, lanes, 0) * keep;                                        \
        return (vf_##SUFFIX)((vi_##SUFFIX)v & (((word >> lane) & 1) != 0));                                 \
    }                                                                                                       \
                                                                                                            \
    ATTR void qk_dropout_apply_##SUFFIX(float *restrict out, const float *restrict x,                       \
                                        const uint64_t *restrict bits, int64_t n, float keep) {             \
        for (int64_t i = 0; i < n; i += W) {                                                                \
            const int64_t lanes = n - i < W ? n - i : W;                                                    \
            store_##SUFFIX(out + i, kept_##SUFFIX(x, bits, i, lanes, keep), lanes);                         \
        }                                                                                                   \
    }                                                                                                       \
                                                                                                            \
    ATTR void qk_dropout_accumulate_##SUFFIX(float *restrict dx, const float *restrict g,                   \
                                             const uint64_t *restrict bits, int64_t n, float keep) {        \
        for (int64_t i = 0; i < n; i += W) {                                                                \
            const int64_t lanes = n - i < W ? n - i : W;                                                    \
            store_##SUFFIX(dx + i, load_##SUFFIX(dx + i, lanes, 0) + kept_##SUFFIX(g, bits, i, lanes, keep), lanes); \
        }                                                                                                   \
    }

#if defined(__x86_64__)
QK_ELEMENTWISE(avx2, __attribute__((target("avx2,fma"))), 8)
#elif defined(__aarch64__)
QK_ELEMENTWISE(neon, , 4)
#endif
