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
        """
    )

    @Option(help: "The Hugging Face model folder to quantize.")
    var model: String

    @Option(help: "The evaluation data: plain text, or JSON lines with \"text\" or \"input_ids\".")
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

    @Flag(help: "Print results.json instead of the Markdown table.")
    var json = false

    func validate() throws {
        _ = try sweep()
    }

    private func sweep() throws -> AccuracySweep {
        guard let choice = AccuracySweep.DoubleQuant(rawValue: doubleQuant) else {
            throw ValidationError("--double-quant must be one of \(AccuracySweep.DoubleQuant.allCases.map(\.rawValue).joined(separator: ", ")), not \(doubleQuant)")
        }
        do {
            let specs = AccuracySweep.specs(types: try AccuracySweep.parseTypes(types),
                                            blockSizes: try AccuracySweep.parseBlockSizes(blockSizes), doubleQuant: choice)
            return AccuracySweep(model: URL(fileURLWithPath: model), data: URL(fileURLWithPath: data),
                                 output: URL(fileURLWithPath: output), specs: specs, context: context, overwrite: overwrite)
        } catch let error as AccuracySweepError {
            throw ValidationError(error.localizedDescription)
        }
    }

    func run() throws {
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
                line.show("[\(p.index)/\(p.count)] \(p.label): \(p.phase.rawValue)  elapsed \(ProgressLine.clock(elapsed))  ETA \(eta)", force: true)
            }
        }
        if json {
            FileHandle.standardOutput.write(try Data(contentsOf: report.files[0]))
            return
        }
        print(report.markdown, terminator: "")
        let tokens = report.records.first?.tokens ?? 0
        print("\(tokens) tokens scored per model (\(report.sequences) sequences, context \(report.context)); wrote \(report.output.path)")
        for plot in report.plots { print("plot: \(plot.path)") }
    }
}
