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
                // Float lanes over runs of 64 classes, each run's total added in Double: at 32k
                // classes one float sum would be off by ~1e-5.
                var sum: Double = 0
                for start in stride(from: 0, to: v, by: 64) {
                    var run = VectorMath.Vector()
                    @inline(__always) func add(_ j: Int, _ lanes: Int) {
                        // Missing lanes load −∞, whose exp is 0.
                        run += VectorMath.exp(VectorMath.load(l + j, lanes: lanes, fill: -.infinity) - m)
                    }
                    VectorMath.forEachVector(in: start..<min(v, start + 64), add)
                    sum += Double(run.sum())
                }
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
                let rowLSE = lse[row]
                @inline(__always) func body(_ j: Int, _ lanes: Int) {
                    VectorMath.store(VectorMath.exp(VectorMath.load(l + j, lanes: lanes) - rowLSE) * scale, l + j, lanes: lanes)
                }
                VectorMath.forEachVector(in: 0..<v, body)
                l[target] -= scale
            }
        }
    }
}
