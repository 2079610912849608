// Gradient accumulation: one optimizer step from several micro-batches.
//
// The contract, equal to one batch holding all the micro-batches' examples (and to
// the Hugging Face Trainer since transformers 4.46, which divides by the number of
// items in the whole accumulated batch):
//   1. draw the step's micro-batches first, so the total target count N is known;
//   2. for each micro-batch, run forward and backward with the loss defined as
//      lossScale · Σ(cross-entropy over its targets), lossScale = 1 / N — that is, seed
//      backward with d(loss)/d(token loss) = lossScale — and let gradients add up;
//   3. clip the summed gradients, apply AdamW once, zero the gradients.
// Dividing each micro-batch by its own token count instead would weight a token in
// a short micro-batch more than one in a long micro-batch; dividing by N does not.
// The step's loss for the log is the sum of the scaled micro-batch losses, the mean
// over all N targets.

import Foundation

/// How many micro-batches make one optimizer step.
public struct GradientAccumulation: Hashable, Sendable, Codable {
    public let microBatches: Int

    /// - Throws: `BatchLoaderError.invalidSize` when `microBatches` < 1.
    public init(microBatches: Int) throws {
        guard microBatches >= 1 else { throw BatchLoaderError.invalidSize("gradient accumulation steps", microBatches) }
        self.microBatches = microBatches
    }

    /// The micro-batches of one optimizer step, drawn from `loader`.
    public func nextStep(from loader: inout BatchLoader) -> AccumulationStep {
        AccumulationStep(batches: (0..<microBatches).map { _ in loader.next() })
    }
}

/// The micro-batches of one optimizer step and the weight of their token losses.
public struct AccumulationStep: Hashable, Sendable {
    public let batches: [TrainingBatch]
    /// Targets over all micro-batches (N).
    public let targetCount: Int
    /// Multiplier of each micro-batch's summed token loss: 1 / N (0 when N is 0).
    public let lossScale: Double

    public init(batches: [TrainingBatch]) {
        self.batches = batches
        targetCount = batches.reduce(0) { $0 + $1.targetCount }
        lossScale = targetCount == 0 ? 0 : 1 / Double(targetCount)
    }

    /// Non-padding tokens over all micro-batches (for tokens/s).
    public var tokenCount: Int { batches.reduce(0) { $0 + $1.tokenCount } }
}
