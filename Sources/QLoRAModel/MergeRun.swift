// One merge being written: walks the base's tensors in order, each in chunks of
// fp32 values (base + s·B·A for merged ones), and stores them as safetensors
// in a folder built beside the output and renamed into place, or as a packed
// checkpoint (whose writer already appears atomically). Records each tensor's
// change and storage error as it goes.

import CQLoRAKernels
import Foundation
import QLoRAStorage

final class MergeRun: @unchecked Sendable {
    /// Elements per chunk: a multiple of every block size (1 MB of fp32).
    static let chunkElements = 1 << 18

    let base: MergeBase
    let adapter: PEFTAdapter
    /// Base weight name → adapter module.
    let targets: [String: String]
    private let progress: ((QuantizeProgress) -> Void)?
    private let bytesTotal: Int
    private var bytesDone = 0
    private let positions: [String: Int]
    private(set) var records: [MergeSummary.Tensor] = []

    init(base: MergeBase, adapter: PEFTAdapter, targets: [String: String], progress: ((QuantizeProgress) -> Void)?) {
        self.base = base
        self.adapter = adapter
        self.targets = targets
        self.progress = progress
        bytesTotal = base.tensors.reduce(0) { $0 + $1.shape.reduce(1, *) * 4 }
        positions = Dictionary(uniqueKeysWithValues: base.tensors.enumerated().map { ($1.name, $0 + 1) })
    }

    // MARK: - Hugging Face folder

    /// Writes config.json, the side files and the weights into a new folder beside
    /// `output`, then renames it into place. Returns the file names.
    func writeFolder(_ output: URL, dtype: TensorDType, maxShardBytes: Int) throws -> [String] {
        let folder = try AtomicDirectoryWriter(destination: output)
        let staging = folder.temporary

        var files: [(name: String, contents: Data)] = [(HFCheckpoint.configFileName, Self.config(base.configJSON, declaring: dtype))]
        files += try base.sideFiles()
        var shards: [[MergeBase.Tensor]] = [[]]
        var shardBytes = 0
        for t in base.tensors {
            let bytes = t.shape.reduce(1, *) * dtype.byteSize
            if !shards[shards.count - 1].isEmpty && shardBytes + bytes > maxShardBytes {
                shards.append([])
                shardBytes = 0
            }
            shards[shards.count - 1].append(t)
            shardBytes += bytes
        }
        let names = shards.count == 1 ? [HFCheckpoint.singleFileName] : shards.indices.map {
            String(format: "model-%05d-of-%05d.safetensors", $0 + 1, shards.count)
        }
        for (shard, name) in zip(shards, names) {
            var writer = SafetensorsWriter(metadata: ["format": "pt"])
            for t in shard {
                try writer.add(t.name, dtype: dtype, shape: t.shape) { emit in try self.produce(t, as: dtype, emit: emit) }
            }
            try writer.write(to: staging.appendingPathComponent(name))
        }
        if shards.count > 1 {
            var weightMap: [String: String] = [:]
            for (shard, name) in zip(shards, names) { for t in shard { weightMap[t.name] = name } }
            let total = base.tensors.reduce(0) { $0 + $1.shape.reduce(1, *) * dtype.byteSize }
            let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
            files.append((HFCheckpoint.indexFileName, try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])))
        }
        for (name, contents) in files {
            let out = try AtomicFileWriter(destination: staging.appendingPathComponent(name))
            try out.write(contents)
            try out.commit()
        }
        try folder.commit()
        return (files.map(\.name) + names).sorted()
    }

    /// One tensor's bytes in `dtype`, a chunk at a time.
    private func produce(_ t: MergeBase.Tensor, as dtype: TensorDType, emit: SafetensorsWriter.Emit) throws {
        let delta = try targets[t.name].map { try adapter.delta(module: $0) }
        let lossy = dtype != .F32
        var change = ReconstructionError(), error = ReconstructionError()
        let chunk = min(Self.chunkElements, t.shape.reduce(1, *))
        var bytes = [UInt8](repeating: 0, count: chunk * dtype.byteSize)
        var back = [Float](repeating: 0, count: lossy ? chunk : 0)
        try forEachChunk(t, delta: delta) { range, values, baseValues in
            if delta != nil { change.add(reference: baseValues, approximation: values, firstIndex: range.lowerBound) }
            try bytes.withUnsafeMutableBytes { out in
                Self.store(values, as: dtype, into: out.baseAddress!)
                if lossy {
                    try back.withUnsafeMutableBufferPointer { y in
                        let stored = UnsafeRawPointer(out.baseAddress!).assumingMemoryBound(to: UInt16.self)
                        (dtype == .F16 ? qk_f16_to_f32 : qk_bf16_to_f32)(y.baseAddress!, stored, Int64(range.count))
                        let restored = UnsafeBufferPointer(rebasing: y[0..<range.count])
                        if qk_find_nonfinite(y.baseAddress!, Int64(range.count)) >= 0,
                           let i = restored.indices.first(where: { !restored[$0].isFinite && values[$0].isFinite }) {
                            throw MergeError.outOfRange(tensor: t.name, index: range.lowerBound + i, value: values[i], dtype: dtype)
                        }
                        error.add(reference: values, approximation: restored, firstIndex: range.lowerBound)
                    }
                }
                try emit(UnsafeRawBufferPointer(rebasing: out[0..<(range.count * dtype.byteSize)]))
            }
        }
        records.append(MergeSummary.Tensor(name: t.name, shape: t.shape, storage: dtype.rawValue, merged: delta != nil,
                                           change: delta != nil ? change : nil, error: lossy ? error : nil))
    }

    // MARK: - Packed checkpoint

    func writePacked(_ output: URL, spec: QuantSpec, compress: Bool, metadata: [String: String]) throws {
        let writer = try PackedCheckpointWriter(url: output, configJSON: base.configJSON, metadata: metadata, compress: compress)
        for (name, contents) in try base.sideFiles() { try writer.addFile(name: name, contents: contents) }
        let linear = Set(base.configuration.tensorInventory.filter(\.kind.isLinearWeight).map(\.name))
        for t in base.tensors {
            let module = targets[t.name]
            var record = MergeSummary.Tensor(name: t.name, shape: t.shape, storage: spec.description, merged: module != nil)
            let count = t.shape.reduce(1, *)
            let wasQuantized = if case .quantized = t.storage { true } else { false }
            if t.storage == .quantized(spec) && module == nil {
                // Unchanged and already in the requested format: copied block for block.
                try writer.add(try base.quantized(t.name)!, name: t.name)
                advance(t.name, count * 4)
            } else if wasQuantized || linear.contains(t.name) {
                let delta = try module.map { try adapter.delta(module: $0) }
                let encoder = try BlockEncoder(spec: spec, shape: t.shape)
                var change = ReconstructionError()
                try forEachChunk(t, delta: delta, requireFinite: true) { range, values, baseValues in
                    if delta != nil { change.add(reference: baseValues, approximation: values, firstIndex: range.lowerBound) }
                    encoder.encode(values, at: range.lowerBound)
                }
                let q = encoder.finish()
                // Second pass: the stored scales (DQ8 above all) exist only now.
                var error = ReconstructionError()
                var y = [Float](repeating: 0, count: min(Self.chunkElements, count) + spec.blockSize)
                try forEachChunk(t, delta: delta, requireFinite: true, reporting: false) { range, values, _ in
                    y.withUnsafeMutableBufferPointer { y in
                        let B = spec.blockSize
                        q.dequantize(blocks: (range.lowerBound / B)..<((range.upperBound + B - 1) / B), into: y.baseAddress!)
                        error.add(reference: values, approximation: UnsafeBufferPointer(rebasing: y[0..<range.count]), firstIndex: range.lowerBound)
                    }
                }
                try writer.add(q, name: t.name)
                record.change = delta != nil ? change : nil
                record.error = error
            } else {
                // Kept in its type; a merged one (an untied lm_head) in fp32, exactly.
                guard case let .float(dtype) = t.storage else { preconditionFailure("[MergeRun] quantized tensors are handled above") }
                if module == nil, let (file, region) = try base.storedRegion(t.name) {
                    try writer.add(name: t.name, dtype: dtype, shape: t.shape, bytes: file.bytes(region)) { written in
                        file.release((region.lowerBound + written.lowerBound)..<(region.lowerBound + written.upperBound))
                    }
                    record.storage = dtype.rawValue
                    records.append(record)
                    advance(t.name, count * 4)
                    continue
                }
                let delta = try module.map { try adapter.delta(module: $0) }
                let stored = delta == nil ? dtype : .F32
                var bytes = [UInt8](repeating: 0, count: count * stored.byteSize)
                var change = ReconstructionError()
                try bytes.withUnsafeMutableBytes { out in
                    try forEachChunk(t, delta: delta) { range, values, baseValues in
                        if delta != nil { change.add(reference: baseValues, approximation: values, firstIndex: range.lowerBound) }
                        Self.store(values, as: stored, into: out.baseAddress! + range.lowerBound * stored.byteSize)
                    }
                    try writer.add(name: t.name, dtype: stored, shape: t.shape, bytes: UnsafeRawBufferPointer(out))
                }
                record.storage = stored.rawValue
                record.change = delta != nil ? change : nil
            }
            records.append(record)
        }
        try writer.finish()
    }

    // MARK: - Chunks

    /// Calls `body(range, values, base)` for consecutive chunks of a tensor's
    /// flattened elements: `base` holds the base's fp32 values, `values` those to
    /// store (base + delta when merged). Refuses non-finite values to store when
    /// merged or `requireFinite` (weights to quantize).
    private func forEachChunk(_ t: MergeBase.Tensor, delta: [Float]?, requireFinite: Bool = false, reporting: Bool = true,
                              _ body: (Range<Int>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> Void) throws {
        let reader = try base.reader(t.name)
        let count = t.shape.reduce(1, *)
        let chunk = min(Self.chunkElements, count)
        var baseValues = [Float](repeating: 0, count: reader.capacity(for: chunk))
        var merged = [Float](repeating: 0, count: delta == nil ? 0 : chunk)
        for start in stride(from: 0, to: count, by: chunk) {
            let range = start..<min(count, start + chunk)
            try baseValues.withUnsafeMutableBufferPointer { b in
                try reader.read(range, into: b.baseAddress!)
                let x = UnsafeBufferPointer(rebasing: b[0..<range.count])
                guard let delta else {
                    if requireFinite { try checkFinite(t, x, range) }
                    return try body(range, x, x)
                }
                try merged.withUnsafeMutableBufferPointer { m in
                    delta.withUnsafeBufferPointer { d in
                        for i in 0..<range.count { m[i] = x[i] + d[range.lowerBound + i] }
                    }
                    let values = UnsafeBufferPointer(rebasing: m[0..<range.count])
                    try checkFinite(t, values, range)
                    try body(range, values, x)
                }
            }
            if reporting { advance(t.name, range.count * 4) }
        }
    }

    private func checkFinite(_ t: MergeBase.Tensor, _ x: UnsafeBufferPointer<Float>, _ range: Range<Int>) throws {
        let k = Int(qk_find_nonfinite(x.baseAddress!, Int64(x.count)))
        if k >= 0 { throw MergeError.nonFinite(tensor: t.name, index: range.lowerBound + k, shape: t.shape, value: x[k]) }
    }

    private func advance(_ tensor: String, _ bytes: Int) {
        bytesDone += bytes
        guard let progress else { return }
        progress(QuantizeProgress(tensor: tensor, tensorIndex: positions[tensor] ?? 0, tensorCount: base.tensors.count,
                                  bytesDone: bytesDone, bytesTotal: bytesTotal))
    }

    // MARK: - Conversions

    /// config.json with its "dtype" / "torch_dtype" naming the type written (transformers
    /// loads in that type with dtype="auto"); edited in place, so the rest keeps its bytes.
    static func config(_ json: Data, declaring dtype: TensorDType) -> Data {
        guard var text = String(data: json, encoding: .utf8) else { return json }
        let name = dtype == .F16 ? "float16" : dtype == .BF16 ? "bfloat16" : "float32"
        text.replace(/("(?:torch_)?dtype"\s*:\s*)"[A-Za-z0-9_.]*"/) { "\($0.1)\"\(name)\"" }
        return Data(text.utf8)
    }

    /// fp32 values as little-endian `dtype` (F32, F16 or BF16, rounded to nearest even).
    static func store(_ x: UnsafeBufferPointer<Float>, as dtype: TensorDType, into out: UnsafeMutableRawPointer) {
        guard let source = x.baseAddress, !x.isEmpty else { return }
        switch dtype {
        case .F32: memcpy(out, source, x.count * 4)
        case .F16: qk_f32_to_f16(out.assumingMemoryBound(to: UInt16.self), source, Int64(x.count))
        case .BF16:
            let y = out.assumingMemoryBound(to: UInt16.self)
            for i in 0..<x.count { y[i] = bfloat16(x[i]) }
        default: preconditionFailure("[MergeRun] \(dtype) is not a floating output type")
        }
    }

    /// fp32 → bf16, rounding to nearest even as PyTorch does; NaN stays a quiet NaN.
    static func bfloat16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(bits >> 16) | 0x0040 }
        return UInt16((bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }
}
