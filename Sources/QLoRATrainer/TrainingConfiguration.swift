// The settings of a training run: what `qlora train` takes on its command line, saved
// in every checkpoint so a resumed run can refuse settings that would leave the
// trajectory of the run it continues.
//
// Defaults follow the Hugging Face Trainer and PEFT where they have one (seed 42,
// linear schedule without warm-up, max_grad_norm 1, no weight decay, rank 8, alpha 16,
// no dropout); the learning rate is QLoRA's 2e-4.

import Foundation
import QLoRAModel
import QLoRATraining

/// Everything that decides a training run.
public struct TrainingConfiguration: Codable, Hashable, Sendable {
    /// How long to train: a fixed number of optimizer steps, or passes over the training set.
    public enum Duration: Codable, Hashable, Sendable {
        case steps(Int)
        /// Fractions allowed; the step count is rounded up.
        case epochs(Double)

        private enum CodingKeys: String, CodingKey { case steps, epochs }

        // {"steps": 100} or {"epochs": 1.5}
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            if let n = try c.decodeIfPresent(Int.self, forKey: .steps) {
                self = .steps(n)
            } else {
                self = .epochs(try c.decode(Double.self, forKey: .epochs))
            }
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            switch self {
            case let .steps(n): try c.encode(n, forKey: .steps)
            case let .epochs(e): try c.encode(e, forKey: .epochs)
            }
        }
    }

    // MARK: Adapters

    /// Rank, alpha, rsLoRA, dropout, targets, layers and initialization of the LoRA adapters.
    public var lora: LoRAConfiguration
    /// A Hugging Face folder with the full-precision weights the packed base
    /// was quantized from: the adapters then start from LoftQ's rank-r
    /// approximation of the quantization error (`LlamaModel.initializeLoRAFromReference`)
    /// instead of B = 0. Used when a run starts; a resumed run restores its
    /// adapters from the checkpoint.
    public var loftqReference: String?

    // MARK: Data

    /// Examples longer than this are truncated; in packed mode, the row length.
    public var maxSequenceLength: Int
    /// Examples (padded) or rows (packed) per micro-batch.
    public var batchSize: Int
    /// Micro-batches per optimizer step.
    public var gradientAccumulation: Int
    public var batching: BatchingMode
    public var shuffle: Bool
    /// Train on prompts and user turns too, not only on completions and assistant turns.
    public var lossOnPrompt: Bool
    /// Append EOS after texts and completions.
    public var appendEOS: Bool
    /// A chat template family name (`ChatTemplate.named`) for chat data; nil = the model's own, if recognised.
    public var chatTemplate: String?

    // MARK: Optimization

    /// Peak learning rate.
    public var learningRate: Double
    /// One of `LearningRateSchedule.names`.
    public var schedule: String
    public var warmupSteps: Int
    public var weightDecay: Double
    public var adam: AdamW.Hyperparameters
    /// Clip the global gradient norm to this; nil = no clipping.
    public var maxGradientNorm: Double?
    public var duration: Duration
    public var seed: UInt64
    public var gradientCheckpointing: Bool

    // MARK: Bookkeeping (may change between a run and its resumption)

    /// Validation loss every this many steps (and before the first and after the last); nil = ten times per run.
    public var evaluateEvery: Int?
    /// A checkpoint every this many steps (and after the last); nil = ten per run.
    public var saveEvery: Int?
    /// Checkpoints kept (the newest).
    public var keepCheckpoints: Int

    public init(lora: LoRAConfiguration = LoRAConfiguration(), loftqReference: String? = nil, maxSequenceLength: Int = 1024, batchSize: Int = 4,
                gradientAccumulation: Int = 1, batching: BatchingMode = .padded, shuffle: Bool = true,
                lossOnPrompt: Bool = false, appendEOS: Bool = true, chatTemplate: String? = nil,
                learningRate: Double = 2e-4, schedule: String = "linear", warmupSteps: Int = 0, weightDecay: Double = 0,
                adam: AdamW.Hyperparameters = .init(), maxGradientNorm: Double? = 1, duration: Duration = .epochs(1),
                seed: UInt64 = 42, gradientCheckpointing: Bool = false,
                evaluateEvery: Int? = nil, saveEvery: Int? = nil, keepCheckpoints: Int = 2) {
        self.lora = lora
        self.loftqReference = loftqReference
        self.maxSequenceLength = maxSequenceLength
        self.batchSize = batchSize
        self.gradientAccumulation = gradientAccumulation
        self.batching = batching
        self.shuffle = shuffle
        self.lossOnPrompt = lossOnPrompt
        self.appendEOS = appendEOS
        self.chatTemplate = chatTemplate
        self.learningRate = learningRate
        self.schedule = schedule
        self.warmupSteps = warmupSteps
        self.weightDecay = weightDecay
        self.adam = adam
        self.maxGradientNorm = maxGradientNorm
        self.duration = duration
        self.seed = seed
        self.gradientCheckpointing = gradientCheckpointing
        self.evaluateEvery = evaluateEvery
        self.saveEvery = saveEvery
        self.keepCheckpoints = keepCheckpoints
    }

    /// Checks every setting on its own.
    /// - Throws: `TrainerError.invalidSetting` naming the first bad one.
    public func validate() throws {
        func bad(_ name: String, _ value: Any, _ rule: String) -> TrainerError { .invalidSetting(name, "\(value)", rule) }
        guard lora.rank >= 1 else { throw bad("rank", lora.rank, "must be at least 1") }
        guard lora.alpha.isFinite, lora.alpha > 0 else { throw bad("alpha", lora.alpha, "must be positive") }
        guard (0..<1).contains(lora.dropout) else { throw bad("LoRA dropout", lora.dropout, "must be in [0, 1)") }
        guard !lora.targetModules.isEmpty else { throw bad("targets", "none", "name at least one module") }
        guard maxSequenceLength >= 2 else { throw bad("maximum sequence length", maxSequenceLength, "must be at least 2") }
        guard batchSize >= 1 else { throw bad("batch size", batchSize, "must be at least 1") }
        guard gradientAccumulation >= 1 else { throw bad("gradient accumulation", gradientAccumulation, "must be at least 1") }
        guard learningRate.isFinite, learningRate > 0 else { throw bad("learning rate", learningRate, "must be positive") }
        guard LearningRateSchedule.names.contains(schedule) else {
            throw bad("schedule", schedule, "must be one of \(LearningRateSchedule.names.joined(separator: ", "))")
        }
        guard warmupSteps >= 0 else { throw bad("warm-up steps", warmupSteps, "must not be negative") }
        guard (0...1).contains(weightDecay) else { throw bad("weight decay", weightDecay, "must be in [0, 1]") }
        if let norm = maxGradientNorm { guard norm.isFinite, norm > 0 else { throw bad("maximum gradient norm", norm, "must be positive") } }
        switch duration {
        case let .steps(n): guard n >= 1 else { throw bad("steps", n, "must be at least 1") }
        case let .epochs(e): guard e.isFinite, e > 0 else { throw bad("epochs", e, "must be positive") }
        }
        if let n = evaluateEvery { guard n >= 1 else { throw bad("evaluation interval", n, "must be at least 1") } }
        if let n = saveEvery { guard n >= 1 else { throw bad("checkpoint interval", n, "must be at least 1") } }
        guard keepCheckpoints >= 1 else { throw bad("checkpoints kept", keepCheckpoints, "must be at least 1") }
    }

    /// The settings in which `other` (a checkpoint's) differs from these in a way that
    /// changes the trajectory; evaluation, checkpoint interval and retention may differ.
    public func trajectoryDifferences(from other: TrainingConfiguration) -> [String] {
        var a = self, b = other
        for c in [\TrainingConfiguration.evaluateEvery, \.saveEvery] as [WritableKeyPath<TrainingConfiguration, Int?>] {
            a[keyPath: c] = nil
            b[keyPath: c] = nil
        }
        a.keepCheckpoints = 0
        b.keepCheckpoints = 0
        a.loftqReference = nil
        b.loftqReference = nil
        guard a != b else { return [] }
        // Name the fields through their JSON encoding, so every field is covered.
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        guard let x = try? JSONSerialization.jsonObject(with: encoder.encode(a)) as? [String: Any],
              let y = try? JSONSerialization.jsonObject(with: encoder.encode(b)) as? [String: Any] else { return ["(unreadable)"] }
        func text(_ value: Any?) -> Data? { try? JSONSerialization.data(withJSONObject: [value ?? NSNull()], options: .sortedKeys) }
        return Set(x.keys).union(y.keys).sorted().filter { text(x[$0]) != text(y[$0]) }
    }
}
