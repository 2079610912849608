import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora merge --model PATH --adapter DIR --output OUT ...`: folds a PEFT LoRA
/// adapter into its base (a Hugging Face folder or a packed checkpoint) and writes
/// a Hugging Face folder, or with a block type a re-quantized packed checkpoint,
/// reporting what rounding or re-quantization cost against the exact merged weights.
struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Fold a LoRA adapter into its base model (W' = W + s·B·A).",
        discussion: """
            Without --type the output is a Hugging Face folder (config.json, tokenizer files, \
            model.safetensors or shards) in --dtype. With --type, --block-size or --double-quant it is \
            a packed checkpoint whose linear weights are quantized again; the report then gives the \
            error of the stored weights against the exact merged ones, and how it compares with the \
            size of the adapter's change.
            """
    )

    @Option(help: "The base model: a Hugging Face folder or a packed checkpoint.")
    var model: String

    @Option(help: "The PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors).")
    var adapter: String

    @Option(name: .shortAndLong, help: "The model folder, or packed checkpoint, to write.")
    var output: String

    @Option(help: "Type of every tensor in a Hugging Face output: f32, f16 or bf16.")
    var dtype: String?

    @Option(name: .customLong("max-shard-size"), help: "Largest safetensors shard of a Hugging Face output, e.g. 5GB, 500MB, 2GiB.")
    var maxShardSize: String?

    @Option(name: .customLong("type"), help: "Write a packed checkpoint with this block type: int8, int4, nf4 or fp4.")
    var type: String?

    @Option(name: .customLong("block-size"), help: "Weights per block of a packed output: 32, 64, 128 or 256 (default 64).")
    var blockSize: Int?

    @Flag(name: .customLong("double-quant"), help: "Packed output: store block scales as 8-bit codes with one fp32 scale per 256 blocks.")
    var doubleQuant = false

    @Flag(name: .customLong("fp16-scales"), help: "Packed output: store block scales as fp16.")
    var fp16Scales = false

    @Flag(name: .long, help: "Packed output: zstd-compress each tensor.")
    var compress = false

    @Flag(name: .long, help: "Replace an existing output (a packed file, or a folder holding a config.json).")
    var overwrite = false

    @Flag(name: .long, help: "Print the summary as JSON.")
    var json = false

    private var isPacked: Bool { type != nil || blockSize != nil || doubleQuant || fp16Scales || compress }

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        if isPacked {
            guard dtype == nil, maxShardSize == nil else {
                throw ValidationError("--dtype and --max-shard-size describe a Hugging Face output; --type, --block-size, --double-quant, --fp16-scales and --compress a packed one")
            }
            _ = try options
        } else {
            if let dtype, Self.dtypes[dtype.lowercased()] == nil {
                throw ValidationError("--dtype must be f32, f16 or bf16, not \(dtype)")
            }
            if let maxShardSize, Self.bytes(maxShardSize) == nil {
                throw ValidationError("--max-shard-size must be a positive size such as 5GB, 500MB or 2GiB, not \(maxShardSize)")
            }
        }
    }

    static let dtypes: [String: TensorDType] = ["f32": .F32, "fp32": .F32, "float32": .F32, "f16": .F16, "fp16": .F16,
                                                "float16": .F16, "bf16": .BF16, "bfloat16": .BF16]

    /// "5GB" (10^9, as transformers counts), "2GiB" (2^30), or plain bytes.
    static func bytes(_ text: String) -> Int? {
        let units: [(String, Int)] = [("KIB", 1 << 10), ("MIB", 1 << 20), ("GIB", 1 << 30), ("KB", 1_000), ("MB", 1_000_000),
                                      ("GB", 1_000_000_000), ("B", 1)]
        let upper = text.uppercased().trimmingCharacters(in: .whitespaces)
        let (unit, scale) = units.first { upper.hasSuffix($0.0) } ?? ("", 1)
        guard let value = Double(upper.dropLast(unit.count).trimmingCharacters(in: .whitespaces)), value > 0,
              value * Double(scale) < Double(Int.max) else { return nil }
        return Int(value * Double(scale))
    }

    var options: MergeOptions {
        get throws {
            guard isPacked else {
                return MergeOptions(format: .huggingFace(dtype: Self.dtypes[(dtype ?? "f32").lowercased()]!,
                                                         maxShardBytes: maxShardSize.flatMap(Self.bytes) ?? MergeOptions.defaultMaxShardBytes),
                                    overwrite: overwrite)
            }
            let spec = try quantSpec(type: type ?? "nf4", blockSize: blockSize ?? 64, doubleQuant: doubleQuant, fp16Scales: fp16Scales)
            return MergeOptions(format: .packed(spec, compress: compress), overwrite: overwrite)
        }
    }

    func run() throws {
        try compute.apply()
        let line = ProgressLine()
        let summary: MergeSummary
        do {
            defer { line.finish() }
            summary = try AdapterMerge.merge(model: URL(fileURLWithPath: model), adapter: URL(fileURLWithPath: adapter),
                                             output: URL(fileURLWithPath: output), options: options, progress: line.update)
        }
        try printSummary(summary, json: json) { Self.text(summary) }
    }

    static func text(_ s: MergeSummary) -> String {
        var lines = ["wrote \(s.output) (\(s.format))"]
        lines.append(String(format: "merged %d modules: rank %d, alpha %g, scaling %g%@", s.merged.count, s.rank, s.alpha, s.scaling,
                            s.useRSLoRA ? " (rsLoRA)" : ""))
        if !s.files.isEmpty { lines.append("files: \(s.files.joined(separator: ", "))") }
        if !s.skipped.isEmpty { lines.append("skipped: \(s.skipped.joined(separator: ", "))") }
        let c = s.change
        lines.append(String(format: "adapter change s·B·A: RMS %.3e, max |·| %.3e, %.4f of the base weights' RMS",
                            c.rms, c.maxAbs, c.relativeRMS))
        let stored = s.tensors.filter { $0.error != nil }
        guard !stored.isEmpty else {
            lines.append("stored exactly: the written weights are the merged weights")
            return lines.joined(separator: "\n")
        }
        let e = s.mergedError, all = s.error
        lines.append(String(format: "error against the exact merged weights: RMS %.3e, relative RMS %.4f, max |error| %.3e",
                            e.rms, e.relativeRMS, e.maxAbs))
        if let ratio = s.errorToChange {
            lines.append(String(format: "error RMS / change RMS: %.3f%@", ratio,
                                ratio >= 0.5 ? " (storing erased much of what the adapter changed; consider f32/bf16 output)" : ""))
        }
        if stored.count > s.merged.count {
            lines.append(String(format: "error over all %d re-stored tensors: RMS %.3e, relative RMS %.4f, max |error| %.3e",
                                stored.count, all.rms, all.relativeRMS, all.maxAbs))
        }
        let worst = s.merged.filter { $0.error != nil }.sorted { $0.error!.relativeRMS > $1.error!.relativeRMS }.prefix(5)
        if !worst.isEmpty {
            lines.append("merged tensors with the largest relative error:")
            for t in worst {
                lines.append(String(format: "  %@  relative RMS %.4f, RMS %.3e, max |error| %.3e, error/change %.3f", t.name,
                                    t.error!.relativeRMS, t.error!.rms, t.error!.maxAbs, t.errorToChange ?? 0))
            }
        }
        return lines.joined(separator: "\n")
    }
}
