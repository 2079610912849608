// Folding a LoRA adapter into its base model: W' = W + s·B·A for every module
// the adapter covers, written as a Hugging Face folder (fp32, fp16 or bf16) or
// as a packed checkpoint re-quantized with a given spec, with what the merge
// cost in accuracy. The base is a Hugging Face folder or a packed checkpoint
// (then W is its dequantized weight, which is what QLoRA trained against).
//
// Everything is checked before anything is written. Tensors are then processed
// one at a time, each in chunks, so memory holds one tensor's delta and a few
// chunks, and the output appears whole or not at all.

import Foundation
import QLoRAStorage

/// What `AdapterMerge.merge` writes.
public enum MergeFormat: Hashable, Sendable {
    /// A Hugging Face folder: config.json, the tokenizer files, and every tensor in
    /// `dtype` (F32, F16 or BF16) in model.safetensors, or in shards of at most
    /// `maxShardBytes` (a larger tensor gets a shard of its own) with
    /// model.safetensors.index.json.
    case huggingFace(dtype: TensorDType, maxShardBytes: Int)
    /// A packed checkpoint: the linear weights, and whatever the base stored
    /// quantized, quantized with `spec`; other tensors kept in their floating type.
    case packed(QuantSpec, compress: Bool)
}

public struct MergeOptions: Hashable, Sendable {
    /// transformers' default shard size ("5GB").
    public static let defaultMaxShardBytes = 5_000_000_000

    public var format: MergeFormat
    /// Replace an existing output: a packed file, or a folder holding a config.json.
    /// Without it, an existing file or non-empty folder is refused.
    public var overwrite: Bool

    public init(format: MergeFormat = .huggingFace(dtype: .F32, maxShardBytes: defaultMaxShardBytes), overwrite: Bool = false) {
        self.format = format
        self.overwrite = overwrite
    }
}

/// What a merge wrote and what it cost in accuracy.
public struct MergeSummary: Sendable, Codable {
    public struct Tensor: Sendable, Codable {
        public var name: String
        public var shape: [Int]
        /// How the output stores it: "F32", "BF16", "nf4/64/dq8", …
        public var storage: String
        /// Whether s·B·A was added to it.
        public var merged: Bool
        /// Merged tensors: the merged weights against the base weights, i.e. the size
        /// of s·B·A (RMS, max |·|, and relative to the base's RMS).
        public var change: ReconstructionError?
        /// The stored weights against the exact fp32 values they stand for (the
        /// merged weights for merged tensors); nil when stored exactly (fp32, or
        /// copied unchanged from the base).
        public var error: ReconstructionError?

        /// RMS of `error` over RMS of `change`: near or above 1, rounding or
        /// re-quantization has erased most of what the adapter changed.
        public var errorToChange: Double? {
            guard let change, let error, change.sumSquaredError > 0 else { return nil }
            return (error.sumSquaredError / change.sumSquaredError).squareRoot()
        }
    }

    public var output: String
    /// "safetensors F32" or "packed nf4/64/dq8".
    public var format: String
    public var rank: Int
    public var alpha: Float
    public var scaling: Float
    public var useRSLoRA: Bool
    /// Output tensors in the order written.
    public var tensors: [Tensor]
    /// Base tensors not carried over (unused by the configuration, or a tied head).
    public var skipped: [String]
    /// Files created in the output folder (empty for a packed file).
    public var files: [String]
    /// Size of s·B·A over all merged tensors.
    public var change: ReconstructionError
    /// Stored against exact merged weights, over all merged tensors.
    public var mergedError: ReconstructionError
    /// Stored against exact values, over every tensor not stored exactly.
    public var error: ReconstructionError
    /// `mergedError` RMS over `change` RMS (see `Tensor.errorToChange`); nil when
    /// the merged weights are stored exactly.
    public var errorToChange: Double?

    public var merged: [Tensor] { tensors.filter(\.merged) }

    init(output: String, format: String, configuration c: LoRAConfiguration, tensors: [Tensor], skipped: [String], files: [String]) {
        func combined(_ parts: [ReconstructionError]) -> ReconstructionError {
            parts.reduce(into: ReconstructionError()) { $0.merge($1) }
        }
        self.output = output
        self.format = format
        rank = c.rank
        alpha = c.alpha
        scaling = c.scaling
        useRSLoRA = c.useRSLoRA
        self.tensors = tensors
        self.skipped = skipped
        self.files = files
        let merged = tensors.filter(\.merged)
        change = combined(merged.compactMap(\.change))
        mergedError = combined(merged.compactMap(\.error))
        error = combined(tensors.compactMap(\.error))
        errorToChange = change.sumSquaredError > 0 && mergedError.count > 0
            ? (mergedError.sumSquaredError / change.sumSquaredError).squareRoot() : nil
    }
}

/// Why a merge was refused (file and format errors come as their own types).
public enum MergeError: Error, LocalizedError, Equatable {
    /// The adapter covers a module that is not a linear layer of the base.
    case moduleNotInBase(adapter: URL, module: String, base: URL)
    /// A and B do not fit the base weight: `base` is [out, in], A must be [r, in] and B [out, r].
    case shapeMismatch(adapter: URL, module: String, base: [Int], loraA: [Int], loraB: [Int])
    /// target_modules selects base modules the weight file has no tensors for.
    case modulesMissingFromAdapter(adapter: URL, modules: [String])
    /// The adapter changes lm_head, which the base ties to the embeddings.
    case tiedOutputHead(adapter: URL)
    /// Something is at the output path and overwriting was not asked for.
    case outputExists(URL)
    /// Something is at the output path that a merge would not replace.
    case outputNotReplaceable(URL, reason: String)
    /// A weight to be stored holds NaN or ±Inf (for a merged one: base + s·B·A).
    case nonFinite(tensor: String, index: Int, shape: [Int], value: Float)
    /// A finite weight is too large for the output type (F16 tops out at 65504).
    case outOfRange(tensor: String, index: Int, value: Float, dtype: TensorDType)
    case invalidOptions(String)

    public var errorDescription: String? {
        switch self {
        case let .moduleNotInBase(adapter, module, base):
            "\(adapter.path): the adapter changes module \"\(module)\", which is not a linear layer of the model in \(base.path); was it trained on another model?"
        case let .shapeMismatch(adapter, module, base, a, b):
            "\(adapter.path): module \"\(module)\": the base weight is \(base) but lora_A is \(a) and lora_B is \(b) (B·A must be \(base)); was the adapter trained on another model?"
        case let .modulesMissingFromAdapter(adapter, modules):
            "\(adapter.path): target_modules selects \(modules.count) module\(modules.count == 1 ? "" : "s") with no lora_A/lora_B weights in \(PEFTAdapter.weightsFileName) ("
                + modules.prefix(4).map { "\"\($0)\"" }.joined(separator: ", ") + (modules.count > 4 ? ", …" : "") + "); the adapter file is incomplete"
        case let .tiedOutputHead(adapter):
            "\(adapter.path): the adapter changes lm_head, but the model ties lm_head to the token embeddings; merging would change both"
        case let .outputExists(url):
            "\(url.path) exists and is not empty; pass --overwrite to replace it"
        case let .outputNotReplaceable(url, reason):
            "\(url.path): \(reason); not replacing it"
        case let .nonFinite(tensor, index, shape, value):
            "tensor \"\(tensor)\" would hold \(value) at element \(index)\(Self.position(index, shape)) (base + s·B·A for a merged weight); nothing was written"
        case let .outOfRange(tensor, index, value, dtype):
            "tensor \"\(tensor)\": \(value) at element \(index) does not fit \(dtype.rawValue); write F32 or BF16 instead"
        case let .invalidOptions(reason):
            "merge: \(reason)"
        }
    }

    private static func position(_ index: Int, _ shape: [Int]) -> String {
        guard shape.count == 2, shape[1] > 0 else { return "" }
        return " (row \(index / shape[1]), column \(index % shape[1]))"
    }
}

public enum AdapterMerge {
    /// Merges the LoRA adapter in `adapter` (PEFT's adapter_config.json and
    /// adapter_model.safetensors) into the model at `model` (a Hugging Face folder
    /// or a packed checkpoint) and writes the result to `output`.
    ///
    /// Every module the adapter's weight file covers gets W' = W + s·B·A, with
    /// s = lora_alpha/r (alpha/√r with use_rslora); W is the base weight in fp32, or
    /// the dequantized weight of a packed base. Everything else is carried over.
    ///
    /// - Parameter progress: called as chunks are done, with fp32 bytes of base
    ///   weights processed.
    /// - Returns: the tensors written, the size of each merged change, and the error
    ///   of whatever was stored lossily (fp16/bf16 rounding, re-quantization)
    ///   against the exact merged weights.
    /// - Throws: `ModelError.invalidAdapter` (missing files, unsupported PEFT
    ///   features), `MergeError` (an adapter that does not fit the base, an output
    ///   in the way, values that cannot be stored), `CheckpointError`,
    ///   `PackedCheckpointError`, `SafetensorsError`, `LlamaConfigurationError` for
    ///   the base, `FileError` for the output. Nothing is left at `output` then.
    public static func merge(model: URL, adapter adapterDirectory: URL, output: URL, options: MergeOptions = MergeOptions(),
                             progress: ((QuantizeProgress) -> Void)? = nil) throws -> MergeSummary {
        switch options.format {
        case let .huggingFace(dtype, maxShardBytes):
            guard TensorDType.floatWeightTypes.contains(dtype) else {
                throw MergeError.invalidOptions("the output type must be F32, F16 or BF16, not \(dtype.rawValue)")
            }
            guard maxShardBytes > 0 else { throw MergeError.invalidOptions("the shard size must be positive") }
        case let .packed(spec, _):
            guard QuantSpec.blockSizes.contains(spec.blockSize) else { throw BlockCodecError.invalidSpec(spec) }
        }
        let base = try MergeBase(url: model)
        let adapter = try PEFTAdapter(directory: adapterDirectory)
        let targets = try matchModules(adapter, base)
        let isFolder = if case .huggingFace = options.format { true } else { false }
        try checkOutput(output, folder: isFolder, overwrite: options.overwrite, inputs: [model, adapterDirectory])

        let run = MergeRun(base: base, adapter: adapter, targets: targets, progress: progress)
        let files: [String]
        let format: String
        switch options.format {
        case let .huggingFace(dtype, maxShardBytes):
            files = try run.writeFolder(output, dtype: dtype, maxShardBytes: maxShardBytes)
            format = "safetensors \(dtype.rawValue)"
        case let .packed(spec, compress):
            try run.writePacked(output, spec: spec, compress: compress,
                                metadata: ["producer": "qlora merge", "quantization": spec.description,
                                           "source": model.lastPathComponent, "adapter": adapterDirectory.lastPathComponent])
            files = []
            format = "packed \(spec)"
        }
        return MergeSummary(output: output.path, format: format, configuration: adapter.configuration, tensors: run.records,
                            skipped: base.skipped, files: files)
    }

    /// Base weight name → adapter module, after checking that every module of the
    /// adapter is a linear layer of the base with a weight that B·A fits, and that
    /// the file holds every module target_modules selects.
    static func matchModules(_ adapter: PEFTAdapter, _ base: MergeBase) throws -> [String: String] {
        let head = LlamaTensor.Kind.outputHead.rawValue
        let linear = base.configuration.tensorInventory.filter { $0.kind.isLinearWeight || $0.kind == .outputHead }.map(\.name)
        let shapes = Dictionary(uniqueKeysWithValues: base.tensors.map { ($0.name, $0.shape) })
        let r = adapter.configuration.rank
        var targets: [String: String] = [:]
        for module in adapter.modules {
            let weight = module + ".weight"
            if weight == head && base.configuration.tieWordEmbeddings { throw MergeError.tiedOutputHead(adapter: adapter.directory) }
            guard linear.contains(weight), let shape = shapes[weight] else {
                throw MergeError.moduleNotInBase(adapter: adapter.directory, module: module, base: base.url)
            }
            let (a, b) = try adapter.tensors(module: module)
            guard a.shape == [r, shape[1]], b.shape == [shape[0], r] else {
                throw MergeError.shapeMismatch(adapter: adapter.directory, module: module, base: shape, loraA: a.shape, loraB: b.shape)
            }
            targets[weight] = module
        }
        if !adapter.coversSomeLayersOnly {
            let missing = linear.filter { shapes[$0] != nil && targets[$0] == nil }
                .map { String($0.dropLast(".weight".count)) }
                .filter { adapter.selects($0, isOutputLayer: $0 + ".weight" == head) == true }
            guard missing.isEmpty else { throw MergeError.modulesMissingFromAdapter(adapter: adapter.directory, modules: missing) }
        }
        return targets
    }

    /// Refuses an output that is in the way before any work is done.
    static func checkOutput(_ output: URL, folder: Bool, overwrite: Bool, inputs: [URL]) throws {
        let resolved = output.standardizedFileURL.resolvingSymlinksInPath().path
        if inputs.contains(where: { $0.standardizedFileURL.resolvingSymlinksInPath().path == resolved }) {
            throw MergeError.outputNotReplaceable(output, reason: "it is one of the merge's inputs")
        }
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: output.path, isDirectory: &isDirectory) else { return }
        if folder {
            guard isDirectory.boolValue else { throw MergeError.outputNotReplaceable(output, reason: "it is a file, and the output is a model folder") }
            if (try? manager.contentsOfDirectory(atPath: output.path))?.isEmpty ?? false { return }
            guard overwrite else { throw MergeError.outputExists(output) }
            guard manager.fileExists(atPath: output.appendingPathComponent(HFCheckpoint.configFileName).path) else {
                throw MergeError.outputNotReplaceable(output, reason: "the folder holds no \(HFCheckpoint.configFileName), so it is not a model folder")
            }
        } else {
            guard !isDirectory.boolValue else { throw MergeError.outputNotReplaceable(output, reason: "it is a folder, and the output is a packed checkpoint file") }
            guard overwrite else { throw MergeError.outputExists(output) }
        }
    }
}
