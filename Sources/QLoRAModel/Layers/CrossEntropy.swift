import CQLoRAKernels
import Foundation
import QLoRACompute

/// Softmax cross-entropy of logits against target ids, the transformers
/// convention: rows whose target is negative (labels −100) are ignored and
/// the loss is the mean over the counted rows.
///
/// Cache for backward: the logits themselves and each row's log-sum-exp [n].
/// Backward overwrites the logits with their gradient (llm.c's fused
/// classifier), so the [n, V] buffer exists once.
public enum CrossEntropy {
    /// Returns the summed loss over counted rows and how many rows counted.
    ///
    /// - Parameters:
    ///   - logits: [n, V]
    ///   - targets: [n], negative = ignore; others must be in 0..<V
    ///   - lse: [n] output, log Σ exp(logits) per row (0 for ignored rows)
    public static func forward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows n: Int, classes v: Int,
                               lse: UnsafeMutablePointer<Float>) -> (sum: Double, count: Int) {
        // The exps dominate at real vocabulary sizes, so rows run on all cores.
        Parallel.forEachChunk(n) { _, rows in
            for row in rows {
                guard targets[row] >= 0 else {
                    lse[row] = 0
                    continue
                }
                let l = logits + row * v
                let m = VectorMath.maximum(l, count: v)
                // Float sums over runs of 64 classes, added in double: at 32k classes one float
                // sum would be off by ~1e-5.
                let sum = qk_exp_shifted(nil, l, Int64(v), m, 1)
                lse[row] = m + Float(Foundation.log(sum))
            }
        }
        var total: Double = 0
        var counted = 0
        for row in 0..<n where targets[row] >= 0 {
            total += Double(lse[row]) - Double(logits[row * v + Int(targets[row])])
            counted += 1
        }
        return (total, counted)
    }

    /// logits ← d(loss)/d(logits) = (softmax − onehot(target)) · scale for
    /// counted rows and 0 for ignored ones; scale is 1/count for a mean loss.
    public static func backward(logits: UnsafeMutablePointer<Float>, targets: UnsafePointer<Int32>, lse: UnsafePointer<Float>,
                                rows n: Int, classes v: Int, scale: Float) {
        Parallel.forEachChunk(n) { _, rows in
            for row in rows {
                let l = logits + row * v
                let target = Int(targets[row])
                guard target >= 0 else {
                    l.update(repeating: 0, count: v)
                    continue
                }
                _ = qk_exp_shifted(l, l, Int64(v), lse[row], scale)
                l[target] -= scale
            }
        }
    }
}
