import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora bench accuracy --model HF_DIR --data FILE ...`: every block format's
/// cost in accuracy against the full-precision model. The work is
/// `AccuracySweep`'s; this shows progress and prints the table.
struct BenchAccuracyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accuracy",
        abstract: "Quantize a model in every type and block size and measure each against full precision on a data file.",
        discussion: """
        For every combination the model is quantized to a temporary packed file (removed afterwards) and \
        evaluated twice on FILE: alone, for perplexity, tokens/s and peak resident memory (the peak counter \
        is restarted before each model is opened; Linux only, null elsewhere), and next to the \
        full-precision model, for the mean KL divergence of the next-token distributions and top-1 \
        agreement. Embeddings and norms stay in full precision, as `qlora quantize` keeps them by default. \
        The output folder gets results.json, results.csv, results.md and two SVG plots (KL divergence \
        and perplexity against bits per weight); it is written whole at the end.

        With --finetune DIR (train.jsonl and valid.jsonl), the same short LoRA run (r=8, alpha 16, every \
        projection, batch 8, cosine schedule from 5e-4, seed 42) trains over the full-precision model and \
        over each type's packed model (block 64 and double quantization where the sweep has them), and \
        finetune.json, finetune.svg and a second table in results.md record the validation loss.
        """
    )

    @Option(help: "The Hugging Face model folder to quantize.")
    var model: String

    @Option(help: "The evaluation data: plain text, or JSON lines with \"text\" or \"input_ids\" (every token scored), or in the fine-tuning formats (\"prompt\"/\"completion\", or \"messages\" rendered by the model's own chat template), where only completions are scored.")
    var data: String

    @Option(help: "Block types, comma-separated: int8, int4, nf4, fp4.")
    var types = "int8,int4,nf4,fp4"

    @Option(name: .customLong("block-sizes"), help: "Block sizes, comma-separated: 32, 64, 128, 256.")
    var blockSizes = "32,64,128,256"

    @Option(name: .customLong("double-quant"), help: "Scale storage: off (fp32 scales), on (QLoRA's double quantization) or both.")
    var doubleQuant = AccuracySweep.DoubleQuant.both.rawValue

    @Option(help: "The folder to write (created; it must not exist or be empty unless --overwrite).")
    var output = "accuracy"

    @Flag(help: "Replace the output folder of an earlier sweep.")
    var overwrite = false

    @Option(help: "Tokens per evaluation window (default: max_position_embeddings, at most 2048).")
    var context: Int?

    @Option(help: "Also fine-tune each type's packed base and the full-precision model on this dataset folder (train.jsonl, valid.jsonl).")
    var finetune: String?

    @Option(name: .customLong("finetune-steps"), help: "Optimizer steps of each fine-tuning run.")
    var finetuneSteps = 100

    @Flag(name: .customLong("no-eos"), help: "Fine-tuning, and --data in the fine-tuning formats: do not append the tokenizer's end-of-sequence token to texts and completions.")
    var noEOS = false

    @OptionGroup var chatTemplate: ChatTemplateOption

    @Flag(help: "Print results.json instead of the Markdown tables (with --finetune, an object holding it as \"results\" and finetune.json as \"finetune\").")
    var json = false

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        _ = try sweep()
    }

    private func sweep() throws -> AccuracySweep {
        guard let choice = AccuracySweep.DoubleQuant(rawValue: doubleQuant) else {
            throw ValidationError("--double-quant must be one of \(AccuracySweep.DoubleQuant.allCases.map(\.rawValue).joined(separator: ", ")), not \(doubleQuant)")
        }
        guard finetuneSteps >= 1 else { throw ValidationError("--finetune-steps must be at least 1") }
        do {
            let types = try AccuracySweep.parseTypes(types), blocks = try AccuracySweep.parseBlockSizes(blockSizes)
            let modelURL = URL(fileURLWithPath: model)
            let tuning = finetune.map { dataset in
                // Examples as long as the model takes, at most 1024 tokens (an unreadable model
                // folder is left for the sweep to report).
                let configURL = modelURL.appendingPathComponent(HFCheckpoint.configFileName)
                let positions = (try? LlamaConfiguration(jsonData: Data(contentsOf: configURL), source: configURL).maxPositionEmbeddings) ?? 1024
                return AccuracySweep.Finetune(
                    dataset: URL(fileURLWithPath: dataset),
                    specs: AccuracySweep.Finetune.specs(types: types, blockSizes: blocks, doubleQuant: choice),
                    configuration: AccuracySweep.Finetune.configuration(steps: finetuneSteps, maxSequenceLength: min(1024, positions),
                                                                        appendEOS: !noEOS))
            }
            var sweep = AccuracySweep(model: modelURL, data: URL(fileURLWithPath: data), output: URL(fileURLWithPath: output),
                                      specs: AccuracySweep.specs(types: types, blockSizes: blocks, doubleQuant: choice),
                                      context: context, overwrite: overwrite, finetune: tuning)
            sweep.chatTemplate = try chatTemplate.template()
            sweep.appendEOS = !noEOS
            return sweep
        } catch let error as AccuracySweepError {
            throw ValidationError(error.localizedDescription)
        }
    }

    func run() throws {
        try compute.apply()
        let line = ProgressLine()
        let started = Date()
        let report: AccuracySweep.Report
        do {
            defer { line.finish() }
            report = try sweep().run { p in
                // Time left: the mean time of the rows done so far, for each row not yet done.
                let elapsed = Date().timeIntervalSince(started)
                let done = p.index - 1
                let eta = done > 0 ? ProgressLine.clock(elapsed / Double(done) * Double(p.count - done)) : "–"
                let what = p.phase == .training ? "fine-tuning" + (p.detail.map { " \($0)" } ?? "") : p.phase.rawValue
                line.show("[\(p.index)/\(p.count)] \(p.label): \(what)  elapsed \(ProgressLine.clock(elapsed))  ETA \(eta)", force: p.detail == nil)
            }
        }
        if json {
            let results = try Data(contentsOf: report.files[0])
            guard let finetune = report.files.first(where: { $0.lastPathComponent == "finetune.json" }) else {
                FileHandle.standardOutput.write(results)
                return
            }
            // One JSON document: both arrays under their file names' stems.
            let object: [String: Any] = ["results": try JSONSerialization.jsonObject(with: results),
                                         "finetune": try JSONSerialization.jsonObject(with: Data(contentsOf: finetune))]
            FileHandle.standardOutput.write(try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]))
            print()
            return
        }
        print(report.markdown, terminator: "")
        let tokens = report.records.first?.tokens ?? 0
        print("\(tokens) tokens scored per model (\(report.sequences) sequences, context \(report.context)); wrote \(report.output.path)")
        for plot in report.plots { print("plot: \(plot.path)") }
    }
}
