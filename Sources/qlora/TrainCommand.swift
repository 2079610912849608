import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora train --model PATH --data DIR --output DIR ...`: LoRA adapters on a
/// packed base (QLoRA) or an fp32 Hugging Face folder (LoRA), with a progress
/// line on a terminal and a summary at the end. Thin over `Trainer`.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a LoRA adapter on a packed checkpoint (QLoRA) or a Hugging Face folder (fp32 LoRA).",
        discussion: """
            DATA is a folder with train.jsonl and optionally valid.jsonl (or one .jsonl file); each line is \
            {"text": …}, {"prompt": …, "completion": …} or {"messages": […]}. OUTPUT receives the adapter \
            (adapter_config.json, adapter_model.safetensors, PEFT format), metrics.jsonl, loss.svg and \
            checkpoints/ (formats/training-outputs.md).
            """
    )

    @Option(help: "A packed checkpoint (from `qlora quantize`: QLoRA) or a Hugging Face model folder (fp32 LoRA).")
    var model: String

    @Option(help: "The dataset: a folder with train.jsonl and optional valid.jsonl, or one .jsonl file.")
    var data: String

    @Option(name: .shortAndLong, help: "Where the adapter, metrics, loss curve and checkpoints go.")
    var output: String

    @OptionGroup var settings: TrainingOptions

    @Option(name: .customLong("max-memory"), help: "Refuse to start when the memory estimate exceeds this (e.g. 2G, 512M, 1.5GiB). The estimate covers the model and training buffers; the process itself adds a few tens of MB.")
    var maxMemory: String?

    @Flag(help: "Continue from the newest checkpoint in OUTPUT, with the same settings.")
    var resume = false

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        if let maxMemory, MemorySize.parse(maxMemory) == nil {
            throw ValidationError("--max-memory \(maxMemory) is not a size (examples: 2G, 512M, 1.5GiB, 1000000000)")
        }
        _ = try settings.configuration()
    }

    func run() throws {
        try compute.apply()
        let loaded = try LoadedModel(contentsOf: URL(fileURLWithPath: model))
        let tokenizer = try loaded.tokenizer()
        // --chat-template reaches the trainer in the configuration, which takes precedence over the model's own.
        let trainer = try loaded.withChatTemplate { template in
            try Trainer(model: loaded.model, tokenizer: tokenizer, dataset: URL(fileURLWithPath: data),
                        output: URL(fileURLWithPath: output), configuration: try settings.configuration(),
                        chatTemplate: template, baseModelName: loaded.url.lastPathComponent,
                        memoryLimit: maxMemory.flatMap(MemorySize.parse))
        }
        let reporter = TrainingReporter()
        reporter.describe(trainer, model: loaded)
        let summary = try reporter.run(trainer, resume: resume, interruptible: true)
        reporter.conclude(summary)
    }
}

/// The training settings of `train`.
struct TrainingOptions: ParsableArguments {
    @Option(help: "LoRA rank r.")
    var rank = 8

    @Option(help: "LoRA alpha; the update is scaled by alpha/r (alpha/√r with --rslora).")
    var alpha: Float = 16

    @Flag(help: "Scale by alpha/√r (rsLoRA).")
    var rslora = false

    @Option(help: "LoRA dropout on the adapter input, in [0, 1).")
    var dropout: Float = 0

    @OptionGroup var adapted: AdaptedModules

    @Option(help: "Initialization of A: peft (kaiming-uniform) or gaussian. B starts at zero.")
    var initialization = "peft"

    @Option(name: .customLong("loftq-reference"),
            help: "QLoRA only: the Hugging Face folder the packed model was quantized from. The adapters then start from LoftQ's rank-r approximation of the quantization error (W − Q(W)) instead of B = 0.")
    var loftqReference: String?

    @Option(name: .customLong("learning-rate"), help: "Peak learning rate.")
    var learningRate = 2e-4

    @Option(help: "Learning-rate schedule: constant, constant-with-warmup, linear or cosine.")
    var schedule = "linear"

    @Option(help: "Warm-up steps (the learning rate rises linearly from 0).")
    var warmup = 0

    @Option(name: .customLong("weight-decay"), help: "AdamW's decoupled weight decay.")
    var weightDecay = 0.0

    @Option(name: .customLong("max-grad-norm"), help: "Clip the global gradient norm to this; 0 turns clipping off.")
    var maxGradNorm = 1.0

    @Option(name: .customLong("batch-size"), help: "Examples per micro-batch (rows, with --packing).")
    var batchSize = 4

    @Option(name: .customLong("grad-accum"), help: "Micro-batches per optimizer step.")
    var gradAccum = 1

    @Option(name: .customLong("max-seq-len"), help: "Longer examples are truncated; the row length with --packing.")
    var maxSeqLen = 1024

    @Flag(help: "Pack several examples into each row (attention stays within each example) instead of padding.")
    var packing = false

    @Option(help: "Optimizer steps to train (instead of --epochs).")
    var steps: Int?

    @Option(help: "Passes over the training set (fractions allowed); the default is 1.")
    var epochs: Double?

    @Flag(name: .customLong("grad-checkpoint"), help: "Keep only each layer's input and recompute the rest in backward: less memory, about a third more compute.")
    var gradCheckpoint = false

    @Option(help: "Seed of the data order, the initialization and dropout.")
    var seed: UInt64 = 42

    @Option(name: .customLong("eval-every"), help: "Validation loss every N steps (default: ten times per run).")
    var evalEvery: Int?

    @Option(name: .customLong("save-every"), help: "A checkpoint every N steps (default: ten per run).")
    var saveEvery: Int?

    @Option(name: .customLong("keep-checkpoints"), help: "How many of the newest checkpoints to keep.")
    var keepCheckpoints = 2

    @OptionGroup var chatTemplate: ChatTemplateOption

    @Flag(name: .customLong("loss-on-prompt"), help: "Train on prompts and user turns too, not only on completions and assistant turns.")
    var lossOnPrompt = false

    @Flag(name: .customLong("no-eos"), help: "Do not append the tokenizer's end-of-sequence token to texts and completions.")
    var noEOS = false

    /// The settings as the library takes them.
    /// - Throws: `ValidationError` for a malformed or out-of-range option.
    func configuration() throws -> TrainingConfiguration {
        if steps != nil && epochs != nil { throw ValidationError("give --steps or --epochs, not both") }
        guard let initialization = LoRAConfiguration.Initialization(rawValue: initialization) else {
            throw ValidationError("--initialization must be peft or gaussian, not \(self.initialization)")
        }
        let lora = LoRAConfiguration(rank: rank, alpha: alpha, targetModules: try adapted.modules(), useRSLoRA: rslora,
                                     dropout: dropout, layers: try adapted.layerList(), initialization: initialization)
        let configuration = TrainingConfiguration(
            lora: lora, loftqReference: loftqReference, maxSequenceLength: maxSeqLen, batchSize: batchSize, gradientAccumulation: gradAccum,
            batching: packing ? .packed : .padded, lossOnPrompt: lossOnPrompt, appendEOS: !noEOS, chatTemplate: chatTemplate.name,
            learningRate: learningRate, schedule: schedule, warmupSteps: warmup, weightDecay: weightDecay,
            maxGradientNorm: maxGradNorm > 0 ? maxGradNorm : nil,
            duration: steps.map { .steps($0) } ?? .epochs(epochs ?? 1), seed: seed, gradientCheckpointing: gradCheckpoint,
            evaluateEvery: evalEvery, saveEvery: saveEvery, keepCheckpoints: keepCheckpoints)
        do {
            try configuration.validate()
        } catch {
            throw ValidationError(error.localizedDescription)
        }
        return configuration
    }
}

/// Sizes like 2G, 512M, 1.5GiB or a plain byte count. K/M/G/T are powers of 1024
/// (memory, as `free` and the estimate print it); a trailing "B" or "iB" is optional.
enum MemorySize {
    static func parse(_ text: String) -> Int? {
        var s = text.trimmingCharacters(in: .whitespaces).uppercased()
        for suffix in ["IB", "B"] where s.hasSuffix(suffix) && s.count > suffix.count {
            s.removeLast(suffix.count)
            break
        }
        let units: [Character: Double] = ["K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024, "T": 1024 * 1024 * 1024 * 1024]
        var multiplier = 1.0
        if let last = s.last, let unit = units[last] {
            multiplier = unit
            s.removeLast()
        }
        guard let value = Double(s), value.isFinite, value > 0, value * multiplier < Double(Int.max) else { return nil }
        return Int(value * multiplier)
    }
}
