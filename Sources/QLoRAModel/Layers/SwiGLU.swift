import Foundation

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
            for i in range { a[i] = g[i] / (1 + Foundation.exp(-g[i])) * u[i] }
        }
    }

    /// dg = da ⊙ u ⊙ silu′(g) and du = da ⊙ silu(g), where
    /// silu′(g) = σ(g)·(1 + g·(1 − σ(g))). `dg` may be the same buffer as `da`.
    public static func backward(_ da: UnsafePointer<Float>, gate g: UnsafePointer<Float>, up u: UnsafePointer<Float>,
                                count: Int, gateGradient dg: UnsafeMutablePointer<Float>,
                                upGradient du: UnsafeMutablePointer<Float>) {
        Parallel.forEachChunk(count, grain: elementwiseGrain) { _, range in
            for i in range {
                let x = g[i], d = da[i]
                let sigmoid = 1 / (1 + Foundation.exp(-x))
                du[i] = d * x * sigmoid
                dg[i] = d * u[i] * sigmoid * (1 + x * (1 - sigmoid))
            }
        }
    }
}
