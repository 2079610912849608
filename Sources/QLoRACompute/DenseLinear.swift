/// A frozen fp32 linear map computed with OpenBLAS on the shared pool's
/// threads: the full-precision base that the packed 4/8-bit weights are
/// checked against, and what the embeddings-tied lm_head and unquantized
/// checkpoints run on.
///
/// The weight is held as a Swift array, so a tied lm_head shares the
/// embedding table's storage instead of copying it.
public struct DenseLinear: FrozenLinear {
    public let inFeatures: Int
    public let outFeatures: Int
    /// W [out, in], row-major (the nn.Linear layout).
    public let weight: [Float]

    /// - Precondition: `weight.count == outFeatures * inFeatures` (loaders
    ///   check the shape from the file before building the layer).
    public init(weight: [Float], outFeatures: Int, inFeatures: Int) {
        precondition(weight.count == outFeatures * inFeatures,
                     "[DenseLinear] weight has \(weight.count) values, expected \(outFeatures)×\(inFeatures)")
        self.weight = weight
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
    }

    public func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        weight.withUnsafeBufferPointer {
            Self.forward(weight: $0.baseAddress!, outFeatures: outFeatures, inFeatures: inFeatures, x, rows: n, into: y)
        }
    }

    public func backwardInput(_ dy: UnsafePointer<Float>, rows n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        weight.withUnsafeBufferPointer {
            Self.backwardInput(weight: $0.baseAddress!, outFeatures: outFeatures, inFeatures: inFeatures, dy, rows: n,
                               into: dx, accumulate: accumulate)
        }
    }

    /// y[n, out] = x[n, in] · W[out, in]ᵀ for any row-major fp32 W (an array
    /// here, a mapped tensor in `MappedLinear`).
    public static func forward(weight w: UnsafePointer<Float>, outFeatures: Int, inFeatures: Int,
                               _ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        guard n > 0 else { return }
        ComputePool.shared.sgemm(.plain, .transposed, m: n, n: outFeatures, k: inFeatures, alpha: 1,
                                 a: x, lda: inFeatures, b: w, ldb: inFeatures, beta: 0, c: y, ldc: outFeatures)
    }

    /// dx[n, in] (+)= dy[n, out] · W[out, in] for any row-major fp32 W.
    public static func backwardInput(weight w: UnsafePointer<Float>, outFeatures: Int, inFeatures: Int,
                                     _ dy: UnsafePointer<Float>, rows n: Int, into dx: UnsafeMutablePointer<Float>,
                                     accumulate: Bool) {
        guard n > 0 else { return }
        ComputePool.shared.sgemm(.plain, .plain, m: n, n: inFeatures, k: outFeatures, alpha: 1,
                                 a: dy, lda: outFeatures, b: w, ldb: inFeatures,
                                 beta: accumulate ? 1 : 0, c: dx, ldc: inFeatures)
    }
}
