import CQLoRAKernels
import Foundation

// From a Hugging Face folder to a packed checkpoint, one tensor at a time: each
// tensor is converted to fp32 a chunk at a time straight from the mapped
// safetensors file, packed on all cores, measured against the original and
// written, its source pages dropped behind it, so resident memory stays near one
// packed tensor plus a few chunks however large the model.

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
    /// Chunks quantized at once; nil = one per CPU this process may use. The
    /// output does not depend on it.
    public var threads: Int?

    public init(spec: QuantSpec, quantizeEmbeddings: Bool = false, compress: Bool = false, allowNonFinite: Bool = false,
                threads: Int? = nil) {
        self.spec = spec
        self.quantizeEmbeddings = quantizeEmbeddings
        self.compress = compress
        self.allowNonFinite = allowNonFinite
        self.threads = threads
    }
}

/// Where a running quantization (or merge) is.
public struct QuantizeProgress: Sendable {
    public var tensor: String
    /// 1-based position of `tensor` among `tensorCount`.
    public var tensorIndex: Int
    public var tensorCount: Int
    /// Source bytes processed so far, of `bytesTotal`.
    public var bytesDone: Int
    public var bytesTotal: Int

    public init(tensor: String, tensorIndex: Int, tensorCount: Int, bytesDone: Int, bytesTotal: Int) {
        self.tensor = tensor
        self.tensorIndex = tensorIndex
        self.tensorCount = tensorCount
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
    }
}

/// What a quantization produced and how much it cost in accuracy.
public struct QuantizeSummary: Sendable, Encodable {
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

    private enum CodingKeys: String, CodingKey {
        case output, spec, tensors, skipped, sourceBytes, fileBytes, error
        case bitsPerWeight, quantizedBitsPerWeight
    }

    // The two bit rates are derived, but they are what a user of `quantize --json`
    // looks for first, so they are written out too (and ignored when decoding).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(output, forKey: .output)
        try c.encode(spec, forKey: .spec)
        try c.encode(tensors, forKey: .tensors)
        try c.encode(skipped, forKey: .skipped)
        try c.encode(sourceBytes, forKey: .sourceBytes)
        try c.encode(fileBytes, forKey: .fileBytes)
        try c.encode(error, forKey: .error)
        try c.encode(bitsPerWeight, forKey: .bitsPerWeight)
        try c.encode(quantizedBitsPerWeight, forKey: .quantizedBitsPerWeight)
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
                let (q, error) = try pack(location, spec: spec, allowNonFinite: options.allowNonFinite, threads: options.threads,
                                          progress: &state)
                try writer.add(q, name: info.name)
                record.storage = spec.description
                record.payloadBytes = q.layout.totalBytes
                record.error = error
                overall.merge(error)
            } else {
                // Streamed from the map: each slice is checked once written, then its pages dropped.
                let source = location.file.file, start = info.byteRange.lowerBound
                try writer.add(name: info.name, dtype: info.dtype, shape: info.shape, bytes: source.bytes(info.byteRange)) { written in
                    if !options.allowNonFinite { try checkFinite(location, bytes: written) }
                    source.release((start + written.lowerBound)..<(start + written.upperBound))
                    state.advance(written.count)
                }
            }
            records.append(record)
        }
        try writer.finish()
        let fileBytes = (try? FileManager.default.attributesOfItem(atPath: output.path)[.size] as? Int) ?? nil
        return QuantizeSummary(output: output.path, spec: spec, tensors: records, skipped: skipped,
                               sourceBytes: bytesTotal, fileBytes: fileBytes ?? writer.bytesWritten, error: overall)
    }

    /// Quantizes one tensor chunk by chunk, a batch of chunks at a time on all cores,
    /// then measures it against the source in a second pass (the stored scales, DQ8
    /// in particular, exist only at the end).
    private static func pack(_ location: TensorLocation, spec: QuantSpec, allowNonFinite: Bool, threads: Int?,
                             progress: inout Progress) throws -> (QuantizedTensor, ReconstructionError) {
        let info = location.info, file = location.file
        let encoder = try BlockEncoder(spec: spec, shape: info.shape)
        let chunk = min(chunkElements, info.count)
        let chunks = (info.count + chunk - 1) / chunk
        let workers = max(1, min(threads ?? ProcessInfo.processInfo.activeProcessorCount, chunks))
        // Per worker: the chunk in fp32, then room for its dequantized blocks (padding included).
        let stride = chunk + spec.blockSize
        guard let scratch = AlignedBuffer(count: 2 * workers * stride * 4) else {
            throw BlockCodecError.outOfMemory(bytes: 2 * workers * stride * 4)
        }
        let floats = scratch.base.assumingMemoryBound(to: Float.self)
        defer { withExtendedLifetime(scratch) {} }  // `floats` points into it
        func elements(_ c: Int) -> Range<Int> { (c * chunk)..<min(info.count, (c + 1) * chunk) }

        // Runs `body(chunk, x, y)` for every chunk, `workers` at a time, with x holding
        // the chunk's elements in fp32 and y the worker's second buffer; returns each
        // chunk's result in chunk order, and calls `after` with each batch done.
        func forEachChunk<R>(_ body: (Int, UnsafeMutableBufferPointer<Float>, UnsafeMutablePointer<Float>) throws -> R,
                             after: (Range<Int>) -> Void) throws -> [R] {
            var results: [R] = []
            for first in Swift.stride(from: 0, to: chunks, by: workers) {
                let batch = first..<min(chunks, first + workers)
                let slots = UnsafeMutableBufferPointer<Result<R, Error>?>.allocate(capacity: batch.count)
                slots.initialize(repeating: nil)
                defer {
                    slots.deinitialize()
                    slots.deallocate()
                }
                concurrentForEach(batch.count) { w in
                    let c = batch.lowerBound + w
                    let x = UnsafeMutableBufferPointer(start: floats + 2 * w * stride, count: elements(c).count)
                    slots[w] = Result {
                        try file.readFloats(info.name, elements: elements(c), into: x)
                        return try body(c, x, floats + (2 * w + 1) * stride)
                    }
                }
                // The lowest failing chunk wins, so errors do not depend on scheduling.
                for w in 0..<batch.count { results.append(try slots[w]!.get()) }
                after(batch)
            }
            return results
        }

        // Each batch's source pages are dropped once read: the second pass finds them in
        // the page cache, and resident memory stays at a few chunks even for an embedding.
        let size = info.dtype.byteSize
        func release(_ batch: Range<Int>) {
            let first = elements(batch.lowerBound).lowerBound, last = elements(batch.upperBound - 1).upperBound
            file.file.release((info.byteRange.lowerBound + first * size)..<(info.byteRange.lowerBound + last * size))
        }
        _ = try forEachChunk({ c, x, _ in
            if !allowNonFinite {
                let k = Int(qk_find_nonfinite(x.baseAddress!, Int64(x.count)))
                if k >= 0 {
                    throw QuantizerError.nonFinite(file.url, tensor: info.name, index: c * chunk + k, shape: info.shape, value: x[k])
                }
            }
            encoder.encode(UnsafeBufferPointer(x), at: c * chunk)
        }, after: { batch in
            release(batch)
            progress.advance((elements(batch.upperBound - 1).upperBound - elements(batch.lowerBound).lowerBound) * size)
        })
        let q = encoder.finish()

        let parts = try forEachChunk({ c, x, y in
            let range = elements(c)
            let blocks = (range.lowerBound / spec.blockSize)..<((range.upperBound + spec.blockSize - 1) / spec.blockSize)
            q.dequantize(blocks: blocks, into: y)
            var e = ReconstructionError()
            e.add(reference: UnsafeBufferPointer(x), approximation: UnsafeBufferPointer(start: y, count: x.count), firstIndex: range.lowerBound)
            return e
        }, after: release)
        let error = parts.reduce(into: ReconstructionError()) { $0.merge($1) }
        return (q, error)
    }

    /// Throws `nonFinite` for the first NaN or ±Inf among the tensor's bytes `bytes`
    /// (relative to the tensor; whole elements).
    private static func checkFinite(_ location: TensorLocation, bytes: Range<Int>) throws {
        let info = location.info, size = info.dtype.byteSize
        let elements = (bytes.lowerBound / size)..<(bytes.upperBound / size)
        guard !elements.isEmpty else { return }
        try withUnsafeTemporaryAllocation(of: Float.self, capacity: min(chunkElements, elements.count)) { x in
            for start in stride(from: elements.lowerBound, to: elements.upperBound, by: x.count) {
                let n = min(x.count, elements.upperBound - start)
                try location.file.readFloats(info.name, elements: start..<(start + n), into: x)
                let k = Int(qk_find_nonfinite(x.baseAddress!, Int64(n)))
                if k >= 0 {
                    throw QuantizerError.nonFinite(location.file.url, tensor: info.name, index: start + k, shape: info.shape, value: x[k])
                }
            }
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

/// Runs `body(i)` for i in 0..<n on all cores and returns when every call has.
/// The calls must touch disjoint memory; that is what makes the unchecked
/// Sendable wrapper below sound.
private func concurrentForEach(_ n: Int, _ body: (Int) -> Void) {
    withoutActuallyEscaping(body) { body in
        let task = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: n) { task.value($0) }
    }
}

private struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
