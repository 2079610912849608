// CQLoRAKernels: block quantization and dequantize-on-the-fly matrix products
// for QLoRAKit. Plain C11, no allocation, no global state except the ISA choice.
//
// Conventions (the same as formats/packed-checkpoint.md):
// - A weight W is [rows = out, cols = in], row-major (nn.Linear layout).
//   Forward:  Y[n, out] = X[n, in] · Wᵀ.   Backward: dX[n, in] = dY[n, out] · W.
// - Blocks run over W flattened row-major, as in bitsandbytes: block b holds
//   flat elements [b·B, (b+1)·B). When `in` is a multiple of B (every real Llama
//   projection) each row is a whole number of blocks; otherwise blocks straddle
//   rows. The last block of a tensor is zero-padded to B elements.
// - Each block has one scale, its absmax m (max |x| in fp32). Element value is
//   x̂ = value(code) · m, with value() per type:
//     INT8: code / 127      (int8_t code = round_half_even(x · inv), inv = (1/m) · 127)
//     INT4: code / 7        (code = round_half_even(x · inv) in [-7, 7], inv = (1/m) · 7, nibble = code + 8)
//     NF4, FP4: the bitsandbytes code tables below: the nearest code to s = x · (1/m),
//       a value exactly between two codes takes the lower one (bucketize over the fp32
//       midpoints); of FP4's two zeros, nibble 0 is taken from s <= 0, nibble 8 from s > 0,
//       and nibble 8 decodes to -0.0 (as bitsandbytes' CPU dequantizer does).
//   Each product above is rounded to fp32 on its own, as torch computes it for
//   bitsandbytes (`c / t` is `reciprocal(t) * c` there), so the INT8 codes equal
//   bitsandbytes' row-wise int8 when a block is a row. The reciprocal is taken of
//   max(m, 1e-38) (bitsandbytes' clamp), so a zero block gets the code of zero; a
//   partial last NF4/FP4 block scales by x / max(m, 1e-38) instead (bitsandbytes
//   divides there, and stores max(m, 1e-38) as that block's scale where we keep m),
//   and the integer types cap inv at FLT_MAX. Inputs must be finite.
//   Dequantization computes exactly `(float)code * (m / 127.0f)` (INT8),
//   `(float)code * (m / 7.0f)` (INT4) and `table[nibble] * m` (NF4/FP4);
//   every path (scalar, AVX2, NEON) reproduces these bit for bit.
// - 4-bit codes within a block: byte j (0 <= j < B/2) holds element j in its
//   low nibble and element j + B/2 in its high nibble (ggml's split halves:
//   SIMD unpacks a block with one mask and one shift).
// - Scales are stored one of three ways (qk_scale_kind):
//     F32: float absmax[n_blocks];  F16: IEEE half absmax[n_blocks];
//     DQ8: QLoRA double quantization as bitsandbytes 0.50 does it on CPU:
//          offset = mean(absmax) in fp32 (summed in torch's CPU order), then
//          (absmax - offset) in groups of 256 blocks, each group scaled by its own
//          absmax g (float group_scale[ceil(n_blocks / 256)]) and coded with the signed
//          dynamic 8-bit map: absmax' = dynamic8[q[b]] · group_scale[b / 256] + offset
//          (two fp32 roundings). The code of s = (absmax - offset) · (1/g) is the
//          nearest code not to s but to s snapped onto bitsandbytes' grid of 65536
//          points over [-1, 1]; a group with g = 0 stores code 0.
//   Codes are always computed against the exact fp32 absmax; F16 and DQ8 only
//   change how the scale is stored (bitsandbytes does the same for DQ8).

#ifndef CQLORAKERNELS_H
#define CQLORAKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Data types of packed blocks. The numbers are stored in files: never reuse one.
typedef enum {
    QK_TYPE_INT8 = 1,
    QK_TYPE_INT4 = 2,
    QK_TYPE_NF4 = 3,
    QK_TYPE_FP4 = 4,
} qk_type;

/// How the per-block absmax is stored. Stored in files: never reuse a number.
typedef enum {
    QK_SCALE_F32 = 0,
    QK_SCALE_F16 = 1,
    QK_SCALE_DQ8 = 2,
} qk_scale_kind;

/// Blocks of scales that share one fp32 group scale under double quantization.
#define QK_DQ_GROUP 256

/// Instruction sets a kernel can run on.
typedef enum {
    QK_ISA_SCALAR = 0,
    QK_ISA_AVX2 = 1,   // AVX2 + FMA + F16C
    QK_ISA_NEON = 2,
} qk_isa;

extern const float qk_nf4_table[16];
extern const float qk_fp4_table[16];
extern const float qk_dynamic8_table[256];

/// A packed matrix in memory (typically views into a memory-mapped file).
typedef struct {
    int32_t type;                  // qk_type
    int32_t block_size;            // 32, 64, 128 or 256
    int32_t scale_kind;            // qk_scale_kind
    int32_t reserved;              // zero
    int64_t rows;                  // out
    int64_t cols;                  // in
    const uint8_t *codes;          // n_blocks · qk_block_bytes(type, block_size) bytes
    const void *scales;            // F32: float[n_blocks]; F16: uint16_t[n_blocks]; DQ8: uint8_t[n_blocks]
    const float *group_scales;     // DQ8 only: float[ceil(n_blocks / QK_DQ_GROUP)]
    float offset;                  // DQ8 only: mean of the fp32 absmax values
} qk_packed;

// ---------------------------------------------------------------------------
// Sizes and run-time dispatch
// ---------------------------------------------------------------------------

/// Bytes of codes in one block: B for INT8, B/2 for the 4-bit types. 0 if invalid.
size_t qk_block_bytes(int32_t type, int32_t block_size);

/// The best ISA this CPU supports (cpuid via __builtin_cpu_supports).
qk_isa qk_isa_detect(void);
/// The ISA the dispatching entry points use; starts as qk_isa_detect().
qk_isa qk_isa_active(void);
/// Force an ISA (tests, benchmarks). A request the CPU cannot run falls back to
/// scalar. Returns the ISA now active. Not thread-safe against running kernels.
qk_isa qk_isa_set(qk_isa isa);

// ---------------------------------------------------------------------------
// Block codec
// ---------------------------------------------------------------------------

/// Quantize n floats (n need not be a multiple of B; the tail block is padded
/// with zeros) into ceil(n/B) blocks: codes, and each block's exact absmax.
/// Bit-exact with bitsandbytes quantize_4bit for NF4/FP4 (see the rules above).
/// `_ref` is the scalar reference; the unsuffixed function dispatches on
/// qk_isa_active() and returns the same bits.
void qk_quantize(uint8_t *restrict codes, float *restrict absmax,
                 const float *restrict x, int64_t n, int32_t type, int32_t block_size);
void qk_quantize_ref(uint8_t *restrict codes, float *restrict absmax,
                     const float *restrict x, int64_t n, int32_t type, int32_t block_size);

/// Dequantize n_blocks whole blocks given fp32 scales: y[n_blocks · B].
void qk_dequantize(float *restrict y, const uint8_t *restrict codes, const float *restrict absmax,
                   int64_t n_blocks, int32_t type, int32_t block_size);
void qk_dequantize_ref(float *restrict y, const uint8_t *restrict codes, const float *restrict absmax,
                       int64_t n_blocks, int32_t type, int32_t block_size);

/// Double quantization of n_blocks fp32 scales (bitsandbytes compress_statistics):
/// q[n_blocks], group_scales[ceil(n_blocks/256)], *offset. Scalar only (it touches
/// one float per block). The offset equals torch's single-threaded mean on an AVX2
/// build; a multi-threaded torch (n_blocks >= 32768) may sum in another order.
void qk_double_quantize(uint8_t *restrict q, float *restrict group_scales, float *restrict offset,
                        const float *restrict absmax, int64_t n_blocks);

/// Decode the stored scales of blocks [first, first + count) of `w` to fp32.
void qk_scales_decode(float *restrict absmax, const qk_packed *w, int64_t first, int64_t count);
/// The same for DQ8 scales through the AVX-512 VBMI decoder the few-rows
/// products use (for tests): returns 0 and writes nothing where it does not
/// run (other scale kinds, no VBMI, or AVX-512 switched off).
int qk_scales_decode_vbmi(float *restrict absmax, const qk_packed *w, int64_t first, int64_t count);

/// fp16 <-> fp32 (round to nearest even) and bf16 -> fp32, for checkpoints and F16 scales.
/// NaNs convert as x86 F16C does: quieted, payload kept (truncated to fp16's 10 bits).
void qk_f16_to_f32(float *restrict y, const uint16_t *restrict x, int64_t n);
void qk_f32_to_f16(uint16_t *restrict y, const float *restrict x, int64_t n);
void qk_bf16_to_f32(float *restrict y, const uint16_t *restrict x, int64_t n);
void qk_f16_to_f32_ref(float *restrict y, const uint16_t *restrict x, int64_t n);
void qk_f32_to_f16_ref(uint16_t *restrict y, const float *restrict x, int64_t n);
void qk_bf16_to_f32_ref(float *restrict y, const uint16_t *restrict x, int64_t n);

/// Index of the first NaN or ±Inf in x[0..n), or -1 if all are finite.
int64_t qk_find_nonfinite(const float *x, int64_t n);
int64_t qk_find_nonfinite_ref(const float *x, int64_t n);

// ---------------------------------------------------------------------------
// Elementwise passes of training (elementwise_*.c)
// ---------------------------------------------------------------------------
// e^x below is Cephes' expf (within 2 ulp of libm's), exactly 0 for x below
// -87.34 (so a masked score of -inf gives 0), finite up to 88.38. The `_ref`
// functions are the scalar reference; the others dispatch and may differ from
// it in the last bit or two (FMA contraction, summation order).

/// SwiGLU: a[i] = silu(g[i]) · u[i], silu(g) = g / (1 + e^-g) as torch computes it.
void qk_swiglu_forward(float *restrict a, const float *restrict g, const float *restrict u, int64_t n);
void qk_swiglu_forward_ref(float *restrict a, const float *restrict g, const float *restrict u, int64_t n);

/// Its gradients from da: du = da · silu(g), dg = da · u · σ(g)·(1 + g·(1 − σ(g))).
/// dg may be the same buffer as da.
void qk_swiglu_backward(float *dg, float *restrict du, const float *da, const float *restrict g,
                        const float *restrict u, int64_t n);
void qk_swiglu_backward_ref(float *dg, float *restrict du, const float *da, const float *restrict g,
                            const float *restrict u, int64_t n);

/// y[i] = e^(x[i] - shift) · scale (y may be x; NULL stores nothing), and returns
/// Σ e^(x[i] - shift): float sums over runs of 64 elements, the runs added in double.
double qk_exp_shifted(float *y, const float *x, int64_t n, float shift, float scale);
double qk_exp_shifted_ref(float *y, const float *x, int64_t n, float shift, float scale);

/// Dropout with a kept-element mask, one bit per element, element i at bit i % 64
/// of bits[i / 64]: out[i] = x[i] · keep where the bit is set, else 0. Exactly
/// the reference's values on every path (one multiply, no contraction).
void qk_dropout_apply(float *restrict out, const float *restrict x, const uint64_t *restrict bits, int64_t n,
                      float keep);
void qk_dropout_apply_ref(float *restrict out, const float *restrict x, const uint64_t *restrict bits, int64_t n,
                          float keep);

/// Its backward into an accumulated gradient: dx[i] += (bit ? g[i] · keep : 0),
/// the product rounded before the sum, on every path.
void qk_dropout_accumulate(float *restrict dx, const float *restrict g, const uint64_t *restrict bits, int64_t n,
                           float keep);
void qk_dropout_accumulate_ref(float *restrict dx, const float *restrict g, const uint64_t *restrict bits, int64_t n,
                               float keep);

// ---------------------------------------------------------------------------
// LoRA's low-rank products (lowrank.c)
// ---------------------------------------------------------------------------

/// The gradients on LoRA's B side in one pass over dy [n, o] (row stride ldy):
/// db [o, r] += scale · dyᵀ·u and du [n, r] (row stride lddu) = scale · dy·b,
/// with u [n, r] (row stride ldu) the forward's A·x and b [o, r]. The
/// dispatching version may differ from the reference in summation order.
void qk_lora_b_gradients(float *db, float *du, int64_t lddu, const float *dy, int64_t ldy, const float *u,
                         int64_t ldu, const float *b, int64_t n, int64_t o, int64_t r, float scale);
void qk_lora_b_gradients_ref(float *db, float *du, int64_t lddu, const float *dy, int64_t ldy, const float *u,
                             int64_t ldu, const float *b, int64_t n, int64_t o, int64_t r, float scale);

/// The ranks that qk_lora_b_gradients covers in whole vectors are the multiples
/// of this (8 with AVX2, 4 with NEON); 1 when it only has scalar code. Other
/// ranks are computed right but slower than two BLAS products.
int32_t qk_lora_b_lanes(void);

// ---------------------------------------------------------------------------
// Checksum (checksum.c): XXH64 as specified by xxHash, used by packed checkpoints
// ---------------------------------------------------------------------------

/// XXH64 of len bytes (xxHash's 64-bit hash; seed 0 in packed checkpoints).
uint64_t qk_xxh64(const void *data, size_t len, uint64_t seed);

/// The same hash over data given in pieces (a writer streaming a large tensor).
/// Treat the fields as opaque.
typedef struct {
    uint64_t v[4];
    uint64_t seed;
    uint64_t total_len;
    uint8_t buffer[32];
    uint32_t buffered;
    uint32_t reserved;
} qk_xxh64_state;

void qk_xxh64_reset(qk_xxh64_state *state, uint64_t seed);
void qk_xxh64_update(qk_xxh64_state *state, const void *data, size_t len);
/// The hash of everything given so far; the state stays usable.
uint64_t qk_xxh64_digest(const qk_xxh64_state *state);

// ---------------------------------------------------------------------------
// Products with a packed weight (dequantize on the fly, fp32 accumulation)
// ---------------------------------------------------------------------------
// Forward:  Y[n, rows] = X[n, cols] · Wᵀ   (X, Y row-major and contiguous)
// Backward: dX[n, cols] = dY[n, rows] · W  (the input gradient; W is frozen)
//
// Each call computes one slice so that callers split the work across threads:
// the forward writes columns [begin, end) of Y (rows of W), the backward writes
// columns [begin, end) of dX (columns of W). Every element is summed in an
// order fixed by n, W and the instruction set in use, so any split into
// slices that start at multiples of qk_matmul_grain() gives the same result
// bit for bit (other splits are correct too, only slower and summed in
// another order).
// Kernels never allocate: `scratch` is caller-owned, 64-byte aligned, at least
// qk_matmul_scratch_floats() floats, and must not be shared by concurrent calls.
// W is never materialized beyond a tile of at most 256 × 256 floats.

typedef enum {
    QK_DIRECTION_FORWARD = 0,
    QK_DIRECTION_BACKWARD = 1,
} qk_direction;

/// Floats of scratch one call with these arguments needs (any ISA, any slice).
size_t qk_matmul_scratch_floats(const qk_packed *w, int64_t n, int32_t direction);
/// Slice boundaries that keep whole blocks and SIMD panels in one slice.
int64_t qk_matmul_grain(const qk_packed *w, int64_t n, int32_t direction);
/// Slices per thread worth cutting a call into: 2 for the few-rows forward
/// paths, so that a thread that loses its core holds up the call by half a
/// share (more slices restart more streams from memory, which cost more than
/// they balanced); 1 where each slice pays a fixed cost (the tiled GEMM reads
/// all of X, or copies it, once per slice).
int64_t qk_matmul_slices_per_thread(const qk_packed *w, int64_t n, int32_t direction);

/// Y[:, begin:end] = X · W[begin:end, :]ᵀ.
void qk_matmul_forward(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                       int64_t begin, int64_t end, float *restrict scratch);
void qk_matmul_forward_ref(float *restrict y, const float *restrict x, int64_t n, const qk_packed *w,
                           int64_t begin, int64_t end, float *restrict scratch);

/// dX[:, begin:end] = dY · W[:, begin:end], or += when `accumulate` is nonzero.
void qk_matmul_backward(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                        int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch);
void qk_matmul_backward_ref(float *restrict dx, const float *restrict dy, int64_t n, const qk_packed *w,
                            int64_t begin, int64_t end, int32_t accumulate, float *restrict scratch);

/// Whether the AVX2 entry points may take their AVX-512 sub-paths (decode
/// in registers for few rows, the tiled GEMM for many) on CPUs that have
/// AVX-512F; on by default. Tests turn it off to check the AVX2 code on such
/// CPUs. Returns the previous setting.
int qk_matmul_allow_avx512(int allow);

/// Dequantize flat elements [first, first + count) of W (any alignment) with
/// the reference values; `tmp` holds 256 floats.
void qk_dequantize_span(float *restrict y, const qk_packed *w, int64_t first, int64_t count,
                        float *restrict tmp);

// ---------------------------------------------------------------------------
// Machine ceiling (benchmarks only)
// ---------------------------------------------------------------------------

/// Runs `iterations` rounds of independent fp32 multiply-adds on the widest
/// vectors the products use on this CPU (the calling thread only) and returns
/// the flops done; `sink` receives a sum of the results so the work cannot be
/// optimized away. Flops ÷ seconds, summed over threads, is the fp32 peak.
double qk_fma_probe(int64_t iterations, float *sink);

#ifdef __cplusplus
}
#endif

#endif
