import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// `forward(_:allLogits: false)` runs lm_head and the cross-entropy on the
/// target rows only: the loss and every adapter gradient (an adapter on
/// lm_head included) equal those of the full pass.
@Suite struct TargetRowsTests {
    @Test(arguments: [false, true])
    func targetRowsOnlyGiveTheSameLossAndGradients(checkpointing: Bool) throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        model.gradientCheckpointing = checkpointing
        var random = SeededGenerator(seed: 5)
        let parameters = try model.attachLoRA(
            LoRAConfiguration(rank: 4, alpha: 8, targetModules: LoRAConfiguration.allLlamaProjections + ["lm_head"]),
            using: &random)
        // Nonzero B everywhere, so lm_head's adapter adds to the gradient that flows back.
        let values = random.gaussian(count: parameters.count, std: 0.05)
        parameters.values.pointer.update(from: values, count: values.count)

        // Two rows of different lengths (padding), the loss on the second half of each only
        // (a prompt/completion split), one row's first target rows ignored as well.
        var batch = TokenBatch(sequences: [Reference.expected.seq1, Array(Reference.expected.seq2.prefix(11))])
        var targets = try #require(batch.targets)
        for row in 0..<2 {
            for t in 0..<(batch.length / 2) { targets[row * batch.length + t] = -100 }
        }
        batch.targets = targets
        #expect(targets.contains(-100) && targets.contains { $0 >= 0 })

        var runs: [(loss: LlamaModel.Loss, gradients: [Float])] = []
        for allLogits in [true, false] {
            parameters.zeroGradients()
            let loss = try #require(try model.forward(batch, allLogits: allLogits))
            try model.backward()
            runs.append((loss, parameters.gradients.array()))
        }
        #expect(runs[0].loss.count == runs[1].loss.count)
        #expect(abs(runs[0].loss.sum - runs[1].loss.sum) <= 1e-6 * runs[0].loss.sum)
        let scale = runs[0].gradients.map(abs).max()!
        #expect(scale > 0 && maxAbsDifference(runs[1].gradients, runs[0].gradients) <= 1e-5 * scale)
        // The partial pass does not pretend to have every row's logits.
        #expect(model.logits().isEmpty)
    }

    @Test func batchWithoutTargetRowsGivesZeroGradients() throws {
        let model = try LlamaModel(directory: Reference.tinyLlama)
        var random = SeededGenerator(seed: 6)
        let parameters = try model.attachLoRA(LoRAConfiguration(rank: 2, alpha: 4), using: &random)
        var batch = TokenBatch(sequences: [Reference.expected.seq1])
        batch.targets = [Int32](repeating: -100, count: batch.tokens.count)
        let loss = try #require(try model.forward(batch, allLogits: false))
        #expect(loss.count == 0)
        try model.backward(scale: 1)
        #expect(parameters.gradients.array().allSatisfy { $0 == 0 })
    }
}
