import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// The fp32 tiny-llama against transformers' own outputs.
@Suite struct TinyLlamaTests {
    let model: LlamaModel
    let reference: SafetensorsFile

    init() throws {
        model = try LlamaModel(directory: Reference.tinyLlama)
        reference = try Reference.tensors("reference.safetensors")
    }

    @Test(arguments: ["seq1", "seq2"])
    func logitsAndLossMatchTransformers(sequence: String) throws {
        let ids = Reference.sequence(sequence)
        let loss = try #require(try model.forward(TokenBatch(sequences: [ids])))
        #expect(maxAbsDifference(model.logits(), try reference.floats("\(sequence).logits")) <= 1e-4)
        #expect(loss.count == ids.count - 1)
        #expect(abs(Double(loss.mean) - Reference.expected.loss[sequence]!) <= 1e-5)
    }

    @Test func layerZeroIntermediatesMatchTransformers() throws {
        let t = 16, heads = 4, kvHeads = 2, hd = 32
        try model.forward(TokenBatch(sequences: [Reference.expected.seq1], nextTokenTargets: false))
        let cache = try #require(model.cache(layer: 0))
        func close(_ ours: [Float], _ key: String, _ tolerance: Float = 1e-5) throws {
            let theirs = try reference.floats(key)
            #expect(maxAbsDifference(ours, theirs) <= tolerance, "\(key)")
        }
        try close(model.hiddenState(0), "seq1.h.embed")
        try close(cache.attentionInput.array(count: t * 128), "seq1.l0.input_layernorm")
        try close(headMajor(cache.query.array(count: t * 128), length: t, heads: heads, headDimension: hd), "seq1.l0.q_rot")
        try close(headMajor(cache.key.array(count: t * 64), length: t, heads: kvHeads, headDimension: hd), "seq1.l0.k_rot")
        try close(cache.value.array(count: t * 64), "seq1.l0.v_proj")
        // Attention probabilities as backward recomputes them from q, k and the cached log-sum-exp.
        let attention = model.layers[0].attention
        var probabilities = [Float](repeating: 0, count: heads * t * t)
        for h in 0..<heads {
            probabilities.withUnsafeMutableBufferPointer { p in
                attention.probabilities(q: cache.query.pointer, k: cache.key.pointer, lse: cache.logSumExp.pointer, mask: nil,
                                        sequence: 0, head: h, length: t, into: p.baseAddress! + h * t * t)
            }
        }
        try close(probabilities, "seq1.l0.attn_probs", 1e-6)
        let attentionOutput = zip(cache.middle.array(count: t * 128), model.hiddenState(0)).map { $0 - $1 }
        try close(attentionOutput, "seq1.l0.o_proj")
        try close(model.hiddenState(1), "seq1.h.layer0")
        try close(model.hiddenState(2), "seq1.h.layer1")
        try close(model.finalNormOutput(), "seq1.h.final_norm")
    }

    @Test func ropeTablesMatchTransformers() throws {
        let t = 37, half = 16
        let positions = (0..<Int32(t)).map { $0 }
        var cos = [Float](repeating: 0, count: t * half), sin = cos
        model.rope.tables(positions: positions, count: t, cos: &cos, sin: &sin)
        // transformers' tables are cat(angles, angles): [T, 32].
        func full(_ x: [Float]) -> [Float] {
            (0..<t).flatMap { i -> [Float] in
                let row = Array(x[(i * half)..<((i + 1) * half)])
                return row + row
            }
        }
        #expect(maxAbsDifference(full(cos), try reference.floats("seq2.rope.cos")) <= 1e-6)
        #expect(maxAbsDifference(full(sin), try reference.floats("seq2.rope.sin")) <= 1e-6)
    }

    @Test(arguments: [TokenBatch.Padding.right, .left])
    func paddedBatchGivesEachSequencesOwnLogits(padding: TokenBatch.Padding) throws {
        let seq1 = Reference.expected.seq1, seq2 = Reference.expected.seq2
        let v = model.configuration.vocabularySize, t = seq2.count
        let loss = try #require(try model.forward(TokenBatch(sequences: [seq1, seq2], padding: padding, padToken: 3)))
        let logits = model.logits()
        let offset = padding == .left ? t - seq1.count : 0
        let first = Array(logits[(offset * v)..<((offset + seq1.count) * v)])
        let second = Array(logits[(t * v)..<(2 * t * v)])
        #expect(maxAbsDifference(first, try reference.floats("seq1.logits")) <= 1e-4)
        #expect(maxAbsDifference(second, try reference.floats("seq2.logits")) <= 1e-4)
        // One mean over the tokens of both sequences.
        let expected = (Reference.expected.loss["seq1"]! * Double(seq1.count - 1) + Reference.expected.loss["seq2"]! * Double(t - 1))
            / Double(seq1.count + t - 2)
        #expect(loss.count == seq1.count + t - 2)
        #expect(abs(Double(loss.mean) - expected) <= 1e-5)
    }

    @Test func ignoredLabelsAreNotCounted() throws {
        // Prompt masking: labels −100 on the first 8 tokens leave positions 7…14 predicting tokens 8…15.
        let ids = Reference.expected.seq1, t = ids.count, v = model.configuration.vocabularySize
        let labels = ids.enumerated().map { $0.offset < 8 ? -100 : $0.element }
        let targets = TokenBatch.targets(fromLabels: labels, batchSize: 1, length: t)
        let loss = try #require(try model.forward(TokenBatch(tokens: ids, batchSize: 1, length: t, targets: targets)))
        #expect(loss.count == 8)
        let logits = try reference.floats("seq1.logits")
        var expected: Double = 0
        for position in 7..<(t - 1) {
            let row = logits[(position * v)..<((position + 1) * v)].map(Double.init)
            let m = row.max()!
            expected += m + log(row.reduce(0) { $0 + exp($1 - m) }) - row[Int(ids[position + 1])]
        }
        #expect(abs(Double(loss.mean) - expected / 8) <= 1e-5)
    }

    @Test func badBatchesThrowClearErrors() {
        #expect(throws: ModelError.invalidBatch(reason: "token 384 at index 1 is outside the vocabulary 0..<384")) {
            try model.forward(TokenBatch(sequences: [[0, 384]]))
        }
        #expect(throws: ModelError.invalidBatch(reason: "positions has 1 values, expected 1×2")) {
            try model.forward(TokenBatch(tokens: [0, 1], batchSize: 1, length: 2, positions: [0]))
        }
        #expect(throws: ModelError.noForwardPass) { try model.backward() }
    }
}
