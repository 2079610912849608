import COpenBLAS
import CQLoRAKernels
import Foundation
import QLoRACompute

/// Causal grouped-query attention over projected, rotated q, k and v:
/// query head h reads kv head h / (H/KV) (transformers' repeat_kv), scores are
/// q·kᵀ·hd^-½ with keys after the query, marked as padding, of another
/// sequence packed into the same row, or (Mistral's sliding window) `window`
/// or more tokens back masked out, the softmax runs in fp32, and the heads'
/// outputs are concatenated in head order.
///
/// Queries go in blocks of `queryBlock` rows, each against only the keys it
/// can see (causality and the window bound them), so the work is about half
/// of the full T×T and the scratch is [queryBlock, T] per core. Every product
/// is one OpenBLAS call on strided views of the [n, heads·hd] buffers, so
/// nothing is transposed into head-major order, except that a kv head's keys
/// (and in backward its values) are transposed once to [hd, T]: the products
/// with kᵀ and vᵀ then take OpenBLAS's plain orientation, measured 16–20 %
/// faster than the transposed one at these sizes. (batch, head) pairs run
/// concurrently.
///
/// Cache for backward: q, k, v (as given to forward) and the log-sum-exp of
/// each score row, lse [B, H, T]. Backward recomputes the probabilities from
/// them (one extra q·kᵀ product) instead of keeping [B, H, T, T] per layer.
public struct GroupedQueryAttention: Sendable {
    public let heads: Int
    public let kvHeads: Int
    public let headDimension: Int
    /// Query i sees keys j with i − window < j ≤ i; nil = all j ≤ i.
    public let window: Int?

    /// Query rows per block: large enough for efficient products, small
    /// enough that the causal skip saves most of the upper triangle. 16, 24
    /// and 32 measured alike, 19 % faster than 64 (T = 256, hd = 64, Zen 4).
    static let queryBlock = 32

    public init(heads: Int, kvHeads: Int, headDimension: Int, window: Int? = nil) {
        precondition(heads % kvHeads == 0, "[GroupedQueryAttention] \(heads) heads are not a multiple of \(kvHeads) kv heads")
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDimension = headDimension
        self.window = window
    }

    var queryWidth: Int { heads * headDimension }
    var kvWidth: Int { kvHeads * headDimension }
    var scale: Float { 1 / Float(headDimension).squareRoot() }

    /// Floats of scratch that forward and backward need for `batch` sequences of `length` tokens.
    public func scratchCount(batch: Int, length: Int) -> Int {
        Parallel.chunkCount(for: batch * heads) * scratchPerChunk(length: length)
    }

    private func scratchPerChunk(length t: Int) -> Int { 2 * min(t, Self.queryBlock) * t + 2 * headDimension * t }

    /// A chunk's scratch: P and dP [block, T], kᵀ and vᵀ [hd, T].
    private func chunkScratch(_ scratch: UnsafeMutablePointer<Float>, chunk: Int, length t: Int)
        -> (p: UnsafeMutablePointer<Float>, dp: UnsafeMutablePointer<Float>,
            kt: UnsafeMutablePointer<Float>, vt: UnsafeMutablePointer<Float>) {
        let p = scratch + chunk * scratchPerChunk(length: t), block = min(t, Self.queryBlock) * t
        return (p, p + block, p + 2 * block, p + 2 * block + headDimension * t)
    }

    /// xᵀ [hd, T] of one kv head's rows x [T, hd] (rows `kvWidth` apart).
    private func transpose(_ x: UnsafePointer<Float>, length t: Int, into xt: UnsafeMutablePointer<Float>) {
        cblas_somatcopy(CblasRowMajor, CblasTrans, Int32(t), Int32(headDimension), 1, x, Int32(kvWidth), xt, Int32(t))
    }

    /// The keys [start, end) that queries [q0, q1) can see: none before the
    /// window of q0 or before the start of q0's sequence (`sequences` is the
    /// row's ids; sequences are contiguous and in order).
    private func keys(forQueries q0: Int, _ q1: Int, sequences: UnsafePointer<Int32>?) -> Range<Int> {
        var start = window.map { max(0, q0 - $0 + 1) } ?? 0
        if let sequences {
            var first = q0
            while first > start && sequences[first - 1] == sequences[q0] { first -= 1 }
            start = first
        }
        return start..<q1
    }

    /// - Parameters:
    ///   - q: [B·T, H·hd] rotated queries
    ///   - k: [B·T, KV·hd] rotated keys
    ///   - v: [B·T, KV·hd]
    ///   - mask: [B, T], nonzero = real token, 0 = padding; nil when nothing is padded
    ///   - sequenceIDs: [B, T], the packed sequence of each token (see `TokenBatch.sequenceIDs`);
    ///     a query sees only keys of its own sequence. nil = one sequence per row.
    ///   - out: [B·T, H·hd] output, heads concatenated
    ///   - lse: [B, H, T] output, cached for backward
    ///   - scratch: `scratchCount(batch:length:)` floats
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        mask: UnsafePointer<UInt8>?, sequenceIDs: UnsafePointer<Int32>? = nil, batch: Int, length t: Int,
                        into out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        scratch: UnsafeMutablePointer<Float>) {
        let hd = headDimension, qw = queryWidth, kw = kvWidth, group = heads / kvHeads
        Parallel.forEachChunk(batch * heads) { chunk, items in
            let (p, _, kt, _) = chunkScratch(scratch, chunk: chunk, length: t) // P [block, keys]
            var transposed: Int?  // the (sequence, kv head) whose kᵀ is in kt: the heads of a group come in a row
            for item in items {
                let b = item / heads, h = item % heads, g = h / group
                let qh = q + b * t * qw + h * hd, kg = k + b * t * kw + g * hd, vg = v + b * t * kw + g * hd
                let rowLSE = lse + (b * heads + h) * t, rowMask = mask.map { $0 + b * t }
                let rowSequences = sequenceIDs.map { $0 + b * t }
                if transposed != b * kvHeads + g {
                    transpose(kg, length: t, into: kt)
                    transposed = b * kvHeads + g
                }
                for q0 in stride(from: 0, to: t, by: Self.queryBlock) {
                    let q1 = min(t, q0 + Self.queryBlock), keys = keys(forQueries: q0, q1, sequences: rowSequences)
                    scores(qh, kt, queries: q0..<q1, keys: keys, length: t, into: p)
                    for i in q0..<q1 {
                        rowLSE[i] = softmaxRow(p + (i - q0) * keys.count, query: i, keys: keys, mask: rowMask,
                                               sequences: rowSequences)
                    }
                    // out_h[q0..<q1] [rows, hd] = P [rows, keys] · v_g[keys] [keys, hd]
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(q1 - q0), Int32(hd), Int32(keys.count),
                                1, p, Int32(keys.count), vg + keys.lowerBound * kw, Int32(kw),
                                0, out + b * t * qw + q0 * qw + h * hd, Int32(qw))
                }
            }
        }
    }

    /// Gradients of q, k and v from the gradient of the output. Written, not
    /// accumulated. (batch, kv head) pairs run concurrently so the query heads
    /// that share a kv head add into its dk and dv one after another.
    ///
    /// - Parameters:
    ///   - dout: [B·T, H·hd]
    ///   - q, k, v, lse: as given to and produced by forward
    ///   - dq: [B·T, H·hd]; dk, dv: [B·T, KV·hd]
    public func backward(_ dout: UnsafePointer<Float>,
                         q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, mask: UnsafePointer<UInt8>?, sequenceIDs: UnsafePointer<Int32>? = nil,
                         batch: Int, length t: Int,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         scratch: UnsafeMutablePointer<Float>) {
        let hd = headDimension, qw = queryWidth, kw = kvWidth, group = heads / kvHeads
        let hd32 = Int32(hd), qw32 = Int32(qw), kw32 = Int32(kw)
        Parallel.forEachChunk(batch * kvHeads) { chunk, items in
            // P, and dP then dS [block, keys]; kᵀ and vᵀ [hd, T]
            let (p, dp, kt, vt) = chunkScratch(scratch, chunk: chunk, length: t)
            for item in items {
                let b = item / kvHeads, g = item % kvHeads
                let kg = k + b * t * kw + g * hd, vg = v + b * t * kw + g * hd
                transpose(kg, length: t, into: kt)
                transpose(vg, length: t, into: vt)
                let dkg = dk + b * t * kw + g * hd, dvg = dv + b * t * kw + g * hd
                let rowMask = mask.map { $0 + b * t }, rowSequences = sequenceIDs.map { $0 + b * t }
                for row in 0..<t {
                    (dkg + row * kw).update(repeating: 0, count: hd)
                    (dvg + row * kw).update(repeating: 0, count: hd)
                }
                for h in (g * group)..<((g + 1) * group) {
                    let qh = q + b * t * qw + h * hd, doh = dout + b * t * qw + h * hd, dqh = dq + b * t * qw + h * hd
                    let rowLSE = lse + (b * heads + h) * t
                    for q0 in stride(from: 0, to: t, by: Self.queryBlock) {
                        let q1 = min(t, q0 + Self.queryBlock), keys = keys(forQueries: q0, q1, sequences: rowSequences)
                        let rows = Int32(q1 - q0), cols = Int32(keys.count), k0 = keys.lowerBound
                        scores(qh, kt, queries: q0..<q1, keys: keys, length: t, into: p)
                        for i in q0..<q1 {
                            probabilitiesRow(p + (i - q0) * keys.count, query: i, keys: keys, lse: rowLSE[i], mask: rowMask,
                                             sequences: rowSequences)
                        }
                        // dP [rows, keys] = dout_h[q0..<q1] · v_g[keys]ᵀ
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, hd32,
                                    1, doh + q0 * qw, qw32, vt + k0, Int32(t), 0, dp, cols)
                        // dv_g[keys] += Pᵀ · dout_h[q0..<q1]
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, hd32, rows,
                                    1, p, cols, doh + q0 * qw, qw32, 1, dvg + k0 * kw, kw32)
                        // Softmax backward: dS = P ⊙ (dP − rowsum(P ⊙ dP)).
                        for r in 0..<(q1 - q0) {
                            softmaxBackwardRow(p + r * keys.count, dp + r * keys.count, count: keys.count)
                        }
                        // dq_h[q0..<q1] = scale · dS · k_g[keys]
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd32, cols,
                                    scale, dp, cols, kg + k0 * kw, kw32, 0, dqh + q0 * qw, qw32)
                        // dk_g[keys] += scale · dSᵀ · q_h[q0..<q1]
                        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, hd32, rows,
                                    scale, dp, cols, qh + q0 * qw, qw32, 1, dkg + k0 * kw, kw32)
                    }
                }
            }
        }
    }

    /// Recomputes the attention probabilities of one (sequence, head) from the
    /// forward cache, as backward does: probabilities [T, T], zero where masked.
    public func probabilities(q: UnsafePointer<Float>, k: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              mask: UnsafePointer<UInt8>?, sequenceIDs: UnsafePointer<Int32>? = nil,
                              sequence b: Int, head h: Int, length t: Int, into p: UnsafeMutablePointer<Float>) {
        let g = h / (heads / kvHeads)
        var kt = [Float](repeating: 0, count: headDimension * t)
        transpose(k + b * t * kvWidth + g * headDimension, length: t, into: &kt)
        // One block of all queries against all keys: the row functions zero what a query cannot see.
        scores(q + b * t * queryWidth + h * headDimension, kt, queries: 0..<t, keys: 0..<t, length: t, into: p)
        let rowLSE = lse + (b * heads + h) * t
        for i in 0..<t {
            probabilitiesRow(p + i * t, query: i, keys: 0..<t, lse: rowLSE[i], mask: mask.map { $0 + b * t },
                             sequences: sequenceIDs.map { $0 + b * t })
        }
    }

    // MARK: - Rows

    /// S [queries, keys] = scale · q_h[queries] · k_g[keys]ᵀ, from kᵀ [hd, T].
    private func scores(_ qh: UnsafePointer<Float>, _ kt: UnsafePointer<Float>, queries: Range<Int>, keys: Range<Int>,
                        length t: Int, into s: UnsafeMutablePointer<Float>) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(queries.count), Int32(keys.count), Int32(headDimension),
                    scale, qh + queries.lowerBound * queryWidth, Int32(queryWidth),
                    kt + keys.lowerBound, Int32(t), 0, s, Int32(keys.count))
    }

    /// Softmax in place of query i's scores s[j − keys.lowerBound] over the
    /// keys it sees; the others become 0. Returns the row's log-sum-exp. A
    /// row with no visible key (a left-padding query) becomes all zeros.
    func softmaxRow(_ s: UnsafeMutablePointer<Float>, query i: Int, keys: Range<Int>,
                    mask: UnsafePointer<UInt8>?, sequences: UnsafePointer<Int32>? = nil) -> Float {
        maskRow(s, query: i, keys: keys, mask: mask, sequences: sequences)
        let n = keys.count
        let m = VectorMath.maximum(s, count: n)
        guard m > -Float.infinity else {
            s.update(repeating: 0, count: n)
            return .infinity
        }
        let sum = Float(qk_exp_shifted(s, s, Int64(n), m, 1)) // exactly 0 where masked
        VectorMath.scale(s, count: n, by: 1 / sum)
        return m + Foundation.log(sum)
    }

    /// dS = P ⊙ (dP − rowsum(P ⊙ dP)) of one row, in place of dP.
    private func softmaxBackwardRow(_ p: UnsafePointer<Float>, _ dp: UnsafeMutablePointer<Float>, count: Int) {
        var dots = VectorMath.Vector()
        @inline(__always) func dot(_ j: Int, _ lanes: Int) {
            dots += VectorMath.load(p + j, lanes: lanes) * VectorMath.load(dp + j, lanes: lanes)
        }
        VectorMath.forEachVector(in: 0..<count, dot)
        let total = dots.sum()
        @inline(__always) func gradient(_ j: Int, _ lanes: Int) {
            VectorMath.store(VectorMath.load(p + j, lanes: lanes) * (VectorMath.load(dp + j, lanes: lanes) - total), dp + j, lanes: lanes)
        }
        VectorMath.forEachVector(in: 0..<count, gradient)
    }

    /// Probabilities of query i's scores from its log-sum-exp; 0 where it cannot see.
    private func probabilitiesRow(_ s: UnsafeMutablePointer<Float>, query i: Int, keys: Range<Int>, lse: Float,
                                  mask: UnsafePointer<UInt8>?, sequences: UnsafePointer<Int32>?) {
        maskRow(s, query: i, keys: keys, mask: mask, sequences: sequences)
        _ = qk_exp_shifted(s, s, Int64(keys.count), lse, 1)
    }

    /// Sets the scores of keys query i cannot see to −∞: after it, padding,
    /// another sequence, and `window` or more tokens back.
    private func maskRow(_ s: UnsafeMutablePointer<Float>, query i: Int, keys: Range<Int>, mask: UnsafePointer<UInt8>?,
                         sequences: UnsafePointer<Int32>?) {
        let k0 = keys.lowerBound
        for j in max(i + 1, k0)..<max(i + 1, keys.upperBound) { s[j - k0] = -.infinity }
        if let mask {
            for j in k0..<min(i + 1, keys.upperBound) where mask[j] == 0 { s[j - k0] = -.infinity }
        }
        if let sequences {
            let own = sequences[i]
            for j in k0..<min(i + 1, keys.upperBound) where sequences[j] != own { s[j - k0] = -.infinity }
        }
        if let window, i - window + 1 > k0 {
            for j in k0..<(i - window + 1) { s[j - k0] = -.infinity }
        }
    }
}
