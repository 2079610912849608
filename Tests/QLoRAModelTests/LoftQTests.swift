import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// The randomized truncated SVD, and LoftQ initialization of adapters over a packed base.
@Suite struct LoftQTests {
    /// Columns of a random [rows, columns] matrix made orthonormal (Gram–Schmidt twice, in double).
    static func orthonormal(rows: Int, columns: Int, rng: inout SeededGenerator) -> [[Double]] {
        var basis: [[Double]] = []
        for _ in 0..<columns {
            var v = rng.gaussian(count: rows).map(Double.init)
            for _ in 0..<2 {
                for e in basis {
                    let dot = zip(e, v).reduce(0) { $0 + $1.0 * $1.1 }
                    for i in 0..<rows { v[i] -= dot * e[i] }
                }
            }
            let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            basis.append(v.map { $0 / norm })
        }
        return basis
    }

    /// A 57×43 matrix with a known spectrum: the top singular values, the
    /// orthonormality of the factors and the truncation error are those of the exact SVD.
    @Test func truncatedSVDRecoversAKnownSpectrum() {
        let (m, n, r) = (57, 43, 6)
        var rng = SeededGenerator(seed: 11)
        let u = Self.orthonormal(rows: m, columns: n, rng: &rng), v = Self.orthonormal(rows: n, columns: n, rng: &rng)
        // Decaying like a quantization residual's spectrum: no sharp gap after rank r.
        let sigma = (0..<n).map { 3 * pow(0.9, Double($0)) }
        var a = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { a[i * n + j] = Float((0..<n).reduce(0) { $0 + u[$1][i] * sigma[$1] * v[$1][j] }) } }

        let f = LowRank.truncatedSVD(a, rows: m, columns: n, rank: r, seed: 1)
        #expect(f.singularValues.count == r && f.u.count == m * r && f.vt.count == r * n)
        for i in 0..<r { #expect(abs(Double(f.singularValues[i]) - sigma[i]) <= 1e-3 * sigma[i], "σ\(i)") }
        for i in 0..<r {
            for j in 0..<r {
                let uu = (0..<m).reduce(0.0) { $0 + Double(f.u[$1 * r + i]) * Double(f.u[$1 * r + j]) }
                let vv = (0..<n).reduce(0.0) { $0 + Double(f.vt[i * n + $1]) * Double(f.vt[j * n + $1]) }
                #expect(abs(uu - (i == j ? 1 : 0)) < 1e-4 && abs(vv - (i == j ? 1 : 0)) < 1e-4)
            }
        }
        // ‖A − U·Σ·Vᵀ‖² is the energy of the discarded singular values (Eckart–Young).
        var residual = 0.0
        for i in 0..<m {
            for j in 0..<n {
                let approx = (0..<r).reduce(0.0) { $0 + Double(f.u[i * r + $1]) * Double(f.singularValues[$1]) * Double(f.vt[$1 * n + j]) }
                residual += (Double(a[i * n + j]) - approx) * (Double(a[i * n + j]) - approx)
            }
        }
        let optimal = sigma[r...].reduce(0) { $0 + $1 * $1 }
        #expect(abs(residual - optimal) <= 1e-3 * optimal)
        // A rank above the matrix's dimensions is clamped; rank 0 gives nothing.
        #expect(LowRank.truncatedSVD(a, rows: m, columns: n, rank: 100, seed: 1).singularValues.count == n)
        #expect(LowRank.truncatedSVD(a, rows: m, columns: n, rank: 0, seed: 1).singularValues.isEmpty)
    }

    /// stories260K packed NF4/64/DQ with rank-16 adapters: LoftQ removes
    /// about the share of the quantization error that the top 16 singular
    /// values of each residual hold (numpy's exact SVDs: 62 % of its energy,
    /// so 0.62 of its norm remains), and the logits move toward the fp32 model's.
    @Test func loftqBringsThePackedModelTowardFullPrecision() throws {
        let loaded = try PackedModelTests.packed(EmbeddedModel.directory, PackedModelTests.nf4)
        let model = loaded.model, full = try LlamaModel(directory: EmbeddedModel.directory)
        let source = try HFCheckpoint(directory: EmbeddedModel.directory)
        let ids = try Tokenizer(directory: EmbeddedModel.directory).encode("Once upon a time, there was a little girl named Lily.").map(Int32.init)
        func logits(_ m: LlamaModel) throws -> [Float] {
            try m.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
            return m.logits()
        }
        let reference = try logits(full), quantized = try logits(model)

        var random = Xoshiro256(seed: 3)
        try model.attachLoRA(LoRAConfiguration(rank: 16, alpha: 32), using: &random)
        #expect(maxAbsDifference(try logits(model), quantized) == 0) // B = 0: the packed model's own outputs
        let report = try model.initializeLoRAFromReference({ try source.floats($0) }, seed: 5)
        print("[LoftQTests] quantization error \(report.relativeErrorBefore) → \(report.relativeErrorAfter) over \(report.modules) modules")
        #expect(report.modules == model.projections.filter { $0.adapter != nil }.count)
        #expect(report.relativeErrorBefore > 0.05 && report.relativeErrorBefore < 0.15)
        #expect(report.relativeErrorAfter < 0.65 * report.relativeErrorBefore)
        #expect(report.relativeErrorAfter > 0.55 * report.relativeErrorBefore) // no better than the exact SVD allows

        let before = maxAbsDifference(quantized, reference), after = maxAbsDifference(try logits(model), reference)
        print("[LoftQTests] max |logits − fp32|: \(before) packed, \(after) with LoftQ adapters")
        #expect(after < 0.8 * before)
    }

    @Test func loftqRefusesWhatItCannotCompensate() throws {
        let loaded = try PackedModelTests.packed(EmbeddedModel.directory, PackedModelTests.nf4)
        let model = loaded.model, source = try HFCheckpoint(directory: EmbeddedModel.directory)
        // No adapters yet.
        #expect(throws: ModelError.self) { try model.initializeLoRAFromReference({ try source.floats($0) }, seed: 1) }
        var random = Xoshiro256(seed: 3)
        try model.attachLoRA(LoRAConfiguration(rank: 4, alpha: 8), using: &random)
        // Weights that are not the packed file's source.
        var rng = SeededGenerator(seed: 9)
        do {
            try model.initializeLoRAFromReference({ name in
                rng.gaussian(count: try source.floats(name).count, std: 0.1)
            }, seed: 1)
            Issue.record("a foreign reference was accepted")
        } catch let error as ModelError {
            #expect(error.localizedDescription.contains("not the checkpoint the packed file was quantized from"))
        }
        // A reference of another shape.
        #expect(throws: ModelError.self) { try model.initializeLoRAFromReference({ _ in [1, 2, 3] }, seed: 1) }
        // A full-precision base has no quantization error to approximate.
        let full = try LlamaModel(directory: EmbeddedModel.directory)
        try full.attachLoRA(LoRAConfiguration(rank: 4, alpha: 8), using: &random)
        do {
            try full.initializeLoRAFromReference({ try source.floats($0) }, seed: 1)
            Issue.record("LoftQ over a full-precision base was accepted")
        } catch let error as ModelError {
            #expect(error.localizedDescription.contains("full-precision base"))
        }
    }
}
