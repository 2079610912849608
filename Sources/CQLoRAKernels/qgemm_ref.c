// Scalar reference of the products with a packed weight: dequantize a row with
// the codec reference, then multiply in fp32 in the plainest loop order. Every
// fast path is tested against these; they also serve CPUs without SIMD paths.
// Non-goal: speed.
#include "CQLoRAKernels.h"
#include "internal.h"

#include <string.h>

void qk_dequantize_span_ref(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                            float *restrict tmp) {
    const int64_t B = w->block_size;
    const size_t bb = qk_block_bytes(w->type, w->block_size);
    while (count > 0) {
        const int64_t b = first / B, skip = first - b * B;
        const int64_t take = count < B - skip ? count : B - skip;
        float absmax;
        qk_scales_decode(&absmax, w, b, 1);
        qk_dequantize_ref(tmp, w->codes + (size_t)b * bb, &absmax, 1, w->type, w->block_size);
        memcpy(y, tmp + skip, (size_t)take * sizeof(float));
        y += take;
        first += take;
        count -= take;
    }
}

// Scratch: one row of W (cols floats) and one block.
void qk_matmul_forward_ref(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                           int64_t begin, int64_t end, float *restrict scratch) {
    const int64_t in = w->cols, out = w->rows;
    float *row = scratch, *tmp = scratch + in;
    for (int64_t o = begin; o < end; o++) {
        qk_dequantize_span_ref(row, w, o * in, in, tmp);
        for (int64_t i = 0; i < n; i++) {
            const float *xi = x + i * in;
            float s = 0.0f;
            for (int64_t k = 0; k < in; k++) s += row[k] * xi[k];
            y[i * out + o] = s;
        }
    }
}

// Scratch: one row slice of W (end - begin floats) and one block.
void qk_matmul_backward_ref(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                            int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch) {
    const int64_t in = w->cols, out = w->rows, len = end - begin;
    float *seg = scratch, *tmp = scratch + len;
    if (!accumulate)
        for (int64_t i = 0; i < n; i++) memset(dx + i * in + begin, 0, (size_t)len * sizeof(float));
    for (int64_t o = 0; o < out; o++) {
        qk_dequantize_span_ref(seg, w, o * in + begin, len, tmp);
        for (int64_t i = 0; i < n; i++) {
            const float g = dy[i * out + o];
            float *d = dx + i * in + begin;
            for (int64_t j = 0; j < len; j++) d[j] += g * seg[j];
        }
    }
}
