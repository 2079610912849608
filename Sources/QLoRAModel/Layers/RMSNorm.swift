/// Root-mean-square normalization with a frozen per-channel weight, in fp32
/// as transformers computes it: y = w · (x · rsqrt(mean(x²) + eps)).
///
/// Cache for backward: the input x (the residual stream, kept by the caller)
/// and rstd [n], the reciprocal root mean square of each row.
public struct RMSNorm: Sendable {
    public let dimension: Int
    public let epsilon: Float
    /// w [C]
    public let weight: [Float]

    public init(weight: [Float], epsilon: Float) {
        self.weight = weight
        self.dimension = weight.count
        self.epsilon = epsilon
    }

    /// Σ term(i) for i in 0..<count, in double, as eight interleaved partial
    /// sums: one running sum waits on every add (31M model, a training step's
    /// norms: 10 ms before, 4.5 ms with this).
    @inline(__always)
    private static func sum(count: Int, _ term: (Int) -> Double) -> Double {
        var s = SIMD8<Double>()
        var i = 0
        while i + 8 <= count {
            s += SIMD8(term(i), term(i + 1), term(i + 2), term(i + 3), term(i + 4), term(i + 5), term(i + 6), term(i + 7))
            i += 8
        }
        var tail = 0.0
        while i < count {
            tail += term(i)
            i += 1
        }
        return s.sum() + tail
    }

    /// Rows per chunk worth a thread.
    private var rowGrain: Int { max(1, (1 << 16) / max(dimension, 1)) }

    /// - Parameters:
    ///   - x: [n, C]
    ///   - y: [n, C] output
    ///   - rstd: [n] output, cached for backward
    public func forward(_ x: UnsafePointer<Float>, rows n: Int,
                        into y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>) {
        let c = dimension, eps = epsilon
        weight.withUnsafeBufferPointer { wb in
            let w = wb.baseAddress!
            Parallel.forEachChunk(n, grain: rowGrain) { _, rows in
                for row in rows {
                    let xr = x + row * c, yr = y + row * c
                    // Double accumulation keeps the mean as exact as torch's pairwise sum at any width.
                    let sum = Self.sum(count: c) { Double(xr[$0]) * Double(xr[$0]) }
                    let r = 1 / (Float(sum / Double(c)) + eps).squareRoot()
                    rstd[row] = r
                    for i in 0..<c { yr[i] = w[i] * (xr[i] * r) }
                }
            }
        }
    }

    /// dx = r·(w⊙dy) − x·r³·Σ(w⊙dy⊙x)/C per row; written, or added when
    /// `accumulate` (the residual stream's gradient flows on through dx).
    ///
    /// - Parameters:
    ///   - dy: [n, C] gradient of the output
    ///   - x: [n, C] the forward input
    ///   - rstd: [n] from forward
    ///   - dx: [n, C]
    public func backward(_ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                         rows n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        let c = dimension
        weight.withUnsafeBufferPointer { wb in
            let w = wb.baseAddress!
            Parallel.forEachChunk(n, grain: rowGrain) { _, rows in
                for row in rows {
                    let xr = x + row * c, dyr = dy + row * c, dxr = dx + row * c
                    let r = rstd[row]
                    let dot = Self.sum(count: c) { Double(w[$0] * dyr[$0]) * Double(xr[$0]) }
                    let k = Float(dot / Double(c)) * r * r
                    if accumulate {
                        for i in 0..<c { dxr[i] += r * (w[i] * dyr[i] - xr[i] * k) }
                    } else {
                        for i in 0..<c { dxr[i] = r * (w[i] * dyr[i] - xr[i] * k) }
                    }
                }
            }
        }
    }
}
