// The model an adapter is merged into, read one tensor (and one chunk) at a
// time whether it is a Hugging Face folder or a packed checkpoint: merging
// asks only for tensor names, shapes, how each is stored, and fp32 values of
// a range of a tensor's flattened elements.

import CQLoRAKernels
import Foundation
import QLoRAStorage

/// A Hugging Face model folder or a packed checkpoint, opened for merging.
final class MergeBase: @unchecked Sendable {
    enum Source {
        case folder(HFCheckpoint)
        case packed(PackedCheckpoint)
    }

    struct Tensor {
        let name: String
        let shape: [Int]
        let storage: PackedStorage
    }

    let url: URL
    let source: Source
    let configJSON: Data
    let configuration: LlamaConfiguration
    /// What the output carries, in checkpoint order: the tensors the configuration
    /// uses, without a tied output head (it is the embedding).
    let tensors: [Tensor]
    /// Tensors of the base not carried over.
    let skipped: [String]

    /// Opens `url`: a folder as a Hugging Face checkpoint, a file as a packed one.
    /// - Throws: what `HFCheckpoint` and its `validate()`, or `PackedCheckpoint`,
    ///   throw; `CheckpointError` when a packed file lacks a tensor its
    ///   configuration needs or holds one of another shape.
    init(url: URL) throws {
        self.url = url
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw FileError.cannotOpen(url, errno: ENOENT)
        }
        if isDirectory.boolValue {
            let checkpoint = try HFCheckpoint(directory: url)
            let unexpected = try checkpoint.validate()
            let tied = checkpoint.configuration.tieWordEmbeddings
            let head = LlamaTensor.Kind.outputHead.rawValue
            source = .folder(checkpoint)
            configJSON = checkpoint.configJSON
            configuration = checkpoint.configuration
            tensors = try checkpoint.configuration.tensorInventory
                .filter { checkpoint.contains($0.name) && !(tied && $0.kind == .outputHead) }
                .map { Tensor(name: $0.name, shape: $0.shape, storage: .float(try checkpoint.location(of: $0.name).info.dtype)) }
            skipped = unexpected + (tied && checkpoint.contains(head) ? [head] : [])
        } else {
            let checkpoint = try PackedCheckpoint(url: url)
            let configuration = try LlamaConfiguration(jsonData: checkpoint.configJSON, source: url)
            let inventory = configuration.tensorInventory.filter { !(configuration.tieWordEmbeddings && $0.kind == .outputHead) }
            let missing = inventory.filter { $0.isRequired && !checkpoint.contains($0.name) }.map(\.name)
            guard missing.isEmpty else { throw CheckpointError.missingTensors(url, names: missing) }
            for expected in inventory where checkpoint.contains(expected.name) {
                let found = try checkpoint.info(expected.name).shape
                guard found == expected.shape else {
                    throw CheckpointError.shapeMismatch(url, tensor: expected.name, expected: expected.shape, found: found)
                }
            }
            let known = Set(inventory.map(\.name))
            source = .packed(checkpoint)
            configJSON = checkpoint.configJSON
            self.configuration = configuration
            tensors = checkpoint.tensors.filter { known.contains($0.name) }.map { Tensor(name: $0.name, shape: $0.shape, storage: $0.storage) }
            skipped = checkpoint.tensors.map(\.name).filter { !known.contains($0) }
        }
    }

    /// Files of a model folder carried into a merged folder besides those a packed
    /// checkpoint embeds: what slow (SentencePiece or BPE) tokenizers and chat templates read.
    static let folderSideFileNames = HFCheckpoint.tokenizerFileNames
        + ["tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json"]

    /// The files a model folder carries beside config.json and the weights
    /// (tokenizer and generation config), by file name.
    func sideFiles() throws -> [(name: String, contents: Data)] {
        switch source {
        case let .folder(checkpoint):
            try Self.folderSideFileNames.compactMap { name in
                let url = checkpoint.directory.appendingPathComponent(name)
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue else { return nil }
                return (name, try Data(contentsOf: url))
            }
        case let .packed(checkpoint):
            try checkpoint.files.map { ($0.name, try checkpoint.embeddedFile($0.name)) }
        }
    }

    /// The stored tensor of a packed base, checksum verified.
    func quantized(_ name: String) throws -> QuantizedTensor? {
        guard case let .packed(checkpoint) = source, case .quantized = try checkpoint.info(name).storage else { return nil }
        try checkpoint.verify(tensor: name)
        return try checkpoint.quantized(name)
    }

    /// Where an unquantized tensor's bytes lie, as stored, in a mapped file: so it can
    /// be copied without conversion, its pages dropped behind the copy. Nil when a
    /// packed base compressed it. A packed base's checksum is verified first.
    func storedRegion(_ name: String) throws -> (file: MappedFile, range: Range<Int>)? {
        switch source {
        case let .folder(checkpoint):
            let location = try checkpoint.location(of: name)
            return (location.file.file, location.info.byteRange)
        case let .packed(checkpoint):
            let info = try checkpoint.info(name)
            guard case .float = info.storage, !info.isCompressed else { return nil }
            try checkpoint.verify(tensor: name)
            return (checkpoint.file, info.fileRange)
        }
    }

    /// A reader of one tensor's values in fp32 (a packed base's checksum is verified first).
    func reader(_ name: String) throws -> Reader {
        switch source {
        case let .folder(checkpoint):
            return .folder(try checkpoint.location(of: name))
        case let .packed(checkpoint):
            try checkpoint.verify(tensor: name)
            let info = try checkpoint.info(name)
            switch info.storage {
            case .quantized: return .quantized(try checkpoint.quantized(name), checkpoint.file, info.fileRange)
            case let .float(dtype) where !info.isCompressed: return .packedFloat(checkpoint.file, info.fileRange, dtype)
            case .float: return .decompressed(try checkpoint.floats(name))
            }
        }
    }

    /// Reads a tensor a chunk at a time, dropping the pages of a mapped file behind
    /// it so that a large model does not stay resident.
    enum Reader {
        case folder(TensorLocation)
        /// Blocks in the map (or decompressed), with the file range to drop once read.
        case quantized(QuantizedTensor, MappedFile, Range<Int>)
        /// F32/F16/BF16 elements in a packed checkpoint's map (64-byte aligned).
        case packedFloat(MappedFile, Range<Int>, TensorDType)
        case decompressed(FloatTensor)

        /// Writes elements `range` of the flattened tensor into `y`, which holds
        /// `capacity(for: range.count)` values. A quantized tensor is decoded in whole
        /// blocks, so `range` must start on a block boundary (chunks do).
        func read(_ range: Range<Int>, into y: UnsafeMutablePointer<Float>) throws {
            guard !range.isEmpty else { return }
            switch self {
            case let .folder(location):
                try location.file.readFloats(location.info.name, elements: range, into: UnsafeMutableBufferPointer(start: y, count: range.count))
                let size = location.info.dtype.byteSize, start = location.info.byteRange.lowerBound
                location.file.file.release((start + range.lowerBound * size)..<(start + range.upperBound * size))
            case let .quantized(q, file, region):
                let B = q.spec.blockSize
                precondition(range.lowerBound % B == 0, "[MergeBase] read starts inside a block")
                q.dequantize(blocks: (range.lowerBound / B)..<((range.upperBound + B - 1) / B), into: y)
                // Codes and scales are spread over the region: drop it all after the last chunk.
                if range.upperBound == q.count { file.release(region) }
            case let .packedFloat(file, region, dtype):
                let size = dtype.byteSize
                let bytes = (region.lowerBound + range.lowerBound * size)..<(region.lowerBound + range.upperBound * size)
                let x = file.bytes(bytes).baseAddress!, n = Int64(range.count)
                switch dtype {
                case .F16: qk_f16_to_f32(y, x.assumingMemoryBound(to: UInt16.self), n)
                case .BF16: qk_bf16_to_f32(y, x.assumingMemoryBound(to: UInt16.self), n)
                default: memcpy(y, x, range.count * 4)
                }
                file.release(bytes)
            case let .decompressed(values):
                values.withValues { _ = memcpy(y, $0.baseAddress! + range.lowerBound, range.count * 4) }
            }
        }

        /// Floats `y` must hold to read `count` elements (the last block's padding included).
        func capacity(for count: Int) -> Int {
            if case let .quantized(q, _, _) = self { return count + q.spec.blockSize }
            return count
        }
    }
}
