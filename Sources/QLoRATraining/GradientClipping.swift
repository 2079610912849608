// Global gradient-norm clipping, as torch.nn.utils.clip_grad_norm_ (norm_type 2).
//
//   total = ‖(‖g₁‖₂, ‖g₂‖₂, …)‖₂          over every trainable buffer together
//   coef  = maxNorm / (total + 1e-6)      the 1e-6 keeps a zero norm from dividing by zero
//   g    ← g · min(coef, 1)               so gradients already inside the ball are untouched
// and the norm before clipping is returned (training logs it as grad_norm).
// Sums of squares are accumulated in Double, so the norm is at least as accurate
// as PyTorch's float32 reduction.
// One deviation: when the norm is NaN or ±Inf PyTorch (error_if_nonfinite=False)
// multiplies every gradient by NaN; here they are left as they are, so that
// `NonFiniteCheck` can still name the tensor that went wrong.

import Foundation

public enum GradientClipping {
    /// The 2-norm of all `buffers` together.
    public static func globalNorm(_ buffers: [UnsafeBufferPointer<Float>]) -> Float {
        var squares = 0.0
        for buffer in buffers {
            for x in buffer { squares += Double(x) * Double(x) }
        }
        return Float(squares.squareRoot())
    }

    /// Scales all `buffers` together so that their global 2-norm is at most `maxNorm`.
    /// - Returns: the global norm before clipping.
    @discardableResult
    public static func clipGlobalNorm(_ buffers: [UnsafeMutableBufferPointer<Float>], maxNorm: Float) -> Float {
        let total = globalNorm(buffers.map { UnsafeBufferPointer($0) })
        guard total.isFinite else { return total }
        let coefficient = min(maxNorm / (total + 1e-6), 1)
        for buffer in buffers {
            for i in buffer.indices { buffer[i] *= coefficient }
        }
        return total
    }

    /// `clipGlobalNorm` over one flat gradient array.
    @discardableResult
    public static func clipGlobalNorm(_ gradients: inout [Float], maxNorm: Float) -> Float {
        gradients.withUnsafeMutableBufferPointer { clipGlobalNorm([$0], maxNorm: maxNorm) }
    }
}
