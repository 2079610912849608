import CQLoRAKernels
import Foundation

// From a Hugging Face folder to a packed checkpoint, one tensor at a time: each
// tensor is converted to fp32 a chunk at a time straight from the mapped
// safetensors file, packed, measured against the original, written, and its
// source pages dropped, so resident memory stays near the largest single tensor.

/// What `Quantizer.quantize` does with a model.
public struct QuantizeOptions: Hashable, Sendable {
    /// Type, block size and scale storage of every quantized tensor.
    public var spec: QuantSpec
    /// Also quantize the token embeddings and the output head (kept in their
    /// floating type by default: they are lookups or the logits, and sensitive).
    public var quantizeEmbeddings: Bool
    /// zstd-compress each tensor (smaller file, but tensors load into memory, not in place).
    public var compress: Bool
    /// Store weights holding NaN or ±Inf instead of refusing them.
    public var allowNonFinite: Bool
    /// Testing hook: fail the output write like a full disk after this many bytes.
    public var simulateDiskFullAfter: Int?

    public init(spec: QuantSpec, quantizeEmbeddings: Bool = false, compress: Bool = false, allowNonFinite: Bool = false) {
        self.spec = spec
        self.quantizeEmbeddings = quantizeEmbeddings
        self.compress = compress
        self.allowNonFinite = allowNonFinite
    }
}

/// Where a running quantization is.
public struct QuantizeProgress: Sendable {
    public var tensor: String
    /// 1-based position of `tensor` among `tensorCount`.
    public var tensorIndex: Int
    public var tensorCount: Int
    /// Source bytes processed so far, of `bytesTotal`.
    public var bytesDone: Int
    public var bytesTotal: Int
}

/// What a quantization produced and how much it cost in accuracy.
public struct QuantizeSummary: Sendable, Codable {
    public struct Tensor: Sendable, Codable {
        public var name: String
        /// "nf4/64/dq8", or the floating type it was kept in.
        public var storage: String
        public var shape: [Int]
        public var parameters: Int
        public var sourceBytes: Int
        /// Codes + scales + group scales, or the elements (no padding).
        public var payloadBytes: Int
        /// Quantized tensors only.
        public var error: ReconstructionError?
    }

    public var output: String
    public var spec: QuantSpec
    public var tensors: [Tensor]
    /// Source tensors not carried over: ones the configuration does not use.
    public var skipped: [String]
    public var sourceBytes: Int
    public var fileBytes: Int
    /// Error over all quantized weights together.
    public var error: ReconstructionError

    public var quantized: [Tensor] { tensors.filter { $0.error != nil } }
    public var parameters: Int { tensors.reduce(0) { $0 + $1.parameters } }
    public var quantizedParameters: Int { quantized.reduce(0) { $0 + $1.parameters } }
    public var payloadBytes: Int { tensors.reduce(0) { $0 + $1.payloadBytes } }
    /// Bits per weight of the whole model (every stored tensor).
    public var bitsPerWeight: Double { Self.bits(tensors) }
    /// Bits per weight of the quantized tensors alone.
    public var quantizedBitsPerWeight: Double { Self.bits(quantized) }

    /// The `n` quantized tensors with the largest relative RMS error.
    public func worstTensors(_ n: Int) -> [Tensor] {
        Array(quantized.sorted { $0.error!.relativeRMS > $1.error!.relativeRMS }.prefix(n))
    }

    private static func bits(_ ts: [Tensor]) -> Double {
        let n = ts.reduce(0) { $0 + $1.parameters }
        return n == 0 ? 0 : Double(ts.reduce(0) { $0 + $1.payloadBytes } * 8) / Double(n)
    }
}

/// Why a quantization stopped (file and format errors come as their own types).
public enum QuantizerError: Error, LocalizedError, Equatable {
    case nonFinite(URL, tensor: String, index: Int, shape: [Int], value: Float)

    public var errorDescription: String? {
        switch self {
        case let .nonFinite(url, tensor, index, shape, value):
            let cols = shape.count > 1 ? shape.last! : 0
            let position = cols > 0 ? " (row \(index / cols), column \(index % cols))" : ""
            return "\(url.path): tensor \"\(tensor)\" holds \(value) at element \(index)\(position); refusing to quantize it (allow non-finite weights, --allow-nonfinite, to store it anyway)"
        }
    }
}

public enum Quantizer {
    /// Elements converted per step: a multiple of every block size (1 MB of fp32).
    static let chunkElements = 1 << 18

    /// Packs the model in `modelDirectory` into a packed checkpoint at `output`.
    ///
    /// The seven projections of every block are quantized with `options.spec`; the
    /// embeddings and output head too when `options.quantizeEmbeddings`; everything
    /// else (norms, biases) is stored in its source type. A tied output head is not
    /// stored (it is the embedding). The tokenizer files are embedded.
    ///
    /// - Throws: `CheckpointError`, `SafetensorsError`, `LlamaConfigurationError` for the
    ///   source; `FileError` for the output (missing folder, disk full — nothing is left at
    ///   `output` then); `QuantizerError.nonFinite` for a NaN/Inf weight unless allowed.
    public static func quantize(modelDirectory: URL, output: URL, options: QuantizeOptions,
                                progress: ((QuantizeProgress) -> Void)? = nil) throws -> QuantizeSummary {
        let spec = options.spec
        guard QuantSpec.blockSizes.contains(spec.blockSize) else { throw BlockCodecError.invalidSpec(spec) }
        let model = try HFCheckpoint(directory: modelDirectory)
        let unexpected = try model.validate()
        let tied = model.configuration.tieWordEmbeddings
        let plan = model.configuration.tensorInventory.filter { model.contains($0.name) && !(tied && $0.kind == .outputHead) }
        let skipped = unexpected + (tied && model.contains(LlamaTensor.Kind.outputHead.rawValue) ? [LlamaTensor.Kind.outputHead.rawValue] : [])

        let writer = try PackedCheckpointWriter(
            url: output, configJSON: model.configJSON,
            metadata: ["producer": "qlora quantize", "quantization": spec.description,
                       "quantize_embeddings": String(options.quantizeEmbeddings), "source": modelDirectory.lastPathComponent],
            compress: options.compress)
        writer.simulateDiskFullAfter = options.simulateDiskFullAfter
        for url in model.tokenizerFiles {
            try writer.addFile(name: url.lastPathComponent, contents: MappedFile.contents(of: url))
        }

        let locations = try plan.map { try model.location(of: $0.name) }
        let bytesTotal = locations.reduce(0) { $0 + $1.info.byteRange.count }
        var state = Progress(total: bytesTotal, count: plan.count, report: progress)
        var records: [QuantizeSummary.Tensor] = []
        var overall = ReconstructionError()
        for (i, (tensor, location)) in zip(plan, locations).enumerated() {
            state.start(tensor.name, index: i + 1)
            let isQuantized = tensor.kind.isLinearWeight
                || (options.quantizeEmbeddings && (tensor.kind == .embedding || tensor.kind == .outputHead))
            let info = location.info
            var record = QuantizeSummary.Tensor(name: info.name, storage: info.dtype.rawValue, shape: info.shape,
                                                parameters: info.count, sourceBytes: info.byteRange.count,
                                                payloadBytes: info.byteRange.count, error: nil)
            if isQuantized && info.count > 0 {
                let (q, error) = try pack(location, spec: spec, allowNonFinite: options.allowNonFinite, progress: &state)
                try writer.add(q, name: info.name)
                record.storage = spec.description
                record.payloadBytes = q.layout.totalBytes
                record.error = error
                overall.merge(error)
            } else {
                if !options.allowNonFinite { try checkFinite(location) }
                try writer.add(name: info.name, dtype: info.dtype, shape: info.shape, bytes: location.file.file.bytes(info.byteRange))
                state.advance(info.byteRange.count)
            }
            // Done with this tensor: drop its source pages from our resident set.
            location.file.file.release(info.byteRange)
            records.append(record)
        }
        try writer.finish()
        let fileBytes = (try? FileManager.default.attributesOfItem(atPath: output.path)[.size] as? Int) ?? nil
        return QuantizeSummary(output: output.path, spec: spec, tensors: records, skipped: skipped,
                               sourceBytes: bytesTotal, fileBytes: fileBytes ?? writer.bytesWritten, error: overall)
    }

    /// Quantizes one tensor chunk by chunk, then measures it against the source in a
    /// second pass (the stored scales, DQ8 in particular, exist only at the end).
    private static func pack(_ location: TensorLocation, spec: QuantSpec, allowNonFinite: Bool,
                             progress: inout Progress) throws -> (QuantizedTensor, ReconstructionError) {
        let info = location.info, file = location.file
        let encoder = try BlockEncoder(spec: spec, shape: info.shape)
        let chunk = min(chunkElements, info.count)
        var x = [Float](repeating: 0, count: chunk)
        let bytesPerElement = info.dtype.byteSize
        try x.withUnsafeMutableBufferPointer { x in
            for start in stride(from: 0, to: info.count, by: chunk) {
                let n = min(chunk, info.count - start)
                try file.readFloats(info.name, elements: start..<(start + n), into: x)
                if !allowNonFinite {
                    let k = Int(qk_find_nonfinite(x.baseAddress!, Int64(n)))
                    if k >= 0 {
                        throw QuantizerError.nonFinite(file.url, tensor: info.name, index: start + k, shape: info.shape, value: x[k])
                    }
                }
                encoder.encode(UnsafeBufferPointer(rebasing: x[0..<n]))
                progress.advance(n * bytesPerElement)
            }
        }
        let q = encoder.finish()

        var error = ReconstructionError()
        var y = [Float](repeating: 0, count: chunk + spec.blockSize)
        try x.withUnsafeMutableBufferPointer { x in
            try y.withUnsafeMutableBufferPointer { y in
                for start in stride(from: 0, to: info.count, by: chunk) {
                    let n = min(chunk, info.count - start)
                    try file.readFloats(info.name, elements: start..<(start + n), into: x)
                    let first = start / spec.blockSize
                    q.dequantize(blocks: first..<((start + n + spec.blockSize - 1) / spec.blockSize), into: y.baseAddress!)
                    error.add(reference: UnsafeBufferPointer(rebasing: x[0..<n]), approximation: UnsafeBufferPointer(rebasing: y[0..<n]),
                              firstIndex: start)
                }
            }
        }
        return (q, error)
    }

    private static func checkFinite(_ location: TensorLocation) throws {
        do {
            try location.file.checkFinite(location.info.name)
        } catch let SafetensorsError.nonFinite(url, tensor, index, value) {
            throw QuantizerError.nonFinite(url, tensor: tensor, index: index, shape: location.info.shape, value: value)
        }
    }

    /// Counts source bytes and calls the caller's closure.
    private struct Progress {
        let total: Int
        let count: Int
        let report: ((QuantizeProgress) -> Void)?
        var done = 0
        var name = ""
        var index = 0

        init(total: Int, count: Int, report: ((QuantizeProgress) -> Void)?) {
            self.total = total
            self.count = count
            self.report = report
        }

        mutating func start(_ tensor: String, index: Int) {
            name = tensor
            self.index = index
            send()
        }

        mutating func advance(_ bytes: Int) {
            done += bytes
            send()
        }

        private func send() {
            report?(QuantizeProgress(tensor: name, tensorIndex: index, tensorCount: count, bytesDone: done, bytesTotal: total))
        }
    }
}
