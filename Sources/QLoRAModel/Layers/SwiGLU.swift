import CQLoRAKernels

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
            let i = range.lowerBound
            qk_swiglu_forward(a + i, g + i, u + i, Int64(range.count))
        }
    }

    /// dg = da ⊙ u ⊙ silu′(g) and du = da ⊙ silu(g), where
    /// silu′(g) = σ(g)·(1 + g·(1 − σ(g))). `dg` may be the same buffer as `da`.
    public static func backward(_ da: UnsafePointer<Float>, gate g: UnsafePointer<Float>, up u: UnsafePointer<Float>,
                                count: Int, gateGradient dg: UnsafeMutablePointer<Float>,
                                upGradient du: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(count, grain: elementwiseGrain) { _, range in
            let i = range.lowerBound
            qk_swiglu_backward(dg + i, du + i, da + i, g + i, u + i, Int64(range.count))
        }
    }
}
