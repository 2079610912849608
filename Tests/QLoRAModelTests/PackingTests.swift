import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Several sequences packed into one row (sequence ids, positions restarting
/// at 0) compute exactly what each computes alone: the same logits, the sum
/// of their losses, and the sum of their adapter gradients.
@Suite struct PackingTests {
    @Test(arguments: [false, true])
    func packedRowEqualsTheSequencesAlone(checkpointing: Bool) throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        try model.loadLoRA(directory: Reference.tinyLlama.appendingPathComponent("adapter"))
        model.gradientCheckpointing = checkpointing
        let parameters = try #require(model.trainableParameters)
        let sequences = [Reference.expected.seq1, Reference.expected.seq2, Array(Reference.expected.seq2.prefix(9))]

        // Alone: summed losses, summed gradients (scale 1 = gradient of the summed loss), each row's logits.
        var lossSum = 0.0, logits: [Float] = []
        for s in sequences {
            let loss = try #require(try model.forward(TokenBatch(sequences: [s])))
            lossSum += loss.sum
            logits += model.logits()
            try model.backward(scale: 1)
        }
        let alone = parameters.gradients.array()
        parameters.zeroGradients()

        // Packed into one row of 66 with 4 padding tokens at the end.
        let length = sequences.map(\.count).reduce(0, +) + 4
        var tokens: [Int32] = [], ids: [Int32] = [], positions: [Int32] = [], targets: [Int32] = []
        for (k, s) in sequences.enumerated() {
            tokens += s
            ids += [Int32](repeating: Int32(k + 1), count: s.count)
            positions += (0..<Int32(s.count)).map { $0 }
            targets += Array(s.dropFirst()) + [-100]
        }
        let padding = length - tokens.count
        tokens += [Int32](repeating: 0, count: padding)
        ids += [Int32](repeating: 0, count: padding)
        positions += [Int32](repeating: 0, count: padding)
        targets += [Int32](repeating: -100, count: padding)
        let batch = TokenBatch(tokens: tokens, batchSize: 1, length: length, attentionMask: ids.map { $0 == 0 ? 0 : 1 },
                               positions: positions, targets: targets, sequenceIDs: ids)
        let packed = try #require(try model.forward(batch))
        #expect(abs(packed.sum - lossSum) <= 1e-5 * lossSum)
        #expect(maxAbsDifference(Array(model.logits().prefix(logits.count)), logits) <= 1e-4)
        try model.backward(scale: 1)
        let scale = alone.map(abs).max()!
        #expect(maxAbsDifference(parameters.gradients.array(), alone) <= 1e-5 * scale)
    }

    @Test func sequencesMustBeContiguous() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        let batch = TokenBatch(tokens: [1, 2, 3, 4], batchSize: 1, length: 4, sequenceIDs: [1, 2, 1, 0])
        #expect(throws: ModelError.invalidBatch(reason: "sequence 1 of row 0 is not contiguous (it resumes at position 2)")) {
            try model.forward(batch)
        }
    }
}
