/// A frozen linear map, the base weight W [out, in] of a projection, applied to
/// a batch of fp32 row vectors. Frozen means it has no gradient: backward only
/// propagates to the input (dX = dY·W), which is all QLoRA needs from the base.
///
/// Implementations: `DenseLinear` (fp32 weights, OpenBLAS) and `PackedLinear`
/// (4/8-bit blocks, dequantized on the fly). Model code is written against
/// this protocol so the same layers run over either.
public protocol FrozenLinear: Sendable {
    var inFeatures: Int { get }
    var outFeatures: Int { get }

    /// y[n, out] = x[n, in] · Wᵀ  (row-major, contiguous).
    func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>)

    /// dx[n, in] = dy[n, out] · W, or dx += dy · W when `accumulate` is true
    /// (q, k and v projections share one input, so their input gradients add up).
    func backwardInput(_ dy: UnsafePointer<Float>, rows n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool)
}
