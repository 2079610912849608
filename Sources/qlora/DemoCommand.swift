import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora demo`: the whole pipeline on the model that ships inside the package,
/// in about a minute, with no download: quantize stories260K to NF4 with double
/// quantization, verify the packed file, measure the base model on its
/// fine-tuning task (end each story with "The moral of the story is that
/// {name} learned to share and be kind."), train a QLoRA adapter on the packed
/// base, and measure again.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Quantize, inspect and QLoRA-fine-tune the embedded stories260K model, before and after.",
        discussion: """
            Everything is written to the work folder (default ./qlora-demo): the packed model, the adapter \
            (PEFT format), metrics.jsonl, loss.svg and checkpoints. A folder that holds anything else is refused.
            """
    )

    @Option(name: .shortAndLong, help: "The work folder.")
    var output = "qlora-demo"

    @Option(help: "Optimizer steps (batch 8).")
    var steps = 200

    @Option(name: .customLong("learning-rate"), help: "Peak learning rate (cosine schedule, 10 warm-up steps).")
    var learningRate = 5e-4

    @Option(help: "LoRA rank (alpha is twice the rank), on every projection.")
    var rank = 8

    @Option(help: "LoRA dropout on the adapters' input.")
    var dropout: Float = 0

    static let marker = ".qlora-demo"
    static let packedName = "stories260K-nf4.qlora"
    static let adapterFolder = "adapter"

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        guard steps >= 1, rank >= 1, learningRate > 0, (0..<1).contains(dropout) else {
            throw ValidationError("--steps and --rank must be at least 1, --learning-rate positive, --dropout in [0, 1)")
        }
    }

    func run() throws {
        try compute.apply()
        let work = URL(fileURLWithPath: output, isDirectory: true)
        try prepare(work)
        let packedURL = work.appendingPathComponent(Self.packedName), adapterURL = work.appendingPathComponent(Self.adapterFolder)
        let reporter = TrainingReporter()
        let say = reporter.line.print
        reporter.indent = "   "
        say("qlora demo: QLoRA fine-tuning of the embedded stories260K model (\(ComputePool.shared.threadCount) threads), in \(work.path)\n")

        say("1. Quantize the base to NF4, blocks of 64, double-quantized scales (QLoRA's format)")
        let spec = QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)
        let summary = try Quantizer.quantize(modelDirectory: EmbeddedModel.directory, output: packedURL,
                                             options: QuantizeOptions(spec: spec, threads: ComputePool.shared.threadCount))
        say(Self.indent(QuantizeCommand.text(summary)))

        say("\n2. Inspect and verify the packed file")
        let report = try PackedCheckpoint(url: packedURL).report(verify: true)
        let quantized = report.tensors.filter { $0.blockSize != nil }.count
        say("   \(report.tensors.count) tensors (\(quantized) packed, \(report.tensors.count - quantized) kept in fp32) and "
            + "\(report.files.count) embedded files (\(report.files.map(\.name).joined(separator: ", "))); "
            + (report.checksumFailures.isEmpty ? "every checksum matches" : "CHECKSUM MISMATCH: \(report.checksumFailures.joined(separator: ", "))"))
        guard report.checksumFailures.isEmpty else { throw ValidationFailure("\(packedURL.path) is damaged") }

        let loaded = try LoadedModel(contentsOf: packedURL)
        let tokenizer = try loaded.tokenizer()
        let valid = try JSONLines.read(EmbeddedModel.directory.appendingPathComponent(DatasetFiles.validFileName)).compactMap { record -> (String, String)? in
            if case let .promptCompletion(prompt, completion) = record.content { return (prompt, completion) }
            return nil
        }
        let probe = Completions(model: loaded.model, tokenizer: tokenizer, examples: valid)

        let configuration = TrainingConfiguration(
            // No EOS after the moral: llama2.c never trained stories260K's </s>, whose tied
            // embedding row LoRA on the projections cannot make likely.
            lora: LoRAConfiguration(rank: rank, alpha: Float(2 * rank), dropout: dropout), maxSequenceLength: 512, batchSize: 8, appendEOS: false,
            learningRate: learningRate, schedule: "cosine", warmupSteps: min(10, steps / 10), duration: .steps(steps),
            evaluateEvery: max(1, steps / 5), saveEvery: max(1, steps / 5))
        let trainer = try Trainer(model: loaded.model, tokenizer: tokenizer, dataset: EmbeddedModel.directory, output: adapterURL,
                                  configuration: configuration, baseModelName: Self.packedName)

        say("\n3. Before training: the packed base model on the validation stories")
        let before = try probe.measure()
        say(probe.describe(before))

        say("\n4. Train a QLoRA adapter: LoRA r=\(rank), alpha \(2 * rank), on all seven projections of every layer, over the packed base")
        reporter.describe(trainer, model: loaded)
        let result = try reporter.run(trainer)
        reporter.conclude(result)

        say("\n5. After training")
        let after = try probe.measure()
        say(probe.describe(after))
        if let a = result.initialValidLoss, let b = result.finalValidLoss {
            say(String(format: "   validation loss %.4f → %.4f; completions right %d → %d of %d (stories with names never seen in training: %d → %d of %d)",
                       a, b, before.exact, after.exact, valid.count, before.exactUnseen, after.exactUnseen, probe.unseen.count))
        }

        say("\n6. Written to \(work.path)")
        say("   packed base:  \(packedURL.path)")
        say("   adapter:      \(adapterURL.path)/adapter_model.safetensors + adapter_config.json (PEFT format)")
        say("   metrics:      \(result.metrics.path)")
        if let chart = result.lossChart { say("   loss curves:  \(chart.path)") }
        say("   try it:       qlora generate --model \(packedURL.path) --adapter \(adapterURL.path) --temperature 0 --prompt \"Once upon a time, there was a little dog named Rex.\"")
    }

    /// Creates the work folder, or clears what an earlier demo wrote there; refuses a
    /// folder holding anything else.
    private func prepare(_ work: URL) throws {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: work.path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw ValidationFailure("\(work.path) exists and is not a folder; choose another --output") }
            let names = try fm.contentsOfDirectory(atPath: work.path)
            let ours = [Self.marker, Self.packedName, Self.adapterFolder]
            let others = names.filter { !ours.contains($0) }
            guard others.isEmpty, names.isEmpty || names.contains(Self.marker) else {
                throw ValidationFailure("\(work.path) holds files qlora demo did not write (\((others.isEmpty ? names : others).sorted().prefix(5).joined(separator: ", "))); choose another --output or empty it")
            }
            for name in [Self.packedName, Self.adapterFolder] where names.contains(name) {
                try fm.removeItem(at: work.appendingPathComponent(name))
            }
        }
        try fm.createDirectory(at: work, withIntermediateDirectories: true)
        try Data("written by qlora demo; it clears this folder's demo files when run again\n".utf8)
            .write(to: work.appendingPathComponent(Self.marker))
    }

    static func indent(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).map { "   " + $0 }.joined(separator: "\n")
    }
}

/// Greedy completions of the validation stories: how many end with exactly the
/// expected moral, and one sample to show.
private struct Completions {
    let model: LlamaModel
    let tokenizer: Tokenizer
    let examples: [(prompt: String, completion: String)]
    /// Indices of stories whose character name the training set never uses.
    let unseen: [Int]

    init(model: LlamaModel, tokenizer: Tokenizer, examples: [(String, String)]) {
        self.model = model
        self.tokenizer = tokenizer
        let examples = examples.map { (prompt: $0.0, completion: $0.1) }
        self.examples = examples
        let trainNames = (try? JSONLines.read(EmbeddedModel.directory.appendingPathComponent(DatasetFiles.trainFileName)))?
            .compactMap { record -> String? in
                if case let .promptCompletion(_, completion) = record.content { return Self.name(in: completion) }
                return nil
            } ?? []
        unseen = examples.indices.filter { Self.name(in: examples[$0].completion).map { !trainNames.contains($0) } ?? false }
    }

    struct Measurement {
        var exact = 0
        var exactUnseen = 0
        /// Greedy continuations of the stories `shown`.
        var samples: [Int: String] = [:]
    }

    /// The stories shown: the first whose name the training set uses, the first whose name it does not.
    var shown: [Int] { [examples.indices.first { !unseen.contains($0) }, unseen.first].compactMap { $0 } }

    /// Greedy continuations as long as each expected completion (in tokens): a
    /// story counts when its continuation is exactly the expected moral.
    func measure() throws -> Measurement {
        var m = Measurement()
        for (i, example) in examples.enumerated() {
            let prompt = tokenizer.encode(example.prompt).map(Int32.init)
            let whole = tokenizer.encode(example.prompt + example.completion).count
            let ids = try model.generateGreedy(prompt: prompt, count: max(1, whole - prompt.count))
            let text = tokenizer.decode(ids.map(Int.init))
            if shown.contains(i) { m.samples[i] = text }
            if text.trimmingCharacters(in: .whitespacesAndNewlines) == example.completion.trimmingCharacters(in: .whitespacesAndNewlines) {
                m.exact += 1
                if unseen.contains(i) { m.exactUnseen += 1 }
            }
        }
        return m
    }

    func describe(_ m: Measurement) -> String {
        var lines: [String] = []
        for i in shown {
            let story = examples[i].prompt.replacingOccurrences(of: "\n", with: " ")
            let seen = unseen.contains(i) ? "a name the training stories never use" : "a name the training stories use"
            lines.append("   validation story \(i + 1), \(seen): \"\(story.prefix(56))… \(story.suffix(56))\"")
            lines.append("     greedy continuation: \(Self.quoted(m.samples[i] ?? ""))")
            lines.append("     expected:            \(Self.quoted(examples[i].completion))")
        }
        lines.append("   greedy continuations equal to the expected moral: \(m.exact) of \(examples.count) stories "
                     + "(\(m.exactUnseen) of the \(unseen.count) with names the training stories never use)")
        return lines.joined(separator: "\n")
    }

    static func quoted(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\n", with: "\\n") + "\"" }

    /// The name in "… the story is that {name} learned …".
    static func name(in completion: String) -> String? {
        guard let a = completion.range(of: "is that "), let b = completion.range(of: " learned") else { return nil }
        return String(completion[a.upperBound..<b.lowerBound])
    }
}
