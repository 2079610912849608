import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Runs of the trainer on the embedded stories260K model with a small dataset in
/// its fine-tuning task (short stories, then a fixed moral naming the character).
enum Run {
    static let names = ["Lily", "Tom", "Ben", "Mia", "Sue", "Tim", "Max", "Anna", "Sam", "Lucy", "Jack", "Emma", "Leo", "Zoe", "Pip", "Nora"]

    /// A dataset folder: 12 prompt/completion records in train.jsonl, 4 in valid.jsonl.
    static func dataset(in folder: TemporaryDirectory) throws -> URL {
        let url = folder.appending("data")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        func line(_ name: String, _ i: Int) -> String {
            let kinds = ["cat", "dog", "girl", "boy"]
            let record = ["prompt": "Once upon a time, there was a little \(kinds[i % 4]) named \(name). \(name) liked to play in the park.",
                          "completion": "\nThe moral of the story is that \(name) learned to share and be kind."]
            return String(decoding: try! JSONSerialization.data(withJSONObject: record, options: .sortedKeys), as: UTF8.self)
        }
        let lines = names.enumerated().map { line($1, $0) }
        try (lines[..<12].joined(separator: "\n") + "\n").write(to: url.appendingPathComponent("train.jsonl"), atomically: true, encoding: .utf8)
        try (lines[12...].joined(separator: "\n") + "\n").write(to: url.appendingPathComponent("valid.jsonl"), atomically: true, encoding: .utf8)
        return url
    }

    static let tokenizer = try! Tokenizer(directory: EmbeddedModel.directory)

    /// The embedded model in fp32, or packed NF4/64/double quant (QLoRA).
    static func model(packed: Bool) throws -> LlamaModel {
        guard packed else { return try LlamaModel(directory: EmbeddedModel.directory) }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("trainer-\(UUID().uuidString).qlora")
        defer { try? FileManager.default.removeItem(at: url) }
        _ = try Quantizer.quantize(modelDirectory: EmbeddedModel.directory, output: url,
                                   options: QuantizeOptions(spec: QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)))
        return try LlamaModel(packed: PackedCheckpoint(url: url))
    }

    static func configuration(steps: Int = 6, _ change: (inout TrainingConfiguration) -> Void = { _ in }) -> TrainingConfiguration {
        var c = TrainingConfiguration(lora: LoRAConfiguration(rank: 4, alpha: 8), maxSequenceLength: 64, batchSize: 2,
                                      learningRate: 2e-3, duration: .steps(steps), evaluateEvery: 2, saveEvery: 3)
        change(&c)
        return c
    }

    static func trainer(_ model: LlamaModel, data: URL, output: URL, _ configuration: TrainingConfiguration,
                        memoryLimit: Int? = nil) throws -> Trainer {
        try Trainer(model: model, tokenizer: tokenizer, dataset: data, output: output, configuration: configuration,
                    baseModelName: "stories260K", memoryLimit: memoryLimit)
    }
}

/// A frozen linear that turns NaN at its `poisonedCall`-th forward (or backward).
final class PoisonedLinear: FrozenLinear, @unchecked Sendable {
    let base: any FrozenLinear
    let poisonedCall: Int
    let inBackward: Bool
    private var calls = 0

    init(_ base: any FrozenLinear, poisonedCall: Int, inBackward: Bool) {
        self.base = base
        self.poisonedCall = poisonedCall
        self.inBackward = inBackward
    }

    var inFeatures: Int { base.inFeatures }
    var outFeatures: Int { base.outFeatures }

    func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        base.forward(x, rows: n, into: y)
        if !inBackward { poisonIfDue(y) }
    }

    func backwardInput(_ dy: UnsafePointer<Float>, rows n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        base.backwardInput(dy, rows: n, into: dx, accumulate: accumulate)
        if inBackward { poisonIfDue(dx) }
    }

    private func poisonIfDue(_ values: UnsafeMutablePointer<Float>) {
        calls += 1
        if calls == poisonedCall { values[0] = .nan }
    }
}

@Suite struct TrainerTests {
    /// Stopping after 3 of 6 steps and resuming gives every later loss, gradient
    /// norm and the final adapter bit for bit as the run that never stopped.
    @Test(arguments: [false, true])
    func resumedRunReproducesTheUninterruptedOne(packed: Bool) throws {
        let folder = try TemporaryDirectory("trainer-resume")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder)
        // Padded with dropout and accumulation over an fp32 base; packed rows over a packed base.
        let configuration = Run.configuration { c in
            if packed {
                c.batching = .packed
                c.maxSequenceLength = 128 // three examples to a row
                c.schedule = "cosine"
            } else {
                c.lora.dropout = 0.1
                c.gradientAccumulation = 2
                c.warmupSteps = 1
            }
        }
        let whole = folder.appending("whole"), parts = folder.appending("parts")
        try Run.trainer(Run.model(packed: packed), data: data, output: whole, configuration).run()
        let first = try Run.trainer(Run.model(packed: packed), data: data, output: parts, configuration).run(stopAfter: 3)
        #expect(first.step == 3 && !first.finished && first.lastCheckpoint?.lastPathComponent == "checkpoint-3")
        #expect(!FileManager.default.fileExists(atPath: parts.appendingPathComponent("adapter_model.safetensors").path))
        let second = try Run.trainer(Run.model(packed: packed), data: data, output: parts, configuration).run(resume: true)
        #expect(second.firstStep == 3 && second.step == 6 && second.finished)

        let a = try MetricsLog.read(whole.appendingPathComponent(Trainer.metricsFileName)).filter { $0.loss != nil }
        let b = try MetricsLog.read(parts.appendingPathComponent(Trainer.metricsFileName)).filter { $0.loss != nil }
        #expect(a.map(\.step) == Array(1...6) && b.map(\.step) == Array(1...6))
        #expect(a.map(\.loss) == b.map(\.loss))
        #expect(a.map(\.gradientNorm) == b.map(\.gradientNorm))
        #expect(Set(a.compactMap(\.loss)).count == 6) // the losses move, so equality means something
        let adapter = "adapter_model.safetensors"
        #expect(try Data(contentsOf: whole.appendingPathComponent(adapter)) == Data(contentsOf: parts.appendingPathComponent(adapter)))
    }

    /// An interruption requested during a step (Ctrl-C in `qlora train`) ends the run
    /// after that step with its checkpoint; resuming goes on to the uninterrupted
    /// run's losses, and the resumed run's first validation is reported at its step.
    @Test func anInterruptedRunCheckpointsItsStepAndResumes() throws {
        let folder = try TemporaryDirectory("trainer-interrupt")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder)
        let configuration = Run.configuration()
        let whole = folder.appending("whole"), parts = folder.appending("parts")
        try Run.trainer(Run.model(packed: false), data: data, output: whole, configuration).run()
        let interruption = TrainingInterruption()
        let first = try Run.trainer(Run.model(packed: false), data: data, output: parts, configuration)
            .run(interruption: interruption) { event in
                if case .stepFinished(let report) = event, report.step == 2 { interruption.request() }
            }
        #expect(first.step == 2 && first.interrupted && !first.finished)
        #expect(first.lastCheckpoint?.lastPathComponent == "checkpoint-2")
        var evaluations: [Int] = []
        let second = try Run.trainer(Run.model(packed: false), data: data, output: parts, configuration)
            .run(resume: true) { event in
                if case .evaluated(let step, _) = event { evaluations.append(step) }
            }
        #expect(second.firstStep == 2 && second.finished && !second.interrupted && evaluations.first == 2)
        let a = try MetricsLog.read(whole.appendingPathComponent(Trainer.metricsFileName)).compactMap(\.loss)
        let b = try MetricsLog.read(parts.appendingPathComponent(Trainer.metricsFileName)).compactMap(\.loss)
        #expect(a == b && a.count == second.totalSteps)
    }

    /// Checkpoints record the thread count; resuming on another one goes on and says so.
    @Test func resumingOnAnotherThreadCountIsReported() throws {
        let folder = try TemporaryDirectory("trainer-threads")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder), output = folder.appending("out")
        let configuration = Run.configuration()
        try Run.trainer(Run.model(packed: false), data: data, output: output, configuration).run(stopAfter: 3)
        let state = output.appendingPathComponent("checkpoints/checkpoint-3/trainer_state.json")
        var json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: state)) as? [String: Any])
        let threads = ComputePool.shared.threadCount
        #expect(json["threads"] as? Int == threads)
        json["threads"] = threads + 1
        try JSONSerialization.data(withJSONObject: json).write(to: state)
        var reported: [(Int, Int)] = []
        let resumed = try Run.trainer(Run.model(packed: false), data: data, output: output, configuration).run(resume: true) {
            if case let .resumedOnOtherThreads(saved, now) = $0 { reported.append((saved, now)) }
        }
        #expect(resumed.finished)
        #expect(reported.count == 1 && reported.first?.0 == threads + 1 && reported.first?.1 == threads)
    }

    /// A NaN in the loss (forward) or the gradients (backward) at step 4 stops the
    /// run with the step named; checkpoint-2 stays the newest, nothing else is
    /// written, and the run resumes from it once the cause is gone.
    @Test(arguments: [false, true])
    func nonFiniteValuesStopTheRunAndKeepTheLastGoodCheckpoint(inBackward: Bool) throws {
        let folder = try TemporaryDirectory("trainer-nan")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder), output = folder.appending("out")
        let configuration = Run.configuration { $0.saveEvery = 2; $0.evaluateEvery = 100 }
        let model = try Run.model(packed: false)
        let projection = model.layers[1].valueProjection, clean = projection.base
        // One forward and one backward per step; validation adds two forwards (4 examples in 2 batches) before step 1.
        projection.base = PoisonedLinear(clean, poisonedCall: inBackward ? 4 : 6, inBackward: inBackward)
        let error = #expect(throws: TrainerError.self) {
            try Run.trainer(model, data: data, output: output, configuration).run()
        }
        guard case let .diverged(cause, last)? = error else { Issue.record("expected divergence, got \(String(describing: error))"); return }
        switch cause {
        case let .loss(step, value): #expect(!inBackward && step == 4 && value.isNaN)
        case let .gradient(step, tensor, _, value):
            #expect(inBackward && step == 4 && value.isNaN && tensor.hasPrefix("base_model.model.model.layers."))
        }
        #expect(last?.lastPathComponent == "checkpoint-2")
        #expect(error?.localizedDescription.contains("The last good checkpoint is \(last!.path)") == true)
        let store = CheckpointStore(directory: output.appendingPathComponent(Trainer.checkpointsFolderName))
        #expect(try store.checkpoints().map(\.step) == [2])
        #expect(!FileManager.default.fileExists(atPath: output.appendingPathComponent("adapter_model.safetensors").path))
        #expect(try MetricsLog.read(output.appendingPathComponent(Trainer.metricsFileName)).last?.step == 3)

        projection.base = clean
        let resumed = try Run.trainer(model, data: data, output: output, configuration).run(resume: true)
        #expect(resumed.firstStep == 2 && resumed.finished)
    }

    /// The final adapter is a PEFT folder that reproduces the trained model, the
    /// metrics cover every step, the chart is drawn and the validation loss fell.
    @Test func finishedRunWritesAPEFTAdapterMetricsAndChart() throws {
        let folder = try TemporaryDirectory("trainer-outputs")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder), output = folder.appending("out")
        let model = try Run.model(packed: false)
        let trainer = try Run.trainer(model, data: data, output: output, Run.configuration(steps: 8) { $0.learningRate = 5e-3 })
        var events: [String] = []
        let summary = try trainer.run { event in
            switch event {
            case .started: events.append("started")
            case .loftqInitialized: events.append("loftq")
            case .stepFinished: events.append("step")
            case let .evaluated(step, _): events.append("eval \(step)")
            case let .checkpointSaved(step, _): events.append("save \(step)")
            case .resumedOnOtherThreads: events.append("threads")
            }
        }
        #expect(events.filter { $0 == "step" }.count == 8)
        #expect(events.filter { $0.hasPrefix("eval") } == ["eval 0", "eval 2", "eval 4", "eval 6", "eval 8"])
        #expect(events.filter { $0.hasPrefix("save") } == ["save 3", "save 6", "save 8"])
        let before = try #require(summary.initialValidLoss), after = try #require(summary.finalValidLoss)
        #expect(after < before, "validation loss \(before) → \(after)")
        #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent(Trainer.chartFileName).path))
        let records = try MetricsLog.read(output.appendingPathComponent(Trainer.metricsFileName))
        #expect(records.map(\.step) == Array(0...8) && records[0].validLoss == before && records.last?.validLoss == after)

        let batch = TokenBatch(sequences: [Run.tokenizer.encode("Once upon a time, there was a dog named Max.").map(Int32.init)])
        try model.forward(batch)
        let trained = model.logits()
        let reloaded = try LlamaModel(directory: EmbeddedModel.directory)
        let configuration = try reloaded.loadLoRA(directory: output)
        #expect(configuration.rank == 4 && configuration.alpha == 8)
        try reloaded.forward(batch)
        #expect(reloaded.logits() == trained)
        // Checkpoints carry the same adapter as a PEFT folder too.
        let last = try #require(summary.lastCheckpoint)
        #expect(try reloaded.loadLoRA(directory: last) == configuration)
    }

    /// With a LoftQ reference, a QLoRA run starts from the adapters that
    /// approximate the quantization error: the first validation loss is
    /// closer to the fp32 model's than the packed model's is. A resumed run
    /// restores its adapters instead of initializing them again.
    @Test func loftqReferenceStartsNearTheFullPrecisionModel() throws {
        let folder = try TemporaryDirectory("trainer-loftq")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder)
        func firstValidation(packed: Bool, loftq: Bool, output: String, stopAfter: Int? = nil) throws -> (Double, [String]) {
            let configuration = Run.configuration(steps: 4) { c in
                c.lora = LoRAConfiguration(rank: 16, alpha: 32)
                c.loftqReference = loftq ? EmbeddedModel.directory.path : nil
            }
            let trainer = try Run.trainer(try Run.model(packed: packed), data: data, output: folder.appending(output), configuration)
            var events: [String] = []
            let summary = try trainer.run(stopAfter: stopAfter) { event in
                if case let .loftqInitialized(report) = event {
                    events.append("loftq \(report.modules)")
                    #expect(report.relativeErrorAfter < 0.65 * report.relativeErrorBefore)
                }
            }
            return (try #require(summary.initialValidLoss), events)
        }
        let (packed, plain) = try firstValidation(packed: true, loftq: false, output: "plain")
        let (full, _) = try firstValidation(packed: false, loftq: false, output: "full")
        let (compensated, events) = try firstValidation(packed: true, loftq: true, output: "loftq", stopAfter: 2)
        #expect(plain.isEmpty && events == ["loftq 35"])
        #expect(compensated < packed && abs(compensated - full) < abs(packed - full),
                "validation loss: packed \(packed), LoftQ \(compensated), fp32 \(full)")
        let resumed = try Run.trainer(try Run.model(packed: true), data: data, output: folder.appending("loftq"),
                                      Run.configuration(steps: 4) { $0.lora = LoRAConfiguration(rank: 16, alpha: 32) })
        var resumedEvents: [String] = []
        try resumed.run(resume: true) { if case .loftqInitialized = $0 { resumedEvents.append("loftq") } }
        #expect(resumedEvents.isEmpty)
    }

    @Test func epochsBecomeSteps() throws {
        let folder = try TemporaryDirectory("trainer-epochs")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder), model = try Run.model(packed: false)
        // 12 examples in batches of 2, two micro-batches per step: 3 steps per epoch.
        for (epochs, steps) in [(1.0, 3), (1.5, 5), (0.1, 1)] {
            let trainer = try Run.trainer(model, data: data, output: folder.appending("out"),
                                          Run.configuration { $0.duration = .epochs(epochs); $0.gradientAccumulation = 2 })
            #expect(trainer.totalSteps == steps, "\(epochs) epochs")
        }
    }

    @Test func refusalsNameTheProblem() throws {
        let folder = try TemporaryDirectory("trainer-refusals")
        defer { folder.remove() }
        let data = try Run.dataset(in: folder), output = folder.appending("out"), model = try Run.model(packed: false)
        #expect(throws: TrainerError.nothingToResume(output)) {
            try Run.trainer(model, data: data, output: output, Run.configuration()).run(resume: true)
        }
        try Run.trainer(model, data: data, output: output, Run.configuration(steps: 3)).run()
        #expect(throws: TrainerError.outputInUse(output, ["checkpoints/", "metrics.jsonl", "adapter_model.safetensors", "adapter_config.json"])) {
            try Run.trainer(model, data: data, output: output, Run.configuration(steps: 3)).run()
        }
        let changed = #expect(throws: TrainerError.self) {
            try Run.trainer(model, data: data, output: output, Run.configuration(steps: 3) { $0.learningRate = 1e-3; $0.lora.rank = 2 }).run(resume: true)
        }
        #expect(changed?.localizedDescription.contains("other settings (learningRate, lora)") == true, "\(String(describing: changed?.localizedDescription))")
        #expect(throws: TrainerError.invalidSetting("rank", "0", "must be at least 1")) {
            try Run.trainer(model, data: data, output: output, Run.configuration { $0.lora.rank = 0 })
        }
        let memory = #expect(throws: MemoryLimitError.self) {
            try Run.trainer(model, data: data, output: output, Run.configuration(), memoryLimit: 1 << 20)
        }
        #expect(memory?.localizedDescription.contains("over the 1.0 MiB memory limit") == true)
    }
}
