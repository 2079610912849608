// The training loop: LoRA adapters on a frozen base (packed = QLoRA, fp32 = LoRA),
// trained on a JSONL dataset folder, with everything a run writes in one output folder:
//
//   <output>/adapter_config.json, adapter_model.safetensors   the final adapter (PEFT format)
//   <output>/metrics.jsonl                                     one line per step (formats/training-outputs.md)
//   <output>/loss.svg                                          the loss curves, drawn at the end
//   <output>/checkpoints/checkpoint-<step>/                    resumable checkpoints
//
// Determinism: every random number comes from the seed — the adapters' initialization
// and each micro-batch's dropout seed from one Xoshiro256 saved in every checkpoint,
// the data order from BatchLoader's own streams — and the kernels sum in an order
// fixed by the thread count. A run resumed from a checkpoint therefore reproduces the
// uninterrupted run's losses bit for bit, on the same machine and thread count (saved in
// each checkpoint; resuming on another count is allowed and reported).

import Foundation
import Synchronization
import QLoRACompute
import QLoRAModel
import QLoRAStorage
import QLoRATraining
import QLoRAPlot

/// Something the trainer reports while it runs.
public enum TrainingEvent: Sendable {
    /// Training is about to take step `firstStep + 1` of `totalSteps` (`firstStep` > 0 when resumed).
    case started(firstStep: Int, totalSteps: Int)
    /// The adapters start from LoftQ's approximation of the quantization error
    /// (`TrainingConfiguration.loftqReference`), before the first validation.
    case loftqInitialized(LoftQReport)
    case stepFinished(StepReport)
    /// The validation loss after `step` steps (0 = before training).
    case evaluated(step: Int, loss: Double)
    case checkpointSaved(step: Int, URL)
    /// Resuming on another thread count than the checkpoint was made with:
    /// the run goes on, but its losses leave the uninterrupted run's in the last bits.
    case resumedOnOtherThreads(saved: Int, now: Int)
}

/// One finished optimizer step.
public struct StepReport: Sendable {
    public var step: Int
    public var totalSteps: Int
    /// Epochs completed, with the fraction of the current one.
    public var epoch: Double
    public var result: StepResult
    public var seconds: Double
    public var tokensPerSecond: Double
    public var memory: ResidentMemory
}

/// A request to stop a run after its current step, safe to make from any thread
/// (a SIGINT handler, say); the run checkpoints that step and returns.
public final class TrainingInterruption: Sendable {
    private let requested = Atomic<Bool>(false)

    public init() {}

    public func request() { requested.store(true, ordering: .relaxed) }

    public var isRequested: Bool { requested.load(ordering: .relaxed) }
}

/// What a run did, for the closing summary.
public struct TrainingSummary: Sendable {
    /// Steps completed at the end of this run, and where it started (0, or the resumed checkpoint's step).
    public var step: Int
    public var firstStep: Int
    public var totalSteps: Int
    /// Whether training reached `totalSteps` (and wrote the final adapter).
    public var finished: Bool
    /// Whether an interruption ended the run early (after checkpointing its last step).
    public var interrupted = false
    /// Mean training loss of the last step.
    public var trainLoss: Double?
    /// Validation losses before the first step of this run and after its last, when there is a validation set.
    public var initialValidLoss: Double?
    public var finalValidLoss: Double?
    /// Tokens trained on in this run and the seconds the steps took (evaluation and saving excluded).
    public var tokens: Int
    public var trainingSeconds: Double
    public var peakResidentBytes: Int?
    public var adapterDirectory: URL?
    public var metrics: URL
    public var lossChart: URL?
    public var lastCheckpoint: URL?

    public var tokensPerSecond: Double { trainingSeconds > 0 ? Double(tokens) / trainingSeconds : 0 }
}

/// Trains LoRA adapters on a model; see the file comment for what it writes.
public final class Trainer {
    public static let metricsFileName = "metrics.jsonl"
    public static let chartFileName = "loss.svg"
    public static let checkpointsFolderName = "checkpoints"
    /// The stream of the run's seed that initializes adapters and seeds dropout
    /// (BatchLoader uses streams 0, 1, … for the epochs' orders).
    static let randomStream: UInt64 = 0x4C6F_5241_5472_6E72

    public let model: LlamaModel
    public let configuration: TrainingConfiguration
    public let data: TrainingData
    public let output: URL
    public let totalSteps: Int
    /// The memory this run is expected to need.
    public let memoryEstimate: MemoryEstimate
    private let baseModelName: String?
    private let schedule: LearningRateSchedule
    private var loader: BatchLoader
    private let validLoader: BatchLoader?

    /// Prepares a run: checks the settings, tokenizes the data, works out the step
    /// count and the memory estimate. Nothing is written and the model is not touched yet.
    /// - Parameters:
    ///   - model: the frozen base; adapters are attached by `run`, replacing any it has.
    ///   - dataset: a folder with train.jsonl and optional valid.jsonl, or one .jsonl file.
    ///   - chatTemplate: the model's own template, used for chat data unless the configuration names one.
    ///   - baseModelName: recorded as base_model_name_or_path in adapter_config.json.
    ///   - memoryLimit: bytes; a run whose estimate exceeds it is refused.
    /// - Throws: `TrainerError.invalidSetting`, dataset errors naming file and line,
    ///   `MemoryLimitError` naming the settings that would fit.
    public init(model: LlamaModel, tokenizer: any TrainingTokenizer, dataset: URL, output: URL,
                configuration: TrainingConfiguration, chatTemplate: ChatTemplate? = nil, baseModelName: String? = nil,
                memoryLimit: Int? = nil) throws {
        try configuration.validate()
        self.model = model
        self.configuration = configuration
        self.output = output
        self.baseModelName = baseModelName
        data = try TrainingData(url: dataset, tokenizer: tokenizer, configuration: configuration, chatTemplate: chatTemplate,
                                vocabularySize: model.configuration.vocabularySize)
        let c = configuration
        let pad = Int32(tokenizer.eosTokenIDs.first ?? 0)
        loader = try BatchLoader(examples: data.train.examples, batchSize: c.batchSize, mode: c.batching,
                                 maxSequenceLength: c.maxSequenceLength, padTokenID: pad, seed: c.seed, shuffle: c.shuffle)
        validLoader = try data.valid.map {
            try BatchLoader(examples: $0.examples, batchSize: c.batchSize, mode: c.batching, maxSequenceLength: c.maxSequenceLength,
                            padTokenID: pad, seed: c.seed, shuffle: false)
        }
        switch c.duration {
        case let .steps(n):
            totalSteps = n
        case let .epochs(epochs):
            var batches = 0.0
            for e in 0..<Int(epochs.rounded(.up)) { batches += Double(loader.batchCount(epoch: e)) * min(1, epochs - Double(e)) }
            totalSteps = max(1, Int((batches / Double(c.gradientAccumulation)).rounded(.up)))
        }
        schedule = try LearningRateSchedule.named(c.schedule, warmupSteps: c.warmupSteps, totalSteps: totalSteps)
        let plan = Self.memoryPlan(model: model, configuration: c, sequenceLength: c.batching == .packed ? c.maxSequenceLength : data.longestExample)
        memoryEstimate = plan.estimate()
        if let memoryLimit { try plan.check(limit: memoryLimit) }
    }

    /// Steps between evaluations and between checkpoints.
    public var evaluationInterval: Int { configuration.evaluateEvery ?? max(1, totalSteps / 10) }
    public var checkpointInterval: Int { configuration.saveEvery ?? max(1, totalSteps / 10) }

    public var checkpointStore: CheckpointStore {
        CheckpointStore(directory: output.appendingPathComponent(Self.checkpointsFolderName, isDirectory: true),
                        keepLast: configuration.keepCheckpoints)
    }

    /// Trains to `totalSteps`, or until `stopAfter` steps are done, or until
    /// `interruption` is requested (checked after every step; from a signal handler,
    /// say); a run that stops early ends with a checkpoint of its last step, which
    /// `resume` continues from.
    /// - Parameters:
    ///   - resume: continue from the newest checkpoint in the output folder.
    ///   - observer: called on this thread as the run goes.
    /// - Throws: `TrainerError.diverged` at the first NaN/Inf (the checkpoints on disk are
    ///   left as they were), `TrainerError.outputInUse` / `.nothingToResume` /
    ///   `.checkpointMismatch`, file errors naming the path.
    @discardableResult
    public func run(resume: Bool = false, stopAfter: Int? = nil, interruption: TrainingInterruption? = nil,
                    observer: (TrainingEvent) -> Void = { _ in }) throws -> TrainingSummary {
        let store = checkpointStore
        let metricsURL = output.appendingPathComponent(Self.metricsFileName)
        let checkpoint: TrainingCheckpoint<TrainingConfiguration>?
        if resume {
            guard let latest = try store.latest() else { throw TrainerError.nothingToResume(output) }
            checkpoint = try store.load(latest, as: TrainingConfiguration.self)
        } else {
            try ensureUnused(store: store)
            checkpoint = nil
        }

        var random = Xoshiro256(seed: configuration.seed, stream: Self.randomStream)
        try model.attachLoRA(configuration.lora, using: &random)
        if checkpoint == nil, let folder = configuration.loftqReference {
            let source = try HFCheckpoint(directory: URL(fileURLWithPath: folder))
            observer(.loftqInitialized(try model.initializeLoRAFromReference({ try source.floats($0) }, seed: configuration.seed)))
        }
        model.gradientCheckpointing = configuration.gradientCheckpointing
        let optimizer = try AdapterOptimizer(model: model, schedule: schedule, peakLearningRate: configuration.learningRate,
                                             weightDecay: configuration.weightDecay, hyperparameters: configuration.adam,
                                             maxGradientNorm: configuration.maxGradientNorm.map(Float.init))
        var lastCheckpoint: URL?
        if let checkpoint, let url = try store.latest() {
            let differences = configuration.trajectoryDifferences(from: checkpoint.configuration)
            guard differences.isEmpty else {
                throw TrainerError.checkpointMismatch(url, "it was trained with other settings (\(differences.joined(separator: ", "))); resume with the same ones")
            }
            try optimizer.restore(parameters: checkpoint.parameters, layout: checkpoint.layout, optimizer: checkpoint.optimizer, from: url)
            do {
                try loader.restore(checkpoint.dataCursor)
            } catch let error as BatchLoaderError {
                throw TrainerError.checkpointMismatch(url, error.localizedDescription)
            }
            random = checkpoint.random
            lastCheckpoint = url
            if let saved = checkpoint.threads, saved != ComputePool.shared.threadCount {
                observer(.resumedOnOtherThreads(saved: saved, now: ComputePool.shared.threadCount))
            }
        }
        let firstStep = checkpoint?.step ?? 0
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        let metrics = try MetricsWriter(url: metricsURL, resumingAfter: checkpoint?.step)
        let end = min(totalSteps, stopAfter ?? totalSteps)
        reserveWorkspace()
        observer(.started(firstStep: firstStep, totalSteps: totalSteps))

        var summary = TrainingSummary(step: firstStep, firstStep: firstStep, totalSteps: totalSteps, finished: false,
                                      tokens: 0, trainingSeconds: 0, metrics: metricsURL, lastCheckpoint: lastCheckpoint)
        if let validLoader {
            let loss = try optimizer.validationLoss(validLoader.batches(epoch: 0))
            summary.initialValidLoss = loss
            if checkpoint == nil { try metrics.append(MetricsRecord(step: 0, validLoss: loss)) }
            observer(.evaluated(step: firstStep, loss: loss))
        }
        let accumulation = try GradientAccumulation(microBatches: configuration.gradientAccumulation)
        var step = firstStep
        while step < end {
            let started = DispatchTime.now().uptimeNanoseconds
            let micro = accumulation.nextStep(from: &loader)
            let seeds = micro.batches.map { _ in random.next() }
            let result: StepResult
            do {
                result = try optimizer.step(micro.batches, dropoutSeeds: seeds)
            } catch let error as NonFiniteError {
                throw TrainerError.diverged(error, lastCheckpoint: lastCheckpoint)
            }
            step += 1
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            summary.tokens += result.tokens
            summary.trainingSeconds += seconds
            summary.trainLoss = result.loss
            let memory = ResidentMemory.sample()
            var record = MetricsRecord(step: step, epoch: loader.progress, loss: result.loss, learningRate: result.learningRate,
                                       gradientNorm: Double(result.gradientNorm), tokensPerSecond: Double(result.tokens) / seconds,
                                       residentBytes: memory.current, peakResidentBytes: memory.peak)
            observer(.stepFinished(StepReport(step: step, totalSteps: totalSteps, epoch: loader.progress, result: result,
                                              seconds: seconds, tokensPerSecond: Double(result.tokens) / seconds, memory: memory)))
            if let validLoader, step % evaluationInterval == 0 || step == end {
                let loss = try optimizer.validationLoss(validLoader.batches(epoch: 0))
                record.validLoss = loss
                summary.finalValidLoss = loss
                observer(.evaluated(step: step, loss: loss))
            }
            try metrics.append(record)
            let interrupted = step < end && interruption?.isRequested == true
            if step % checkpointInterval == 0 || step == end || interrupted {
                lastCheckpoint = try store.save(makeCheckpoint(step: step, optimizer: optimizer, random: random))
                summary.lastCheckpoint = lastCheckpoint
                observer(.checkpointSaved(step: step, lastCheckpoint!))
            }
            if interrupted {
                summary.interrupted = true
                break
            }
        }
        summary.step = step
        summary.peakResidentBytes = ResidentMemory.sample().peak
        if step == totalSteps {
            try model.saveLoRA(directory: output, baseModel: baseModelName)
            summary.adapterDirectory = output
            summary.finished = true
        }
        summary.lossChart = try drawLossCurves(from: metricsURL)
        return summary
    }

    // MARK: - Private

    /// Refuses an output folder that already holds a run's files.
    private func ensureUnused(store: CheckpointStore) throws {
        var found: [String] = []
        if try !store.checkpoints().isEmpty { found.append(Self.checkpointsFolderName + "/") }
        for name in [Self.metricsFileName, "adapter_model.safetensors", "adapter_config.json"]
        where FileManager.default.fileExists(atPath: output.appendingPathComponent(name).path) {
            found.append(name)
        }
        guard found.isEmpty else { throw TrainerError.outputInUse(output, found) }
    }

    private func makeCheckpoint(step: Int, optimizer: AdapterOptimizer, random: Xoshiro256) throws -> TrainingCheckpoint<TrainingConfiguration> {
        TrainingCheckpoint(step: step, layout: optimizer.layout, parameters: optimizer.parameters.values.array(),
                           optimizer: optimizer.adam, random: random, dataCursor: loader.cursor, configuration: configuration,
                           extraFiles: ["adapter_config.json": try model.loraConfigurationJSON(baseModel: baseModelName)],
                           threads: ComputePool.shared.threadCount)
    }

    /// Sizes the model's buffers for the largest batch up front, so memory does not
    /// grow in steps as longer batches come and the peak is reached at once.
    private func reserveWorkspace() {
        let c = configuration
        let length = c.batching == .packed ? c.maxSequenceLength : min(c.maxSequenceLength, data.longestExample)
        model.reserve(batch: c.batchSize, length: length)
    }

    /// loss.svg from every line of the metrics log (so a resumed run's chart is whole).
    private func drawLossCurves(from url: URL) throws -> URL? {
        let records = try MetricsLog.read(url)
        let train = records.compactMap { r in r.loss.map { (step: r.step, loss: $0) } }.filter { $0.loss.isFinite }
        let valid = records.compactMap { r in r.validLoss.map { (step: r.step, loss: $0) } }.filter { $0.loss.isFinite }
        guard !train.isEmpty || !valid.isEmpty else { return nil }
        let chartURL = output.appendingPathComponent(Self.chartFileName)
        try Chart.lossCurves(train: train, valid: valid).write(to: chartURL)
        return chartURL
    }

    /// The memory plan of a run: the model's actual base bytes, the configured adapters
    /// and batches of `sequenceLength` tokens.
    public static func memoryPlan(model: LlamaModel, configuration c: TrainingConfiguration, sequenceLength: Int) -> TrainingMemoryPlan {
        let baseBytes = model.layers.flatMap(\.projections).reduce(0) { total, p in
            total + ((p.base as? PackedLinear)?.packedBytes ?? 4 * p.inFeatures * p.outFeatures)
        }
        let kinds: [String: LlamaTensor.Kind] = ["q_proj": .qProj, "k_proj": .kProj, "v_proj": .vProj, "o_proj": .oProj,
                                                 "gate_proj": .gateProj, "up_proj": .upProj, "down_proj": .downProj]
        return TrainingMemoryPlan(configuration: model.configuration, base: .bytes(baseBytes), batchSize: c.batchSize,
                                  sequenceLength: sequenceLength, loraRank: c.lora.rank,
                                  loraTargets: c.lora.targetModules.compactMap { kinds[$0] }, loraLayers: c.lora.layers,
                                  loraDropout: c.lora.dropout > 0,
                                  gradientCheckpointing: c.gradientCheckpointing, threads: ComputePool.shared.threadCount)
    }
}
