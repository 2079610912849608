// One optimizer step on the adapters of a model, and the validation loss.
//
// A step follows GradientAccumulation's contract: every micro-batch runs forward and
// backward with its summed token loss scaled by 1/N (N = targets of the whole step),
// so the gradients add up to those of the mean loss over the step; then the gradients
// are checked for NaN/Inf, clipped, and AdamW updates the flat parameter buffer with
// the scheduled learning rate. The loss is checked after each forward: a NaN stops the
// step before it can reach AdamW's moments.

import Foundation
import QLoRAModel
import QLoRATraining

/// What one optimizer step did.
public struct StepResult: Sendable, Hashable {
    /// Mean cross-entropy over the step's target tokens.
    public var loss: Double
    public var targetTokens: Int
    /// Non-padding tokens the step processed.
    public var tokens: Int
    /// Global gradient norm before clipping.
    public var gradientNorm: Float
    public var learningRate: Double
}

/// AdamW on the adapters attached to a model, with a schedule and gradient clipping.
public final class AdapterOptimizer {
    public let model: LlamaModel
    public let parameters: TrainableParameters
    /// The flat buffer's tensors under their PEFT names ("base_model.model.…").
    public let layout: ParameterLayout
    public private(set) var adam: AdamW
    public let schedule: LearningRateSchedule
    public let peakLearningRate: Double
    public let maxGradientNorm: Float?

    /// - Throws: `TrainerError.noAdapters` when the model has none attached; `AdamWError`.
    public init(model: LlamaModel, schedule: LearningRateSchedule, peakLearningRate: Double, weightDecay: Double,
                hyperparameters: AdamW.Hyperparameters = .init(), maxGradientNorm: Float?) throws {
        guard let parameters = model.trainableParameters else { throw TrainerError.noAdapters }
        self.model = model
        self.parameters = parameters
        layout = try ParameterLayout(parameters.entries.map { (Self.peftPrefix + $0.name, $0.shape) })
        adam = try AdamW(parameterCount: parameters.count, hyperparameters: hyperparameters,
                         groups: AdamW.groups(for: layout, weightDecay: weightDecay, exempt: { _ in false }))
        self.schedule = schedule
        self.peakLearningRate = peakLearningRate
        self.maxGradientNorm = maxGradientNorm
    }

    /// Prefix of adapter tensors in PEFT files.
    public static let peftPrefix = "base_model.model."

    /// Optimizer steps taken (AdamW's t).
    public var stepsTaken: Int { adam.step }

    /// Runs one optimizer step over `batches` (its micro-batches).
    /// - Parameter dropoutSeeds: one per micro-batch, seeding its LoRA dropout masks.
    /// - Throws: `NonFiniteError` for a NaN or ±Inf loss or gradient, before any update;
    ///   `ModelError` for a batch the model cannot run.
    public func step(_ batches: [TrainingBatch], dropoutSeeds: [UInt64]) throws -> StepResult {
        precondition(dropoutSeeds.count == batches.count, "[AdapterOptimizer] one dropout seed per micro-batch")
        let stepNumber = adam.step + 1
        let accumulation = AccumulationStep(batches: batches)
        parameters.zeroGradients()
        var lossSum = 0.0
        for (batch, seed) in zip(batches, dropoutSeeds) {
            model.setLoRADropout(seed: seed)
            guard let loss = try model.forward(TokenBatch(batch), allLogits: false) else { continue }
            try NonFiniteCheck.check(loss: Float(loss.sum), step: stepNumber)
            lossSum += loss.sum
            try model.backward(scale: Float(accumulation.lossScale))
        }
        model.setLoRADropout(seed: nil)
        let gradients = UnsafeMutableBufferPointer(start: parameters.gradients.pointer, count: parameters.count)
        try NonFiniteCheck.check(gradients: UnsafeBufferPointer(gradients), layout: layout, step: stepNumber)
        let norm = maxGradientNorm.map { GradientClipping.clipGlobalNorm([gradients], maxNorm: $0) }
            ?? GradientClipping.globalNorm([UnsafeBufferPointer(gradients)])
        let learningRate = schedule.learningRate(step: adam.step, peak: peakLearningRate)
        adam.update(parameters: UnsafeMutableBufferPointer(start: parameters.values.pointer, count: parameters.count),
                    gradients: UnsafeBufferPointer(gradients), learningRate: learningRate)
        return StepResult(loss: lossSum * accumulation.lossScale, targetTokens: accumulation.targetCount,
                          tokens: accumulation.tokenCount, gradientNorm: norm, learningRate: learningRate)
    }

    /// Continues from a checkpoint's parameters and optimizer state.
    /// - Throws: `TrainerError.checkpointMismatch` when its tensors are not this model's adapters.
    public func restore(parameters values: [Float], layout saved: ParameterLayout, optimizer: AdamW, from url: URL) throws {
        guard saved == layout, values.count == parameters.count, optimizer.parameterCount == parameters.count else {
            let ours = Set(layout.entries.map(\.name)), theirs = Set(saved.entries.map(\.name))
            let detail = ours == theirs ? "the shapes differ" : "\(theirs.subtracting(ours).count) of its tensors are not adapters of this run and \(ours.subtracting(theirs).count) adapters are missing"
            throw TrainerError.checkpointMismatch(url, "its adapter tensors do not match this run's (\(detail))")
        }
        parameters.values.pointer.update(from: values, count: values.count)
        adam = optimizer
    }

    /// Mean cross-entropy per target token over `batches`, without dropout.
    public func validationLoss<S: Sequence>(_ batches: S) throws -> Double where S.Element == TrainingBatch {
        model.setLoRADropout(seed: nil)
        var sum = 0.0, count = 0
        for batch in batches {
            guard let loss = try model.forward(TokenBatch(batch), allLogits: false) else { continue }
            sum += loss.sum
            count += loss.count
        }
        return count > 0 ? sum / Double(count) : .nan
    }
}
