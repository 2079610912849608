import QLoRACompute

/// The gated activation of the Llama MLP: a = silu(g) ⊙ u, between the
/// gate/up projections and the down projection (the projections themselves
/// are `Projection`s run by the decoder layer).
///
/// Cache for backward: g and u [n, F], the two projection outputs.
public enum SwiGLU {
    /// Elements per chunk worth a thread (an exp each).
    static let elementwiseGrain = 1 << 14

    /// a [count] = silu(g) ⊙ u, with silu(g) = g / (1 + e^−g) as torch computes it.
    public static func forward(gate g: UnsafePointer<Float>, up u: UnsafePointer<Float>, count: Int,
                               into a: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(count, grain: elementwiseGrain) { _, range in
            @inline(__always) func body(_ i: Int, _ lanes: Int) {
                let x = VectorMath.load(g + i, lanes: lanes)
                VectorMath.store(x / (1 + VectorMath.exp(-x)) * VectorMath.load(u + i, lanes: lanes), a + i, lanes: lanes)
            }
            VectorMath.forEachVector(in: range, body)
        }
    }

    /// dg = da ⊙ u ⊙ silu′(g) and du = da ⊙ silu(g), where
    /// silu′(g) = σ(g)·(1 + g·(1 − σ(g))). `dg` may be the same buffer as `da`.
    public static func backward(_ da: UnsafePointer<Float>, gate g: UnsafePointer<Float>, up u: UnsafePointer<Float>,
                                count: Int, gateGradient dg: UnsafeMutablePointer<Float>,
                                upGradient du: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(count, grain: elementwiseGrain) { _, range in
            @inline(__always) func body(_ i: Int, _ lanes: Int) {
                let x = VectorMath.load(g + i, lanes: lanes), d = VectorMath.load(da + i, lanes: lanes)
                let sigmoid = 1 / (1 + VectorMath.exp(-x))
                let up = VectorMath.load(u + i, lanes: lanes)
                VectorMath.store(d * x * sigmoid, du + i, lanes: lanes)
                VectorMath.store(d * up * sigmoid * (1 + x * (1 - sigmoid)), dg + i, lanes: lanes)
            }
            VectorMath.forEachVector(in: range, body)
        }
    }
}
