import Foundation
import QLoRACompute

/// What LoftQ initialization did to the adapted projections.
public struct LoftQReport: Sendable, Equatable {
    public var modules: Int
    /// ‖W − Q(W)‖ / ‖W‖ over every adapted projection together: the
    /// quantization error the adapters start from without LoftQ.
    public var relativeErrorBefore: Double
    /// ‖W − (Q(W) + s·B·A)‖ / ‖W‖ after it.
    public var relativeErrorAfter: Double
}

extension LlamaModel {
    /// LoftQ initialization (Li et al. 2023), in its one-step form (PEFT's
    /// `replace_lora_weights_loftq`): each adapter attached to a packed
    /// projection starts at the best rank-r approximation of the
    /// quantization error, s·B·A ≈ W − Q(W), so training starts from (nearly)
    /// the full-precision model's outputs instead of the quantized one's. The
    /// packed base stays as it is, and the adapters remain plain LoRA
    /// adapters in PEFT's format.
    ///
    /// - Parameters:
    ///   - reference: the full-precision weight [out, in] of a projection by
    ///     tensor name ("model.layers.0.self_attn.q_proj.weight"): the
    ///     checkpoint the packed file was quantized from.
    ///   - seed: the sketches of the randomized SVD (`LowRank`).
    /// - Throws: `ModelError.invalidAdapter` when no adapter is attached, an
    ///   adapted base is not packed, or the reference is not the packed
    ///   weight's source; `ModelError.wrongSize` for a reference of another shape.
    @discardableResult
    public func initializeLoRAFromReference(_ reference: (_ name: String) throws -> [Float], seed: UInt64) throws -> LoftQReport {
        let adapted = projections.compactMap { p in (p.adapter as? LoRAAdapter).map { (p, $0) } }
        guard !adapted.isEmpty else { throw ModelError.invalidAdapter(nil, reason: "LoftQ initialization needs LoRA adapters attached first") }
        var report = LoftQReport(modules: 0, relativeErrorBefore: 0, relativeErrorAfter: 0)
        var weightSquares = 0.0, beforeSquares = 0.0, afterSquares = 0.0
        for (index, (projection, adapter)) in adapted.enumerated() {
            guard let packed = projection.base as? PackedLinear else {
                throw ModelError.invalidAdapter(nil, reason: "LoftQ initialization compensates quantization error, but \(projection.name) has a full-precision base")
            }
            let name = projection.name + ".weight", out = adapter.outFeatures, inFeatures = adapter.inFeatures
            let weight = try reference(name)
            guard weight.count == out * inFeatures else {
                throw ModelError.wrongSize(tensor: name, expected: [out, inFeatures], found: [weight.count])
            }
            var residual = packed.dequantized()
            var w2 = 0.0, r2 = 0.0
            for i in 0..<residual.count {
                residual[i] = weight[i] - residual[i]
                w2 += Double(weight[i]) * Double(weight[i])
                r2 += Double(residual[i]) * Double(residual[i])
            }
            // 4-bit quantization leaves about 10 % of a weight's norm; half of it
            // means the reference is some other checkpoint.
            guard r2 <= 0.25 * w2 else {
                throw ModelError.invalidAdapter(nil, reason: String(
                    format: "the reference %@ differs from the packed weight by %.0f %% of its norm: it is not the checkpoint the packed file was quantized from",
                    name, 100 * (r2 / max(w2, .leastNormalMagnitude)).squareRoot()))
            }
            let r = adapter.rank
            let factors = LowRank.truncatedSVD(residual, rows: out, columns: inFeatures, rank: r, seed: seed &+ UInt64(index))
            // s·B·A = U·diag(σ)·Vᵀ with √(σ/s) on each side.
            adapter.a.update(repeating: 0, count: r * inFeatures)
            adapter.b.update(repeating: 0, count: out * r)
            let kept = factors.singularValues.count
            for j in 0..<kept {
                let g = (factors.singularValues[j] / adapter.scaling).squareRoot()
                for i in 0..<out { adapter.b[i * r + j] = factors.u[i * kept + j] * g }
                for c in 0..<inFeatures { adapter.a[j * inFeatures + c] = factors.vt[j * inFeatures + c] * g }
            }
            // What is left: residual − s·B·A.
            ComputePool.shared.sgemm(.plain, .plain, m: out, n: inFeatures, k: r, alpha: -adapter.scaling, a: adapter.b, lda: r,
                                     b: adapter.a, ldb: inFeatures, beta: 1, c: &residual, ldc: inFeatures)
            weightSquares += w2
            beforeSquares += r2
            afterSquares += residual.reduce(0) { $0 + Double($1) * Double($1) }
            report.modules += 1
        }
        report.relativeErrorBefore = (beforeSquares / weightSquares).squareRoot()
        report.relativeErrorAfter = (afterSquares / weightSquares).squareRoot()
        return report
    }
}
