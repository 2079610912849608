import Foundation

// `qlora bench accuracy`: what each block format costs in accuracy, measured on
// the model itself. Every combination of type, block size and scale storage is
// quantized to a temporary packed file and evaluated against the full-precision
// model on the same tokens; the figures go to one folder as JSON, CSV, a Markdown
// table and two SVG charts.
//
// Each row runs two evaluations. The first has the evaluated model alone in
// memory, so its peak resident size and tokens/s describe that model (the peak
// counter is restarted just before the model is opened; see
// `ResidentMemory.resetPeak`). The second runs it next to a freshly opened
// full-precision reference for the KL divergence and top-1 agreement, which need
// both models' full next-token distributions token by token.

/// One row of an accuracy sweep. Encoded with the snake_case keys of `CodingKeys`,
/// every key present (null where a row has no value).
public struct AccuracyRecord: Codable, Equatable, Sendable {
    /// "int8", "int4", "nf4", "fp4", or "f32" for the full-precision model.
    public var type: String
    /// nil for the full-precision row.
    public var blockSize: Int?
    public var doubleQuant: Bool?
    /// Storage bits per weight of the quantized layers (the seven projections of every block).
    public var bitsPerWeight: Double
    /// Storage bits per weight of every stored tensor (embeddings and norms included; a tied head once).
    public var modelBitsPerWeight: Double
    /// The packed file, or the folder's safetensors files.
    public var fileBytes: Int
    /// Largest resident set while the model was opened and evaluated alone; nil
    /// where the peak cannot be restarted (then it would only say the process's
    /// lifetime peak).
    public var peakRSSBytes: Int?
    public var loss: Double
    public var perplexity: Double
    /// perplexity − the full-precision perplexity.
    public var deltaPerplexity: Double
    /// Mean KL(full precision ‖ this model) of the next-token distributions, nats per token.
    public var klDivergence: Double
    public var top1Agreement: Double
    /// RMS of (quantized − original) over the quantized weights, and that over their RMS.
    public var weightRMSE: Double
    public var weightRelativeRMSE: Double
    /// Tokens scored.
    public var tokens: Int
    /// Evaluation speed of the model alone.
    public var tokensPerSecond: Double

    public init(type: String, blockSize: Int?, doubleQuant: Bool?, bitsPerWeight: Double, modelBitsPerWeight: Double,
                fileBytes: Int, peakRSSBytes: Int?, loss: Double, perplexity: Double, deltaPerplexity: Double,
                klDivergence: Double, top1Agreement: Double, weightRMSE: Double, weightRelativeRMSE: Double,
                tokens: Int, tokensPerSecond: Double) {
        self.type = type
        self.blockSize = blockSize
        self.doubleQuant = doubleQuant
        self.bitsPerWeight = bitsPerWeight
        self.modelBitsPerWeight = modelBitsPerWeight
        self.fileBytes = fileBytes
        self.peakRSSBytes = peakRSSBytes
        self.loss = loss
        self.perplexity = perplexity
        self.deltaPerplexity = deltaPerplexity
        self.klDivergence = klDivergence
        self.top1Agreement = top1Agreement
        self.weightRMSE = weightRMSE
        self.weightRelativeRMSE = weightRelativeRMSE
        self.tokens = tokens
        self.tokensPerSecond = tokensPerSecond
    }

    /// Also the column order of results.csv.
    public enum CodingKeys: String, CodingKey, CaseIterable {
        case type
        case blockSize = "block_size"
        case doubleQuant = "double_quant"
        case bitsPerWeight = "bits_per_weight"
        case modelBitsPerWeight = "model_bits_per_weight"
        case fileBytes = "file_bytes"
        case peakRSSBytes = "peak_rss_bytes"
        case loss
        case perplexity
        case deltaPerplexity = "delta_perplexity"
        case klDivergence = "kl_divergence"
        case top1Agreement = "top1_agreement"
        case weightRMSE = "weight_rmse"
        case weightRelativeRMSE = "weight_relative_rmse"
        case tokens
        case tokensPerSecond = "tokens_per_second"
    }

    // Written by hand so that nil values appear as null instead of missing keys.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(type, forKey: .type)
        try c.encode(blockSize, forKey: .blockSize)
        try c.encode(doubleQuant, forKey: .doubleQuant)
        try c.encode(bitsPerWeight, forKey: .bitsPerWeight)
        try c.encode(modelBitsPerWeight, forKey: .modelBitsPerWeight)
        try c.encode(fileBytes, forKey: .fileBytes)
        try c.encode(peakRSSBytes, forKey: .peakRSSBytes)
        try c.encode(loss, forKey: .loss)
        try c.encode(perplexity, forKey: .perplexity)
        try c.encode(deltaPerplexity, forKey: .deltaPerplexity)
        try c.encode(klDivergence, forKey: .klDivergence)
        try c.encode(top1Agreement, forKey: .top1Agreement)
        try c.encode(weightRMSE, forKey: .weightRMSE)
        try c.encode(weightRelativeRMSE, forKey: .weightRelativeRMSE)
        try c.encode(tokens, forKey: .tokens)
        try c.encode(tokensPerSecond, forKey: .tokensPerSecond)
    }
}

/// Quantizes a Hugging Face model in every requested format and measures each
/// against the full-precision model on one data file (see the file comment).
public struct AccuracySweep: Sendable {
    /// Which scale storages to sweep: fp32 scales, QLoRA's double quantization, or both.
    public enum DoubleQuant: String, CaseIterable, Sendable {
        case off, on, both

        public var scaleKinds: [ScaleKind] {
            switch self {
            case .off: [.f32]
            case .on: [.dq8]
            case .both: [.f32, .dq8]
            }
        }
    }

    /// Where a running sweep is.
    public struct Progress: Sendable {
        public enum Phase: String, Sendable {
            case quantizing, evaluating, comparing, training
        }

        /// 1-based row, of `count`: the full-precision row, one per spec, then
        /// with fine-tuning the full-precision run and one per fine-tuned spec.
        public var index: Int
        public var count: Int
        /// "f32" or the spec, "nf4/64/dq8".
        public var label: String
        public var phase: Phase
        /// Where training is ("step 12/100").
        public var detail: String?
    }

    /// What a sweep wrote.
    public struct Report: Sendable {
        /// The full-precision row first, then one per spec in the order given.
        public var records: [AccuracyRecord]
        /// Fine-tuning runs, the full-precision one first; empty without `finetune`.
        public var finetune: [FinetuneRecord]
        public var output: URL
        /// results.json, results.csv, results.md, and finetune.json with fine-tuning.
        public var files: [URL]
        /// kl_divergence.svg, perplexity.svg, and finetune.svg with fine-tuning.
        public var plots: [URL]
        /// results.md: the sweep's table, and the fine-tuning table under its own heading.
        public var markdown: String
        /// Tokens per evaluation window, and the sequences the data held.
        public var context: Int
        public var sequences: Int
    }

    public static let resultFileNames = ["results.json", "results.csv", "results.md"]
    public static let plotFileNames = ["kl_divergence.svg", "perplexity.svg"]

    /// A Hugging Face model folder.
    public var model: URL
    /// Evaluation data in any form `EvaluationData.load` reads.
    public var data: URL
    /// The folder written; it must not exist, be empty, or (with `overwrite`) hold an earlier sweep.
    public var output: URL
    public var specs: [QuantSpec]
    /// Tokens per evaluation window (default: max_position_embeddings, at most 2048).
    public var context: Int?
    public var overwrite: Bool
    /// Also fine-tune the full-precision model and packed bases (see AccuracySweep+Finetune.swift).
    public var finetune: Finetune?
    /// Data in the fine-tuning formats: the template for chats (nil: the model's own) and
    /// whether completions end with EOS, as `EvaluationData.load` takes them.
    public var chatTemplate: ChatTemplate?
    public var appendEOS = true

    public init(model: URL, data: URL, output: URL, specs: [QuantSpec], context: Int? = nil, overwrite: Bool = false,
                finetune: Finetune? = nil) {
        self.model = model
        self.data = data
        self.output = output
        self.specs = specs
        self.context = context
        self.overwrite = overwrite
        self.finetune = finetune
    }

    /// Every combination, type-major: for each type, each block size, each scale storage.
    public static func specs(types: [QuantType], blockSizes: [Int], doubleQuant: DoubleQuant) -> [QuantSpec] {
        types.flatMap { type in
            blockSizes.flatMap { block in doubleQuant.scaleKinds.map { QuantSpec(type: type, blockSize: block, scaleKind: $0) } }
        }
    }

    /// "int8,nf4" → [.int8, .nf4].
    /// - Throws: `AccuracySweepError.unsupportedType` listing the supported types, `.emptyList`.
    public static func parseTypes(_ list: String) throws -> [QuantType] {
        let items = try split(list, option: "types")
        return try items.map { item in
            guard let type = QuantType(rawValue: item) else {
                throw AccuracySweepError.unsupportedType(item, supported: QuantType.allCases.map(\.rawValue))
            }
            return type
        }
    }

    /// "32,64" → [32, 64].
    /// - Throws: `AccuracySweepError.unsupportedBlockSize` listing the supported sizes, `.emptyList`.
    public static func parseBlockSizes(_ list: String) throws -> [Int] {
        try split(list, option: "block-sizes").map { item in
            guard let size = Int(item), QuantSpec.blockSizes.contains(size) else {
                throw AccuracySweepError.unsupportedBlockSize(item, supported: QuantSpec.blockSizes)
            }
            return size
        }
    }

    private static func split(_ list: String, option: String) throws -> [String] {
        let items = list.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !items.isEmpty, !items.contains(where: \.isEmpty) else { throw AccuracySweepError.emptyList(option: option, list) }
        var seen = Set<String>()
        return items.filter { seen.insert($0).inserted }
    }

    /// Runs the sweep and writes the folder (complete, or not at all: it is built
    /// hidden beside `output` and renamed into place at the end).
    /// - Throws: `AccuracySweepError` for settings, output folder and data that
    ///   cannot work (before any quantization); the errors of `Quantizer`,
    ///   `EvaluationData`, `Evaluator` and model loading, each naming its file.
    public func run(progress: (Progress) -> Void = { _ in }) throws -> Report {
        guard !specs.isEmpty else { throw AccuracySweepError.emptyList(option: "types", "") }
        for spec in specs where !QuantSpec.blockSizes.contains(spec.blockSize) {
            throw AccuracySweepError.unsupportedBlockSize(String(spec.blockSize), supported: QuantSpec.blockSizes)
        }
        try checkOutput()
        try finetune?.check()
        let source = try openSource()

        let manager = FileManager.default
        try manager.createDirectory(at: output.deletingLastPathComponent(), withIntermediateDirectories: true)
        let writer = try AtomicDirectoryWriter(destination: output)
        let scratch = writer.temporary.appendingPathComponent("packed", isDirectory: true)
        try manager.createDirectory(at: scratch, withIntermediateDirectories: true)

        let count = specs.count + 1 + (finetune.map { $0.specs.count + 1 } ?? 0)
        progress(Progress(index: 1, count: count, label: "f32", phase: .evaluating))
        let fullPrecision = try measure(model, source) {
            progress(Progress(index: 1, count: count, label: "f32", phase: .comparing))
        }
        var records = [AccuracyRecord(
            type: "f32", blockSize: nil, doubleQuant: nil, bitsPerWeight: source.linearBits, modelBitsPerWeight: source.modelBits,
            fileBytes: fullPrecision.fileBytes, peakRSSBytes: fullPrecision.peak, loss: fullPrecision.alone.loss,
            perplexity: fullPrecision.alone.perplexity, deltaPerplexity: 0, klDivergence: fullPrecision.klDivergence,
            top1Agreement: fullPrecision.top1Agreement, weightRMSE: 0, weightRelativeRMSE: 0,
            tokens: fullPrecision.alone.tokens, tokensPerSecond: fullPrecision.alone.tokensPerSecond)]

        for (i, spec) in specs.enumerated() {
            let label = spec.description
            progress(Progress(index: i + 2, count: count, label: label, phase: .quantizing))
            let file = scratch.appendingPathComponent("\(spec.type)-\(spec.blockSize)-\(spec.scaleKind.rawValue).qlora")
            let summary = try Quantizer.quantize(modelDirectory: model, output: file, options: QuantizeOptions(spec: spec, threads: ComputePool.shared.threadCount))
            progress(Progress(index: i + 2, count: count, label: label, phase: .evaluating))
            let m = try measure(file, source) {
                progress(Progress(index: i + 2, count: count, label: label, phase: .comparing))
            }
            try manager.removeItem(at: file)
            records.append(AccuracyRecord(
                type: spec.type.rawValue, blockSize: spec.blockSize, doubleQuant: spec.scaleKind == .dq8,
                bitsPerWeight: summary.quantizedBitsPerWeight, modelBitsPerWeight: summary.bitsPerWeight,
                fileBytes: summary.fileBytes, peakRSSBytes: m.peak, loss: m.alone.loss, perplexity: m.alone.perplexity,
                deltaPerplexity: m.alone.perplexity - fullPrecision.alone.perplexity, klDivergence: m.klDivergence,
                top1Agreement: m.top1Agreement, weightRMSE: summary.error.rms, weightRelativeRMSE: summary.error.relativeRMS,
                tokens: m.alone.tokens, tokensPerSecond: m.alone.tokensPerSecond))
        }
        var finetuned: [FinetuneRecord] = []
        if let finetune {
            finetuned = try runFinetunes(finetune, linearBits: source.linearBits, scratch: scratch) { run, label, phase, detail in
                progress(Progress(index: specs.count + 2 + run, count: count, label: label, phase: phase, detail: detail))
            }
        }
        try manager.removeItem(at: scratch)

        var markdown = Self.markdownTable(records)
        var contents: [(String, Data)] = [
            ("results.json", try Self.json(records)),
            ("results.csv", Data(Self.csv(records).utf8)),
            ("kl_divergence.svg", Data(try Self.klChart(records).svg().utf8)),
            ("perplexity.svg", Data(try Self.perplexityChart(records).svg().utf8)),
        ]
        if finetune != nil {
            markdown += "\n## Fine-tuning\n\n" + Self.finetuneTable(finetuned)
            contents += [("finetune.json", try Self.json(finetuned)), ("finetune.svg", Data(try Self.finetuneChart(finetuned).svg().utf8))]
        }
        contents.append(("results.md", Data(markdown.utf8)))
        for (name, data) in contents {
            try data.write(to: writer.temporary.appendingPathComponent(name))
        }
        try writer.commit()
        let extra = finetune == nil ? [] : ["finetune.json"], extraPlots = finetune == nil ? [] : ["finetune.svg"]
        return Report(records: records, finetune: finetuned, output: output,
                      files: (Self.resultFileNames + extra).map { output.appendingPathComponent($0) },
                      plots: (Self.plotFileNames + extraPlots).map { output.appendingPathComponent($0) },
                      markdown: markdown, context: source.context, sequences: source.data.sequences.count)
    }

    // MARK: - Checks and measurements

    /// Refuses an output that is in the way, before any work is done.
    private func checkOutput() throws {
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: output.path, isDirectory: &isDirectory) else { return }
        guard isDirectory.boolValue else { throw AccuracySweepError.outputNotReplaceable(output, reason: "it is a file, and the output is a folder") }
        if (try? manager.contentsOfDirectory(atPath: output.path))?.isEmpty ?? false { return }
        guard overwrite else { throw AccuracySweepError.outputExists(output) }
        // --overwrite replaces the whole folder, so only a folder an earlier sweep wrote.
        guard manager.fileExists(atPath: output.appendingPathComponent(Self.resultFileNames[0]).path) else {
            throw AccuracySweepError.outputNotReplaceable(output, reason: "it holds no \(Self.resultFileNames[0]), so it is not an earlier sweep's folder")
        }
    }

    private struct Source {
        var data: EvaluationSet
        var context: Int
        var linearBits: Double
        var modelBits: Double
    }

    /// Opens the model folder for its storage figures and tokenizer, and reads the data.
    private func openSource() throws -> Source {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: model.path, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw AccuracySweepError.notAModelFolder(model)
        }
        let checkpoint = try HFCheckpoint(directory: model)
        _ = try checkpoint.validate()
        let c = checkpoint.configuration
        // What a packed file would store in full precision: every tensor the model uses, a tied head once.
        let stored = c.tensorInventory.filter { checkpoint.contains($0.name) && !(c.tieWordEmbeddings && $0.kind == .outputHead) }
        func bits(_ tensors: [LlamaTensor]) throws -> Double {
            let infos = try tensors.map { try checkpoint.location(of: $0.name).info }
            let n = infos.reduce(0) { $0 + $1.count }
            return n == 0 ? 0 : Double(infos.reduce(0) { $0 + $1.byteRange.count } * 8) / Double(n)
        }

        let tokenizer = try Tokenizer(directory: model)
        let sequences = try ChatTemplate.resolving(chatTemplate, own: { try ChatTemplate.fromModel(directory: model) }) { template in
            try EvaluationData.load(data, vocabularySize: c.vocabularySize, chatTemplate: template, appendEOS: appendEOS) { tokenizer }
        }
        let context = self.context ?? min(c.maxPositionEmbeddings, 2048)
        guard (2...c.maxPositionEmbeddings).contains(context) else {
            throw AccuracySweepError.invalidContext(context, limit: c.maxPositionEmbeddings)
        }
        let tokens = sequences.tokenCount
        guard tokens >= context else { throw AccuracySweepError.tooFewTokens(data, tokens: tokens, context: context) }
        return Source(data: sequences, context: context,
                      linearBits: try bits(stored.filter(\.kind.isLinearWeight)), modelBits: try bits(stored))
    }

    private struct Measurement {
        var alone: EvaluationResult
        var peak: Int?
        var fileBytes: Int
        var klDivergence: Double
        var top1Agreement: Double
    }

    /// Evaluates the model at `url` alone (loss, speed, peak memory), then against a
    /// freshly opened full-precision reference; `comparing` is called in between.
    private func measure(_ url: URL, _ source: Source, comparing: () -> Void) throws -> Measurement {
        let canReset = ResidentMemory.resetPeak()
        let loaded = try LoadedModel(contentsOf: url)
        let alone = try Evaluator(model: loaded.model, context: source.context).evaluate(source.data)
        let peak = canReset ? ResidentMemory.sample().peak : nil
        comparing()
        let reference = try LoadedModel(contentsOf: model).model
        let compared = try Evaluator(model: loaded.model, reference: reference, context: source.context).evaluate(source.data)
        return Measurement(alone: alone, peak: peak, fileBytes: loaded.weightFileBytes,
                           klDivergence: compared.klDivergence ?? 0, top1Agreement: compared.top1Agreement ?? 0)
    }

    // MARK: - Outputs

    static func json(_ records: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return try encoder.encode(records) + Data("\n".utf8)
    }

    /// One header line of the JSON keys, then one line per record; nulls are empty cells.
    public static func csv(_ records: [AccuracyRecord]) -> String {
        var lines = [AccuracyRecord.CodingKeys.allCases.map(\.rawValue).joined(separator: ",")]
        for r in records {
            let cells: [String] = [
                r.type, r.blockSize.map(String.init) ?? "", r.doubleQuant.map(String.init) ?? "",
                "\(r.bitsPerWeight)", "\(r.modelBitsPerWeight)", "\(r.fileBytes)", r.peakRSSBytes.map(String.init) ?? "",
                "\(r.loss)", "\(r.perplexity)", "\(r.deltaPerplexity)", "\(r.klDivergence)", "\(r.top1Agreement)",
                "\(r.weightRMSE)", "\(r.weightRelativeRMSE)", "\(r.tokens)", "\(r.tokensPerSecond)",
            ]
            lines.append(cells.joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A GitHub Markdown table of the records.
    public static func markdownTable(_ records: [AccuracyRecord]) -> String {
        var lines = [
            "| type | block | DQ | bits/weight (linears) | bits/weight (model) | file (KB) | peak RSS (MB) | perplexity | Δ perplexity | KL divergence | top-1 agreement | weight RMSE (relative) | tokens/s |",
            "|---|---:|:-:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in records {
            let cells = [
                r.type, r.blockSize.map(String.init) ?? "–", r.doubleQuant.map { $0 ? "yes" : "no" } ?? "–",
                String(format: "%.3f", r.bitsPerWeight), String(format: "%.3f", r.modelBitsPerWeight),
                String(format: "%.1f", Double(r.fileBytes) / 1e3), r.peakRSSBytes.map { String(format: "%.1f", Double($0) / 1e6) } ?? "–",
                String(format: "%.4f", r.perplexity), String(format: "%+.4f", r.deltaPerplexity),
                String(format: "%.3e", r.klDivergence), String(format: "%.4f", r.top1Agreement),
                String(format: "%.2e (%.4f)", r.weightRMSE, r.weightRelativeRMSE), String(format: "%.0f", r.tokensPerSecond),
            ]
            lines.append("| " + cells.joined(separator: " | ") + " |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Series per type and scale storage (double quantization dashed, same colour and
    /// marker as its type), points in order of bits per weight, labelled with the block size.
    private static func series(_ records: [AccuracyRecord], y: (AccuracyRecord) -> Double) -> [ChartSeries] {
        let quantized = records.filter { $0.blockSize != nil }
        var types: [String] = []
        for r in quantized where !types.contains(r.type) { types.append(r.type) }
        var out: [ChartSeries] = []
        for (t, type) in types.enumerated() {
            for dq in [false, true] {
                let rows = quantized.filter { $0.type == type && $0.doubleQuant == dq }.sorted { $0.bitsPerWeight < $1.bitsPerWeight }
                guard !rows.isEmpty else { continue }
                let points = rows.map { ChartPoint(x: $0.bitsPerWeight, y: y($0), label: String($0.blockSize!)) }
                out.append(ChartSeries(name: dq ? "\(type) + DQ" : type, points: points, style: .lineAndMarkers,
                                       marker: ChartMarker.allCases[t % ChartMarker.allCases.count],
                                       color: Chart.palette[t % Chart.palette.count], dashed: dq))
            }
        }
        return out
    }

    /// KL divergence on a log axis (the full-precision row, at 0, cannot be drawn there).
    public static func klChart(_ records: [AccuracyRecord]) -> Chart {
        var series = series(records) { $0.klDivergence }
        // A format as exact as full precision has KL 0, which a log axis cannot show: left out.
        for i in series.indices { series[i].points.removeAll { !($0.y > 0) } }
        return Chart(title: "KL divergence from f32 vs bits per weight (labels: block size)",
                     xAxis: ChartAxis(label: "bits per weight of the quantized layers"),
                     yAxis: ChartAxis(label: "mean KL divergence (nats/token)", scale: .log10), series: series,
                     width: 960, height: 600)
    }

    /// Perplexity, with the full-precision model as a dashed grey line.
    public static func perplexityChart(_ records: [AccuracyRecord]) -> Chart {
        var series = series(records) { $0.perplexity }
        let xs = series.flatMap(\.points).map(\.x)
        if let f32 = records.first(where: { $0.blockSize == nil }), let lo = xs.min(), let hi = xs.max() {
            series.append(ChartSeries(name: "f32", x: [lo, hi], y: [f32.perplexity, f32.perplexity], color: "#7f7f7f", dashed: true))
        }
        return Chart(title: "Perplexity vs bits per weight (labels: block size)",
                     xAxis: ChartAxis(label: "bits per weight of the quantized layers"),
                     yAxis: ChartAxis(label: "perplexity"), series: series, width: 960, height: 600)
    }
}

public enum AccuracySweepError: Error, LocalizedError, Equatable {
    case unsupportedType(String, supported: [String])
    case unsupportedBlockSize(String, supported: [Int])
    case emptyList(option: String, String)
    case outputExists(URL)
    case outputNotReplaceable(URL, reason: String)
    case notAModelFolder(URL)
    case invalidContext(Int, limit: Int)
    case tooFewTokens(URL, tokens: Int, context: Int)
    case noValidationSet(URL)

    public var errorDescription: String? {
        switch self {
        case let .unsupportedType(type, supported):
            "unsupported type \"\(type)\"; the supported types are \(supported.joined(separator: ", "))"
        case let .unsupportedBlockSize(size, supported):
            "unsupported block size \"\(size)\"; the supported block sizes are \(supported.map(String.init).joined(separator: ", "))"
        case let .emptyList(option, list):
            "--\(option) \"\(list)\": name at least one, separated by commas"
        case let .outputExists(url):
            "\(url.path) exists and is not empty; pass --overwrite to replace it"
        case let .outputNotReplaceable(url, reason):
            "\(url.path): \(reason); not replacing it"
        case let .notAModelFolder(url):
            "\(url.path) is a file; the sweep quantizes a Hugging Face model folder (config.json, safetensors, tokenizer files)"
        case let .invalidContext(context, limit):
            "context \(context) must be between 2 and \(limit) tokens (max_position_embeddings)"
        case let .tooFewTokens(url, tokens, context):
            "\(url.path): \(tokens) tokens, fewer than one evaluation window of \(context); use more text or a smaller --context"
        case let .noValidationSet(url):
            "\(url.path): no \(DatasetFiles.validFileName) to measure the fine-tuning on (a folder with \(DatasetFiles.trainFileName) and \(DatasetFiles.validFileName))"
        }
    }
}
