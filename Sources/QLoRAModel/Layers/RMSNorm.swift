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
                    var sum: Double = 0
                    for i in 0..<c { sum += Double(xr[i]) * Double(xr[i]) }
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
                    var dot: Double = 0
                    for i in 0..<c { dot += Double(w[i] * dyr[i]) * Double(xr[i]) }
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
