// The accuracy sweep on the embedded stories260K: what it writes, the
// full-precision row, sanity of the measured order, and the inputs it refuses.

import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import QLoRAKit
import Testing
import _TestSupport

@Suite struct AccuracySweepTests {
    /// The first `count` stories of the fixture (stories260K's own samples), as a JSON lines file in `dir`.
    static func storySlice(_ count: Int, in dir: URL) throws -> URL {
        let lines = try String(contentsOf: Fixtures.url("model/stories260K/generated_stories.jsonl"), encoding: .utf8)
            .split(separator: "\n").prefix(count)
        let url = dir.appendingPathComponent("stories.jsonl")
        try Data(lines.joined(separator: "\n").utf8).write(to: url)
        return url
    }

    static let keys: Set<String> = [
        "type", "block_size", "double_quant", "bits_per_weight", "model_bits_per_weight", "file_bytes", "peak_rss_bytes",
        "perplexity", "delta_perplexity", "kl_divergence", "top1_agreement", "weight_rmse", "tokens_per_second",
    ]

    /// int8 and int4 at blocks 32 and 256 on six stories in windows of 64 tokens.
    @Test func smallSweepWritesEveryOutput() throws {
        let scratch = try TemporaryDirectory("qlora-accuracy")
        defer { scratch.remove() }
        let data = try Self.storySlice(6, in: scratch.url)
        let output = scratch.appending("sweep")
        let specs = AccuracySweep.specs(types: [.int8, .int4], blockSizes: [32, 256], doubleQuant: .off)
        var phases: [String] = []
        let report = try AccuracySweep(model: EmbeddedModel.directory, data: data, output: output, specs: specs, context: 64)
            .run { phases.append("\($0.index)/\($0.count) \($0.label) \($0.phase.rawValue)") }

        #expect(phases.first == "1/5 f32 evaluating" && phases.last == "5/5 int4/256/f32 comparing")
        #expect(try scratch.contents() == ["stories.jsonl", "sweep"]) // nothing left beside it
        #expect(try FileManager.default.contentsOfDirectory(atPath: output.path).sorted()
            == ["kl_divergence.svg", "perplexity.svg", "results.csv", "results.json", "results.md"])

        // results.json: the f32 row, then the specs in order, every key on every row.
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("results.json"))) as? [[String: Any]])
        #expect(json.count == 5)
        for row in json { #expect(Self.keys.isSubset(of: Set(row.keys))) }
        #expect(json.map { $0["type"] as? String } == ["f32", "int8", "int8", "int4", "int4"])
        #expect(json[0]["block_size"] is NSNull && json[0]["double_quant"] is NSNull)
        #expect(json.dropFirst().map { $0["block_size"] as? Int } == [32, 256, 32, 256])

        let rows = report.records
        let f32 = rows[0]
        #expect(f32.klDivergence == 0 && f32.top1Agreement == 1 && f32.deltaPerplexity == 0 && f32.weightRMSE == 0)
        #expect(f32.bitsPerWeight == 32 && f32.modelBitsPerWeight == 32)
        // The f32 baseline is the evaluator's own figure on the same data.
        let model = try LoadedModel(contentsOf: EmbeddedModel.directory)
        let sequences = try EvaluationData.load(data, vocabularySize: 512, tokenizer: model.tokenizer)
        let baseline = try Evaluator(model: model.model, context: 64).evaluate(sequences)
        #expect(abs(f32.perplexity - baseline.perplexity) <= 1e-9 && rows.allSatisfy { $0.tokens == baseline.tokens })
        #expect(baseline.tokens >= 1000)

        // Every linear of stories260K holds whole blocks: bits are the formats' exact rates.
        #expect(rows.dropFirst().map(\.bitsPerWeight) == [9, 8.125, 5, 4.125])
        for r in rows.dropFirst() {
            #expect(r.modelBitsPerWeight > r.bitsPerWeight && r.fileBytes < f32.fileBytes)
            #expect(r.klDivergence > 0 && r.weightRMSE > 0 && r.top1Agreement < 1)
            #expect(abs(r.deltaPerplexity - (r.perplexity - f32.perplexity)) <= 1e-12)
        }
        let (int8At32, int8At256, int4At32, int4At256) = (rows[1], rows[2], rows[3], rows[4])
        #expect(int8At32.klDivergence < int4At32.klDivergence && int8At256.klDivergence < int4At256.klDivergence)
        #expect(int4At32.klDivergence < int4At256.klDivergence && int4At32.weightRelativeRMSE < int4At256.weightRelativeRMSE)
        #if os(Linux)
        #expect(ResidentMemory.resetPeak() && rows.allSatisfy { ($0.peakRSSBytes ?? 0) > 0 })
        #endif

        // results.csv: the JSON keys as header, a line per row, nulls empty.
        let csv = try String(contentsOf: output.appendingPathComponent("results.csv"), encoding: .utf8).split(separator: "\n")
        #expect(csv.count == 6)
        #expect(Self.keys.isSubset(of: Set(csv[0].split(separator: ",").map(String.init))))
        #expect(csv[1].hasPrefix("f32,,,32.0,"))
        // results.md: the table printed to the terminal, a line per row.
        let markdown = try String(contentsOf: output.appendingPathComponent("results.md"), encoding: .utf8)
        #expect(markdown == report.markdown && markdown.split(separator: "\n").count == 7)
        #expect(markdown.contains("| int4 | 256 | no | 4.125 |"))

        // The plots are well-formed SVG with a series per type, labelled by block size.
        for name in AccuracySweep.plotFileNames {
            let svg = try Data(contentsOf: output.appendingPathComponent(name))
            #expect(XMLParser(data: svg).parse(), "\(name) is not well-formed XML")
            let text = String(decoding: svg, as: UTF8.self)
            #expect(text.contains(#"data-name="int8""#) && text.contains(#"data-name="int4""#) && text.contains(">256</text>"))
        }
        #expect(String(decoding: try Data(contentsOf: report.plots[1]), as: UTF8.self).contains(#"data-name="f32""#))
    }

    @Test func unsupportedTypesAndBlockSizesNameTheSupportedOnes() throws {
        #expect(try AccuracySweep.parseTypes("nf4, int8,nf4") == [.nf4, .int8])
        #expect(try AccuracySweep.parseBlockSizes("256,32") == [256, 32])
        #expect(throws: AccuracySweepError.unsupportedType("int3", supported: ["int8", "int4", "nf4", "fp4"])) {
            try AccuracySweep.parseTypes("int8,int3")
        }
        #expect(throws: AccuracySweepError.unsupportedBlockSize("48", supported: [32, 64, 128, 256])) {
            try AccuracySweep.parseBlockSizes("64,48")
        }
        #expect(AccuracySweepError.unsupportedType("int3", supported: ["int8", "int4", "nf4", "fp4"]).localizedDescription
            .contains("int8, int4, nf4, fp4"))
        #expect(AccuracySweepError.unsupportedBlockSize("48", supported: [32, 64, 128, 256]).localizedDescription
            .contains("32, 64, 128, 256"))
        #expect(throws: AccuracySweepError.self) { try AccuracySweep.parseTypes("int8,,nf4") }
        #expect(throws: AccuracySweepError.self) { try AccuracySweep.parseBlockSizes("") }

        let scratch = try TemporaryDirectory("qlora-accuracy")
        defer { scratch.remove() }
        let odd = AccuracySweep(model: EmbeddedModel.directory, data: try Self.storySlice(1, in: scratch.url),
                                output: scratch.appending("out"), specs: [QuantSpec(type: .nf4, blockSize: 48)])
        #expect(throws: AccuracySweepError.unsupportedBlockSize("48", supported: QuantSpec.blockSizes)) { try odd.run() }
        #expect(try scratch.contents() == ["stories.jsonl"])
    }

    /// Data shorter than one window is refused before anything is quantized or written.
    @Test func dataShorterThanOneWindowIsRefused() throws {
        let scratch = try TemporaryDirectory("qlora-accuracy")
        defer { scratch.remove() }
        let data = scratch.appending("short.jsonl")
        let text = "Once upon a time, there was a cat."
        try Data(#"{"text": "\#(text)"}"#.utf8).write(to: data)
        let tokens = try LoadedModel(contentsOf: EmbeddedModel.directory).tokenizer().encode(text).count
        let sweep = AccuracySweep(model: EmbeddedModel.directory, data: data, output: scratch.appending("out"),
                                  specs: [QuantSpec(type: .int8, blockSize: 64)], context: 64)
        #expect(throws: AccuracySweepError.tooFewTokens(data, tokens: tokens, context: 64)) { try sweep.run() }
        #expect(try scratch.contents() == ["short.jsonl"])
    }

    /// An output folder in the way: refused unless --overwrite, and then only an earlier sweep's.
    @Test func occupiedOutputFoldersAreRefusedUnlessOverwriting() throws {
        let scratch = try TemporaryDirectory("qlora-accuracy")
        defer { scratch.remove() }
        let data = try Self.storySlice(4, in: scratch.url)
        let output = scratch.appending("out")
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        let notes = output.appendingPathComponent("notes.txt")
        try Data("mine".utf8).write(to: notes)
        var sweep = AccuracySweep(model: EmbeddedModel.directory, data: data, output: output,
                                  specs: [QuantSpec(type: .int8, blockSize: 256)], context: 64)
        #expect(throws: AccuracySweepError.outputExists(output)) { try sweep.run() }
        sweep.overwrite = true
        #expect(throws: AccuracySweepError.self) { try sweep.run() } // not an earlier sweep's folder
        #expect(try String(contentsOf: notes, encoding: .utf8) == "mine")
        #expect(try scratch.contents() == ["out", "stories.jsonl"])

        try FileManager.default.removeItem(at: notes)
        sweep.overwrite = false
        #expect(try sweep.run().records.count == 2) // an empty folder is fine
        #expect(throws: AccuracySweepError.outputExists(output)) { try sweep.run() }
        sweep.overwrite = true
        sweep.specs = [QuantSpec(type: .nf4, blockSize: 256, scaleKind: .dq8)]
        #expect(try sweep.run().records.map(\.type) == ["f32", "nf4"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("results.json"))) as? [[String: Any]])
        #expect(json.map { $0["type"] as? String } == ["f32", "nf4"] && json[1]["double_quant"] as? Bool == true)

        let file = scratch.appending("stories.jsonl")
        let onFile = AccuracySweep(model: EmbeddedModel.directory, data: data, output: file, specs: sweep.specs, overwrite: true)
        #expect(throws: AccuracySweepError.self) { try onFile.run() }
        #expect(try scratch.contents() == ["out", "stories.jsonl"])
    }
}

@Suite struct AccuracySweepFinetuneTests {
    /// The first `train` and `valid` lines of the embedded fine-tuning set, as a dataset folder in `dir`.
    static func dataset(train: Int, valid: Int?, in dir: URL) throws -> URL {
        let folder = dir.appendingPathComponent("dataset", isDirectory: true)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        for (name, count) in [(DatasetFiles.trainFileName, train), (DatasetFiles.validFileName, valid)] {
            guard let count else { continue }
            let lines = try String(contentsOf: EmbeddedModel.directory.appendingPathComponent(name), encoding: .utf8)
                .split(separator: "\n").prefix(count)
            try Data(lines.joined(separator: "\n").utf8).write(to: folder.appendingPathComponent(name))
        }
        return folder
    }

    @Test func basesFollowTheSweepsSettingsPreferringQLoRAs() {
        #expect(AccuracySweep.Finetune.specs(types: [.nf4, .int4], blockSizes: [32, 64], doubleQuant: .both)
            == [QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8), QuantSpec(type: .int4, blockSize: 64, scaleKind: .dq8)])
        #expect(AccuracySweep.Finetune.specs(types: [.fp4], blockSizes: [128, 32], doubleQuant: .off)
            == [QuantSpec(type: .fp4, blockSize: 128, scaleKind: .f32)])
    }

    /// Three steps over the full-precision model and an NF4 base, on 16 training and 8 validation stories.
    @Test func finetuningRecordsTheValidationLossOfEveryBase() throws {
        let scratch = try TemporaryDirectory("qlora-accuracy")
        defer { scratch.remove() }
        let data = try AccuracySweepTests.storySlice(4, in: scratch.url)
        let output = scratch.appending("out")
        let nf4 = QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)
        let finetune = AccuracySweep.Finetune(dataset: try Self.dataset(train: 16, valid: 8, in: scratch.url), specs: [nf4],
                                              configuration: AccuracySweep.Finetune.configuration(steps: 3, maxSequenceLength: 512, appendEOS: false))
        var phases: [String] = []
        let report = try AccuracySweep(model: EmbeddedModel.directory, data: data, output: output,
                                       specs: [QuantSpec(type: .int8, blockSize: 256)], context: 64, finetune: finetune)
            .run { phases.append("\($0.index)/\($0.count) \($0.label) \($0.phase.rawValue) \($0.detail ?? "")") }

        #expect(phases.contains("3/4 f32 training step 3/3") && phases.last == "4/4 nf4/64/dq8 training step 3/3")
        #expect(try scratch.contents() == ["dataset", "out", "stories.jsonl"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: output.path).sorted()
            == ["finetune.json", "finetune.svg", "kl_divergence.svg", "perplexity.svg", "results.csv", "results.json", "results.md"])
        #expect(report.files.map(\.lastPathComponent).contains("finetune.json") && report.plots.count == 3)

        let runs = report.finetune
        #expect(runs.map(\.type) == ["f32", "nf4"] && runs[1].blockSize == 64 && runs[1].doubleQuant == true)
        #expect(runs[0].bitsPerWeight == 32 && abs(runs[1].bitsPerWeight - 4.135) < 1e-3)
        #expect(runs[0].deltaValidLoss == 0 && abs(runs[1].deltaValidLoss - (runs[1].finalValidLoss - runs[0].finalValidLoss)) <= 1e-12)
        for run in runs {
            #expect(run.steps == 3 && run.validLossCurve.map(\.step) == [0, 1, 2, 3])
            #expect(run.initialValidLoss == run.validLossCurve[0].loss && run.finalValidLoss == run.validLossCurve[3].loss)
            #expect(run.finalValidLoss < run.initialValidLoss && run.trainLoss.isFinite && run.tokensPerSecond > 0)
        }
        // The packed base starts further from the data than full precision does.
        #expect(runs[1].initialValidLoss > runs[0].initialValidLoss)

        let json = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("finetune.json"))) as? [[String: Any]])
        #expect(json.count == 2 && json.allSatisfy { Set($0.keys) == Set(FinetuneRecord.CodingKeys.allCases.map(\.rawValue)) })
        #expect(json[0]["block_size"] is NSNull)
        let markdown = try String(contentsOf: output.appendingPathComponent("results.md"), encoding: .utf8)
        #expect(markdown == report.markdown && markdown.contains("## Fine-tuning") && markdown.contains("| nf4/64/dq8 | 4.135 | 3 |"))
        let svg = try Data(contentsOf: output.appendingPathComponent("finetune.svg"))
        #expect(XMLParser(data: svg).parse())
        #expect(String(decoding: svg, as: UTF8.self).contains(#"data-name="nf4/64 + DQ (QLoRA)""#))
    }

    @Test func aDatasetWithoutValidationSetIsRefusedFirst() throws {
        let scratch = try TemporaryDirectory("qlora-accuracy")
        defer { scratch.remove() }
        let dataset = try Self.dataset(train: 16, valid: nil, in: scratch.url)
        let finetune = AccuracySweep.Finetune(dataset: dataset, specs: [QuantSpec(type: .nf4, blockSize: 64)],
                                              configuration: AccuracySweep.Finetune.configuration(steps: 3, maxSequenceLength: 512))
        let sweep = AccuracySweep(model: EmbeddedModel.directory, data: try AccuracySweepTests.storySlice(4, in: scratch.url),
                                  output: scratch.appending("out"), specs: [QuantSpec(type: .int8, blockSize: 256)], context: 64,
                                  finetune: finetune)
        #expect(throws: AccuracySweepError.noValidationSet(dataset)) { try sweep.run() }
        #expect(try scratch.contents() == ["dataset", "stories.jsonl"])
    }
}
