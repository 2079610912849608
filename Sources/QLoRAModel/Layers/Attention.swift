import COpenBLAS
import Foundation

/// Causal grouped-query attention over projected, rotated q, k and v:
/// query head h reads kv head h / (H/KV) (transformers' repeat_kv), scores are
/// q·kᵀ·hd^-½ with keys after the query, marked as padding or (Mistral's
/// sliding window) `window` or more tokens back masked out, the softmax runs
/// in fp32, and the heads' outputs are concatenated in head order.
///
/// Every head's products are single OpenBLAS calls on strided views of the
/// [n, heads·hd] buffers, so nothing is transposed into head-major order.
/// (batch, head) pairs run concurrently, one [T, T] scratch per core.
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

    /// Floats of scratch that forward and backward need for `batch` rows of `length` tokens.
    public func scratchCount(batch: Int, length: Int) -> Int {
        Parallel.chunkCount(for: batch * heads) * 2 * length * length
    }

    /// - Parameters:
    ///   - q: [B·T, H·hd] rotated queries
    ///   - k: [B·T, KV·hd] rotated keys
    ///   - v: [B·T, KV·hd]
    ///   - mask: [B, T], nonzero = real token, 0 = padding; nil when nothing is padded
    ///   - out: [B·T, H·hd] output, heads concatenated
    ///   - lse: [B, H, T] output, cached for backward
    ///   - scratch: `scratchCount(batch:length:)` floats
    public func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                        mask: UnsafePointer<UInt8>?, batch: Int, length t: Int,
                        into out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        scratch: UnsafeMutablePointer<Float>) {
        let hd = headDimension, qw = queryWidth, kw = kvWidth, group = heads / kvHeads
        Parallel.forEachChunk(batch * heads) { chunk, items in
            let p = scratch + chunk * 2 * t * t // [T, T]
            for item in items {
                let b = item / heads, h = item % heads, g = h / group
                let qh = q + b * t * qw + h * hd, kg = k + b * t * kw + g * hd, vg = v + b * t * kw + g * hd
                scores(qh, kg, length: t, into: p)
                let rowLSE = lse + (b * heads + h) * t
                for i in 0..<t {
                    rowLSE[i] = softmaxRow(p + i * t, query: i, length: t, mask: mask.map { $0 + b * t })
                }
                // out_h [T, hd] = P [T, T] · v_g [T, hd]
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(t), Int32(hd), Int32(t),
                            1, p, Int32(t), vg, Int32(kw), 0, out + b * t * qw + h * hd, Int32(qw))
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
                         lse: UnsafePointer<Float>, mask: UnsafePointer<UInt8>?, batch: Int, length t: Int,
                         dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                         scratch: UnsafeMutablePointer<Float>) {
        let hd = headDimension, qw = queryWidth, kw = kvWidth, group = heads / kvHeads
        let tt = Int32(t), hd32 = Int32(hd), qw32 = Int32(qw), kw32 = Int32(kw)
        Parallel.forEachChunk(batch * kvHeads) { chunk, items in
            let p = scratch + chunk * 2 * t * t  // P [T, T]
            let dp = p + t * t                   // dP, then dS [T, T]
            for item in items {
                let b = item / kvHeads, g = item % kvHeads
                let kg = k + b * t * kw + g * hd, vg = v + b * t * kw + g * hd
                let dkg = dk + b * t * kw + g * hd, dvg = dv + b * t * kw + g * hd
                let rowMask = mask.map { $0 + b * t }
                for h in (g * group)..<((g + 1) * group) {
                    let qh = q + b * t * qw + h * hd, doh = dout + b * t * qw + h * hd
                    let first = h == g * group
                    scores(qh, kg, length: t, into: p)
                    let rowLSE = lse + (b * heads + h) * t
                    for i in 0..<t { probabilitiesRow(p + i * t, query: i, length: t, lse: rowLSE[i], mask: rowMask) }
                    // dP [T, T] = dout_h [T, hd] · v_gᵀ
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tt, tt, hd32,
                                1, doh, qw32, vg, kw32, 0, dp, tt)
                    // dv_g [T, hd] (+)= Pᵀ · dout_h
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, tt, hd32, tt,
                                1, p, tt, doh, qw32, first ? 0 : 1, dvg, kw32)
                    // Softmax backward: dS = P ⊙ (dP − rowsum(P ⊙ dP)).
                    for i in 0..<t {
                        let pr = p + i * t, dr = dp + i * t
                        var dot: Float = 0
                        for j in 0...i { dot += pr[j] * dr[j] }
                        for j in 0..<t { dr[j] = pr[j] * (dr[j] - dot) }
                    }
                    // dq_h [T, hd] = scale · dS · k_g
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tt, hd32, tt,
                                scale, dp, tt, kg, kw32, 0, dq + b * t * qw + h * hd, qw32)
                    // dk_g [T, hd] (+)= scale · dSᵀ · q_h
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, tt, hd32, tt,
                                scale, dp, tt, qh, qw32, first ? 0 : 1, dkg, kw32)
                }
            }
        }
    }

    /// Recomputes the attention probabilities of one (sequence, head) from the
    /// forward cache, as backward does: probabilities [T, T], zero where masked.
    public func probabilities(q: UnsafePointer<Float>, k: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                              mask: UnsafePointer<UInt8>?, sequence b: Int, head h: Int, length t: Int,
                              into p: UnsafeMutablePointer<Float>) {
        let g = h / (heads / kvHeads)
        scores(q + b * t * queryWidth + h * headDimension, k + b * t * kvWidth + g * headDimension, length: t, into: p)
        let rowLSE = lse + (b * heads + h) * t
        for i in 0..<t { probabilitiesRow(p + i * t, query: i, length: t, lse: rowLSE[i], mask: mask.map { $0 + b * t }) }
    }

    // MARK: - Rows

    /// S [T, T] = scale · q_h [T, hd] · k_gᵀ
    private func scores(_ qh: UnsafePointer<Float>, _ kg: UnsafePointer<Float>, length t: Int,
                        into s: UnsafeMutablePointer<Float>) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(t), Int32(t), Int32(headDimension),
                    scale, qh, Int32(queryWidth), kg, Int32(kvWidth), 0, s, Int32(t))
    }

    /// Softmax of score row i in place over keys j ≤ i that are not padding;
    /// masked entries, j > i included, become 0. Returns the row's
    /// log-sum-exp. A row with no visible key (a left-padding query) becomes
    /// all zeros.
    private func softmaxRow(_ s: UnsafeMutablePointer<Float>, query i: Int, length t: Int, mask: UnsafePointer<UInt8>?) -> Float {
        maskRow(s, query: i, length: t, mask: mask)
        var m = -Float.infinity
        for j in 0...i { m = max(m, s[j]) }
        guard m > -Float.infinity else {
            for j in 0...i { s[j] = 0 }
            return .infinity
        }
        var sum: Float = 0
        for j in 0...i {
            let e = Foundation.exp(s[j] - m) // exactly 0 where masked
            s[j] = e
            sum += e
        }
        let inv = 1 / sum
        for j in 0...i { s[j] *= inv }
        return m + Foundation.log(sum)
    }

    /// Probabilities of score row i from its log-sum-exp; masked entries 0.
    private func probabilitiesRow(_ s: UnsafeMutablePointer<Float>, query i: Int, length t: Int, lse: Float,
                                  mask: UnsafePointer<UInt8>?) {
        maskRow(s, query: i, length: t, mask: mask)
        for j in 0...i { s[j] = Foundation.exp(s[j] - lse) }
    }

    /// Zeroes the scores after the query and sets padded keys and those
    /// outside the window to −∞.
    private func maskRow(_ s: UnsafeMutablePointer<Float>, query i: Int, length t: Int, mask: UnsafePointer<UInt8>?) {
        for j in (i + 1)..<t { s[j] = 0 }
        if let mask {
            for j in 0...i where mask[j] == 0 { s[j] = -.infinity }
        }
        if let window, i >= window {
            for j in 0...(i - window) { s[j] = -.infinity }
        }
    }
}
