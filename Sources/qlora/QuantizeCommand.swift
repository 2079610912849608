import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora quantize MODEL_DIR --output FILE ...`: a Hugging Face folder in, a packed
/// checkpoint out, with a progress line on a terminal and a summary of the cost.
struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Pack a Hugging Face Llama checkpoint into a packed checkpoint (formats/packed-checkpoint.md)."
    )

    @Argument(help: "The Hugging Face model folder: config.json, *.safetensors, tokenizer files.")
    var modelDirectory: String

    @Option(name: .shortAndLong, help: "The packed checkpoint to write (replaced atomically if it exists).")
    var output: String

    @Option(name: .customLong("type"), help: "Block data type: int8, int4, nf4 or fp4.")
    var type = "nf4"

    @Option(name: .customLong("block-size"), help: "Weights per block: 32, 64, 128 or 256.")
    var blockSize = 64

    @Flag(name: .customLong("double-quant"), help: "Store block scales as 8-bit codes with one fp32 scale per 256 blocks (QLoRA's double quantization).")
    var doubleQuant = false

    @Flag(name: .customLong("fp16-scales"), help: "Store block scales as fp16 instead of fp32.")
    var fp16Scales = false

    @Flag(name: .customLong("quantize-embeddings"), help: "Also quantize the token embeddings and the output head.")
    var quantizeEmbeddings = false

    @Flag(name: .long, help: "zstd-compress each tensor (smaller file; tensors then load into memory instead of being mapped).")
    var compress = false

    @Flag(name: .customLong("allow-nonfinite"), help: "Store weights holding NaN or Inf instead of refusing them.")
    var allowNonFinite = false

    @Flag(name: .long, help: "Print the summary as JSON.")
    var json = false

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        _ = try options
    }

    var options: QuantizeOptions {
        get throws {
            QuantizeOptions(spec: try quantSpec(type: type, blockSize: blockSize, doubleQuant: doubleQuant, fp16Scales: fp16Scales),
                            quantizeEmbeddings: quantizeEmbeddings, compress: compress, allowNonFinite: allowNonFinite,
                            threads: try compute.requested())
        }
    }

    func run() throws {
        let line = ProgressLine()
        let summary: QuantizeSummary
        do {
            defer { line.finish() }
            summary = try Quantizer.quantize(modelDirectory: URL(fileURLWithPath: modelDirectory),
                                             output: URL(fileURLWithPath: output), options: options, progress: line.update)
        }
        try printSummary(summary, json: json) { Self.text(summary) }
    }

    static func text(_ s: QuantizeSummary) -> String {
        let kept = s.tensors.count - s.quantized.count
        var lines = ["wrote \(s.output) (\(s.spec))"]
        lines.append("tensors: \(s.quantized.count) quantized, \(kept) kept in their floating type"
                     + (s.skipped.isEmpty ? "" : ", \(s.skipped.count) skipped (\(s.skipped.joined(separator: ", ")))"))
        lines.append("size: \(Format.bytes(s.sourceBytes)) of weights -> \(Format.bytes(s.payloadBytes)) (file \(Format.bytes(s.fileBytes)))")
        lines.append(String(format: "bits per weight: %.4f quantized tensors, %.4f whole model", s.quantizedBitsPerWeight, s.bitsPerWeight))
        if let worst = s.quantized.max(by: { $0.error!.maxAbs < $1.error!.maxAbs }), let e = worst.error {
            lines.append(String(format: "error over quantized weights: RMS %.3e, relative RMS %.4f, max |error| %.3e (%@, element %d)",
                                s.error.rms, s.error.relativeRMS, e.maxAbs, worst.name, e.maxAbsIndex))
            lines.append("worst tensors by relative RMS:")
            for t in s.worstTensors(5) {
                lines.append(String(format: "  %@  relative RMS %.4f, RMS %.3e, max |error| %.3e", t.name, t.error!.relativeRMS, t.error!.rms, t.error!.maxAbs))
            }
        }
        return lines.joined(separator: "\n")
    }
}
