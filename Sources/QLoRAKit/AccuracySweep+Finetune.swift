import Foundation

// `qlora bench accuracy --finetune DIR`: does the quantization error survive
// fine-tuning? The same short LoRA run (same settings, seed and data order) goes
// over the full-precision model (plain LoRA) and over each type's packed model
// (QLoRA), and the validation loss before, during and after is recorded.

/// One fine-tuning run of a sweep. Encoded with the snake_case keys of `CodingKeys`,
/// every key present (null where a run has no value).
public struct FinetuneRecord: Codable, Equatable, Sendable {
    /// A point of the validation curve: the loss after `step` optimizer steps (0 = before training).
    public struct ValidationPoint: Codable, Equatable, Sendable {
        public var step: Int
        public var loss: Double

        public init(step: Int, loss: Double) {
            self.step = step
            self.loss = loss
        }
    }

    /// "f32" for LoRA on the full-precision base, else the packed base's type.
    public var type: String
    public var blockSize: Int?
    public var doubleQuant: Bool?
    /// Storage bits per weight of the base's quantized layers (32 for f32).
    public var bitsPerWeight: Double
    public var steps: Int
    public var initialValidLoss: Double
    public var finalValidLoss: Double
    /// finalValidLoss − the f32 run's finalValidLoss.
    public var deltaValidLoss: Double
    /// Mean training loss of the last step.
    public var trainLoss: Double
    /// Training tokens per second (evaluation and saving excluded).
    public var tokensPerSecond: Double
    /// Largest resident set while the base was opened and trained; nil where it cannot be restarted.
    public var peakRSSBytes: Int?
    public var validLossCurve: [ValidationPoint]

    public init(type: String, blockSize: Int?, doubleQuant: Bool?, bitsPerWeight: Double, steps: Int,
                initialValidLoss: Double, finalValidLoss: Double, deltaValidLoss: Double, trainLoss: Double,
                tokensPerSecond: Double, peakRSSBytes: Int?, validLossCurve: [ValidationPoint]) {
        self.type = type
        self.blockSize = blockSize
        self.doubleQuant = doubleQuant
        self.bitsPerWeight = bitsPerWeight
        self.steps = steps
        self.initialValidLoss = initialValidLoss
        self.finalValidLoss = finalValidLoss
        self.deltaValidLoss = deltaValidLoss
        self.trainLoss = trainLoss
        self.tokensPerSecond = tokensPerSecond
        self.peakRSSBytes = peakRSSBytes
        self.validLossCurve = validLossCurve
    }

    public enum CodingKeys: String, CodingKey, CaseIterable {
        case type
        case blockSize = "block_size"
        case doubleQuant = "double_quant"
        case bitsPerWeight = "bits_per_weight"
        case steps
        case initialValidLoss = "initial_valid_loss"
        case finalValidLoss = "final_valid_loss"
        case deltaValidLoss = "delta_valid_loss"
        case trainLoss = "train_loss"
        case tokensPerSecond = "tokens_per_second"
        case peakRSSBytes = "peak_rss_bytes"
        case validLossCurve = "valid_loss_curve"
    }

    // Written by hand so that nil values appear as null instead of missing keys.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encode(blockSize, forKey: .blockSize)
        try c.encode(doubleQuant, forKey: .doubleQuant)
        try c.encode(bitsPerWeight, forKey: .bitsPerWeight)
        try c.encode(steps, forKey: .steps)
        try c.encode(initialValidLoss, forKey: .initialValidLoss)
        try c.encode(finalValidLoss, forKey: .finalValidLoss)
        try c.encode(deltaValidLoss, forKey: .deltaValidLoss)
        try c.encode(trainLoss, forKey: .trainLoss)
        try c.encode(tokensPerSecond, forKey: .tokensPerSecond)
        try c.encode(peakRSSBytes, forKey: .peakRSSBytes)
        try c.encode(validLossCurve, forKey: .validLossCurve)
    }
}

extension AccuracySweep {
    /// What the fine-tuning part of a sweep trains on and how.
    public struct Finetune: Sendable {
        /// A folder with train.jsonl and valid.jsonl (`DatasetFiles`).
        public var dataset: URL
        /// The packed bases; the full-precision base is always trained first.
        public var specs: [QuantSpec]
        public var configuration: TrainingConfiguration

        public init(dataset: URL, specs: [QuantSpec], configuration: TrainingConfiguration) {
            self.dataset = dataset
            self.specs = specs
            self.configuration = configuration
        }

        /// A short run: LoRA r=8, alpha 16 on every projection, batches of 8, peak learning
        /// rate 5e-4 on a cosine schedule after a tenth of the steps as warm-up, validation
        /// ten times, no dropout (so only the base differs between runs).
        public static func configuration(steps: Int, maxSequenceLength: Int, appendEOS: Bool = true) -> TrainingConfiguration {
            TrainingConfiguration(lora: LoRAConfiguration(rank: 8, alpha: 16), maxSequenceLength: maxSequenceLength, batchSize: 8,
                                  appendEOS: appendEOS, learningRate: 5e-4, schedule: "cosine", warmupSteps: steps / 10,
                                  duration: .steps(steps), evaluateEvery: max(1, steps / 10), saveEvery: steps, keepCheckpoints: 1)
        }

        /// The base each type is trained over: block 64 and double quantization (QLoRA's)
        /// where the sweep has them, else its first block size and scale storage.
        public static func specs(types: [QuantType], blockSizes: [Int], doubleQuant: DoubleQuant) -> [QuantSpec] {
            let block = blockSizes.contains(64) ? 64 : blockSizes.first ?? 64
            let scales: ScaleKind = doubleQuant.scaleKinds.contains(.dq8) ? .dq8 : .f32
            return types.map { QuantSpec(type: $0, blockSize: block, scaleKind: scales) }
        }

        /// Refuses settings and data that cannot work before the sweep starts.
        func check() throws {
            try configuration.validate()
            guard try DatasetFiles(locating: dataset).valid != nil else { throw AccuracySweepError.noValidationSet(dataset) }
        }
    }

    /// Trains the full-precision model and then each packed base in `finetune.specs`
    /// (quantized into `scratch`, removed afterwards); `progress` gets the run (from 0),
    /// its base, its phase and the step reached.
    func runFinetunes(_ finetune: Finetune, linearBits: Double, scratch: URL,
                      progress: (_ run: Int, _ label: String, _ phase: Progress.Phase, _ detail: String?) -> Void) throws -> [FinetuneRecord] {
        var records: [FinetuneRecord] = []
        for (i, spec) in ([nil] + finetune.specs.map { Optional($0) }).enumerated() {
            let label = spec?.description ?? "f32"
            var base = model
            var bits = linearBits
            if let spec {
                progress(i, label, .quantizing, nil)
                base = scratch.appendingPathComponent("finetune-\(spec.type)-\(spec.blockSize)-\(spec.scaleKind.rawValue).qlora")
                bits = try Quantizer.quantize(modelDirectory: model, output: base, options: QuantizeOptions(spec: spec, threads: ComputePool.shared.threadCount)).quantizedBitsPerWeight
            }
            progress(i, label, .training, nil)
            let canReset = ResidentMemory.resetPeak()
            let loaded = try LoadedModel(contentsOf: base)
            let run = scratch.appendingPathComponent("finetune-\(i)", isDirectory: true)
            let trainer = try Trainer(model: loaded.model, tokenizer: try loaded.tokenizer(), dataset: finetune.dataset, output: run,
                                      configuration: finetune.configuration, baseModelName: base.lastPathComponent)
            var curve: [FinetuneRecord.ValidationPoint] = []
            let summary = try trainer.run { event in
                switch event {
                case let .stepFinished(report): progress(i, label, .training, "step \(report.step)/\(report.totalSteps)")
                case let .evaluated(step, loss): curve.append(.init(step: step, loss: loss))
                case .started, .loftqInitialized, .checkpointSaved, .resumedOnOtherThreads: break
                }
            }
            // There is a validation set (checked up front), so the trainer evaluated before and after.
            guard let first = curve.first, let last = curve.last else { throw AccuracySweepError.noValidationSet(finetune.dataset) }
            records.append(FinetuneRecord(
                type: spec?.type.rawValue ?? "f32", blockSize: spec?.blockSize, doubleQuant: spec.map { $0.scaleKind == .dq8 },
                bitsPerWeight: bits, steps: summary.step, initialValidLoss: first.loss, finalValidLoss: last.loss,
                deltaValidLoss: last.loss - (records.first?.finalValidLoss ?? last.loss), trainLoss: summary.trainLoss ?? .nan,
                tokensPerSecond: summary.tokensPerSecond, peakRSSBytes: canReset ? summary.peakResidentBytes : nil, validLossCurve: curve))
            try FileManager.default.removeItem(at: run)
            if spec != nil { try FileManager.default.removeItem(at: base) }
        }
        return records
    }

    /// A GitHub Markdown table of the fine-tuning runs.
    public static func finetuneTable(_ records: [FinetuneRecord]) -> String {
        var lines = [
            "| base | bits/weight (linears) | steps | valid loss before | valid loss after | Δ vs f32 after | train loss (last step) | tokens/s | peak RSS (MB) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in records {
            let base = r.blockSize.map { "\(r.type)/\($0)\(r.doubleQuant == true ? "/dq8" : "")" } ?? r.type
            let cells = [
                base, String(format: "%.3f", r.bitsPerWeight), String(r.steps),
                String(format: "%.4f", r.initialValidLoss), String(format: "%.4f", r.finalValidLoss), String(format: "%+.4f", r.deltaValidLoss),
                String(format: "%.4f", r.trainLoss), String(format: "%.0f", r.tokensPerSecond),
                r.peakRSSBytes.map { String(format: "%.1f", Double($0) / 1e6) } ?? "–",
            ]
            lines.append("| " + cells.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Validation loss against the step, a line per base (f32 dashed grey).
    public static func finetuneChart(_ records: [FinetuneRecord]) -> Chart {
        var types: [String] = []
        for r in records where r.blockSize != nil && !types.contains(r.type) { types.append(r.type) }
        let series = records.map { r in
            let points = r.validLossCurve.map { ChartPoint(x: Double($0.step), y: $0.loss) }
            guard let block = r.blockSize, let t = types.firstIndex(of: r.type) else {
                return ChartSeries(name: "f32 (LoRA)", points: points, style: .lineAndMarkers, color: "#7f7f7f", dashed: true)
            }
            return ChartSeries(name: "\(r.type)/\(block)\(r.doubleQuant == true ? " + DQ" : "") (QLoRA)", points: points,
                               style: .lineAndMarkers, marker: ChartMarker.allCases[t % ChartMarker.allCases.count],
                               color: Chart.palette[t % Chart.palette.count])
        }
        return Chart(title: "Validation loss while fine-tuning, full-precision vs packed bases", xAxis: ChartAxis(label: "optimizer step"),
                     yAxis: ChartAxis(label: "validation loss"), series: series, width: 960, height: 600)
    }
}
