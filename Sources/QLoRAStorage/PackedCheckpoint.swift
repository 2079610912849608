import CQLoRAKernels
import CZstd
import Foundation

/// A packed checkpoint (formats/packed-checkpoint.md), memory-mapped. Opening it
/// checks the whole structure — magic, version, footer, header checksum, and every
/// entry's bounds, alignment, overlap and sizes — without touching tensor data;
/// checksums of the data are verified on request (`verify(tensor:)`, `verify()`).
///
/// Tensors are handed out as views into the map (zero-copy); a compressed tensor
/// is decompressed into memory each time it is asked for.
public final class PackedCheckpoint: @unchecked Sendable {
    public let url: URL
    public let file: MappedFile
    public let version: UInt32
    /// The text of the model's config.json, byte for byte.
    public let configJSON: Data
    public let metadata: [String: String]
    /// Tensor entries in header order.
    public let tensors: [PackedTensorInfo]
    public let files: [EmbeddedFileInfo]
    /// Where the header starts, which is where the data section ends.
    public let dataSection: Range<Int>
    private let tensorIndex: [String: Int]

    public init(url: URL) throws {
        self.url = url
        file = try MappedFile(url: url)
        let bytes = file.bytes
        let size = bytes.count
        let F = PackedCheckpointFormat.self
        let magic = F.magic

        if size >= magic.count, !bytes.prefix(magic.count).elementsEqual(magic) {
            throw PackedCheckpointError.badMagic(url, found: Array(bytes.prefix(magic.count)))
        }
        let minimum = F.preambleSize + F.footerSize
        guard size >= minimum else {
            throw PackedCheckpointError.truncated(url, size: size, reason: "a packed checkpoint has at least \(minimum) bytes")
        }
        let preambleVersion = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        guard preambleVersion <= F.version else {
            throw PackedCheckpointError.unsupportedVersion(url, found: preambleVersion, supported: F.version)
        }
        guard preambleVersion >= 1 else { throw PackedCheckpointError.invalidHeader(url, reason: "version 0 does not exist") }
        guard bytes.suffix(magic.count).elementsEqual(magic) else {
            throw PackedCheckpointError.truncated(url, size: size, reason: "the file does not end with the footer's \"QLORAPAK\" (cut short, or bytes appended)")
        }
        let footerStart = size - F.footerSize
        let footer = PackedFooter(decoding: UnsafeRawBufferPointer(rebasing: bytes[footerStart...]))
        guard footer.version == preambleVersion else {
            throw PackedCheckpointError.versionMismatch(url, preamble: preambleVersion, footer: footer.version)
        }
        let (headerEnd, overflow) = footer.headerOffset.addingReportingOverflow(footer.headerLength)
        guard footer.headerOffset >= F.preambleSize, !overflow, headerEnd <= footerStart else {
            throw PackedCheckpointError.headerOutOfBounds(url, offset: footer.headerOffset, length: footer.headerLength, limit: footerStart)
        }
        guard footer.headerOffset % F.alignment == 0 else {
            throw PackedCheckpointError.misaligned(url, name: "header", offset: footer.headerOffset)
        }
        guard F.align(headerEnd) == footerStart else {
            throw PackedCheckpointError.truncated(url, size: size, reason: "the footer's header ends at \(headerEnd), so the file should be \(F.align(headerEnd) + F.footerSize) bytes")
        }
        guard footer.headerLength <= F.maxHeaderLength else {
            throw PackedCheckpointError.invalidHeader(url, reason: "\(footer.headerLength) bytes, more than the \(F.maxHeaderLength) this reader accepts")
        }
        let headerBytes = UnsafeRawBufferPointer(rebasing: bytes[footer.headerOffset..<headerEnd])
        let computed = F.xxh64(headerBytes)
        guard computed == footer.headerChecksum else {
            throw PackedCheckpointError.headerChecksumMismatch(url, stored: footer.headerChecksum, computed: computed)
        }
        let header: PackedHeader
        do {
            header = try JSONDecoder().decode(PackedHeader.self, from: Data(headerBytes))
        } catch let error as DecodingError {
            throw PackedCheckpointError.invalidHeader(url, reason: Self.describe(error))
        }

        version = preambleVersion
        configJSON = Data(header.config.utf8)
        metadata = header.metadata ?? [:]
        dataSection = F.preambleSize..<footer.headerOffset
        files = try header.files.map { try Self.check($0, url: url) }
        tensors = try header.tensors.map { try Self.check($0, url: url) }

        var seen = Set<String>()
        for name in files.map(\.name) + tensors.map(\.name) where !seen.insert(name).inserted {
            throw PackedCheckpointError.invalidEntry(url, name: name, reason: "the name appears twice")
        }
        let extents = files.map { ($0.name, $0.fileRange) } + tensors.map { ($0.name, $0.fileRange) }
        try Self.checkPlacement(extents, dataSection: dataSection, url: url)
        tensorIndex = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
    }

    public func contains(_ name: String) -> Bool { tensorIndex[name] != nil }

    public func info(_ name: String) throws -> PackedTensorInfo {
        guard let i = tensorIndex[name] else { throw PackedCheckpointError.missingTensor(url, name: name) }
        return tensors[i]
    }

    /// An embedded file's bytes (tokenizer.json, tokenizer_config.json, …), checksum verified.
    public func embeddedFile(_ name: String) throws -> Data {
        guard let f = files.first(where: { $0.name == name }) else { throw PackedCheckpointError.missingFile(url, name: name) }
        try verify(name: f.name, range: f.fileRange, checksum: f.checksum)
        return Data(file.bytes(f.fileRange))
    }

    /// A quantized tensor, in place in the map (or decompressed when stored compressed).
    public func quantized(_ name: String) throws -> QuantizedTensor {
        let info = try info(name)
        guard case let .quantized(spec) = info.storage else { throw PackedCheckpointError.notQuantized(url, name: name) }
        let (region, owner) = try region(of: info)
        return QuantizedTensor(spec: spec, shape: info.shape, region: region, owner: owner)
    }

    /// Any tensor as fp32. F32 tensors stored uncompressed are views into the map;
    /// F16/BF16 are converted and quantized tensors dequantized into new memory.
    public func floats(_ name: String) throws -> FloatTensor {
        let info = try info(name)
        let n = info.count
        switch info.storage {
        case .quantized:
            let q = try quantized(name)
            let padded = q.layout.blocks * q.spec.blockSize
            let out = try allocate(padded * 4, for: name)
            q.dequantize(blocks: 0..<q.layout.blocks, into: out.base.assumingMemoryBound(to: Float.self))
            return FloatTensor(shape: info.shape, values: UnsafeBufferPointer(start: out.base.assumingMemoryBound(to: Float.self), count: n), owner: out)
        case let .float(dtype):
            let (region, owner) = try region(of: info)
            if dtype == .F32 {
                return FloatTensor(shape: info.shape, values: region.bindMemory(to: Float.self), owner: owner)
            }
            let out = try allocate(n * 4, for: name)
            let y = out.base.assumingMemoryBound(to: Float.self)
            let x = region.baseAddress?.assumingMemoryBound(to: UInt16.self)
            if let x {
                if dtype == .F16 { qk_f16_to_f32(y, x, Int64(n)) } else { qk_bf16_to_f32(y, x, Int64(n)) }
            }
            return FloatTensor(shape: info.shape, values: UnsafeBufferPointer(start: y, count: n), owner: out)
        }
    }

    /// Checks one tensor's stored bytes against its checksum. The bytes are read once
    /// and their pages dropped behind the read (views stay valid; later use reads them
    /// again, from the page cache), so verifying costs no lasting resident memory.
    public func verify(tensor name: String) throws {
        let info = try info(name)
        try verify(name: info.name, range: info.fileRange, checksum: info.checksum)
    }

    /// Checks every embedded file and tensor, at disk speed and with resident memory
    /// near one 8 MB slice whatever the file's size. `progress` gets (done, total) bytes.
    public func verify(progress: ((Int, Int) -> Void)? = nil) throws {
        let items = files.map { ($0.name, $0.fileRange, $0.checksum) } + tensors.map { ($0.name, $0.fileRange, $0.checksum) }
        let total = items.reduce(0) { $0 + $1.1.count }
        var done = 0
        for (name, range, checksum) in items {
            try verify(name: name, range: range, checksum: checksum)
            done += range.count
            progress?(done, total)
        }
    }

    func verify(name: String, range: Range<Int>, checksum: UInt64) throws {
        var hasher = PackedCheckpointFormat.Hasher()
        for start in stride(from: range.lowerBound, to: range.upperBound, by: 8 << 20) {
            let slice = start..<min(range.upperBound, start + (8 << 20))
            hasher.update(file.bytes(slice))
            file.release(slice)
        }
        let computed = hasher.digest
        guard computed == checksum else {
            throw PackedCheckpointError.checksumMismatch(url, name: name, range: range, stored: checksum, computed: computed)
        }
    }

    // MARK: - Data access

    private func allocate(_ bytes: Int, for name: String) throws -> AlignedBuffer {
        guard let b = AlignedBuffer(count: bytes, hugePages: true) else { throw PackedCheckpointError.outOfMemory(url, name: name, bytes: bytes) }
        return b
    }

    /// The decompressed region of a tensor and what keeps it alive.
    private func region(of info: PackedTensorInfo) throws -> (UnsafeRawBufferPointer, AnyObject) {
        let stored = file.bytes(info.fileRange)
        guard info.isCompressed else { return (stored, file) }
        let out = try allocate(info.size, for: info.name)
        let n = ZSTD_decompress(out.base, info.size, stored.baseAddress, stored.count)
        if ZSTD_isError(n) != 0 {
            throw PackedCheckpointError.decompressionFailed(url, name: info.name, reason: String(cString: ZSTD_getErrorName(n)))
        }
        guard n == info.size else {
            throw PackedCheckpointError.decompressionFailed(url, name: info.name, reason: "\(n) bytes, the header says \(info.size)")
        }
        return (out.bytes, out)
    }

    // MARK: - Structure checks

    private static func checksum(_ hex: String, name: String, url: URL) throws -> UInt64 {
        guard hex.count == 16, let v = UInt64(hex, radix: 16) else {
            throw PackedCheckpointError.invalidEntry(url, name: name, reason: "xxh64 \"\(hex)\" is not 16 hex digits")
        }
        return v
    }

    private static func range(offset: Int, length: Int, name: String, url: URL) throws -> Range<Int> {
        guard offset >= 0, length >= 0, offset <= Int.max - length else {
            throw PackedCheckpointError.invalidEntry(url, name: name, reason: "offset \(offset) and length \(length) do not describe a byte range")
        }
        return offset..<(offset + length)
    }

    private static func check(_ f: PackedHeader.File, url: URL) throws -> EmbeddedFileInfo {
        guard !f.name.isEmpty, !f.name.contains("/") else {
            throw PackedCheckpointError.invalidEntry(url, name: f.name, reason: "an embedded file needs a plain, non-empty file name")
        }
        return EmbeddedFileInfo(name: f.name, fileRange: try range(offset: f.offset, length: f.length, name: f.name, url: url),
                                checksum: try checksum(f.xxh64, name: f.name, url: url))
    }

    private static func check(_ t: PackedHeader.Tensor, url: URL) throws -> PackedTensorInfo {
        func bad(_ reason: String) -> PackedCheckpointError { .invalidEntry(url, name: t.name, reason: reason) }
        guard !t.name.isEmpty else { throw bad("a tensor needs a non-empty name") }
        guard t.shape.allSatisfy({ $0 >= 0 }) else { throw bad("shape \(t.shape) has a negative dimension") }
        // Element counts must leave room for byte sizes (8 bytes per element at most).
        var count = 1
        for d in t.shape {
            let (p, o) = count.multipliedReportingOverflow(by: d)
            guard !o, p <= Int.max / 8 else { throw bad("shape \(t.shape) has too many elements") }
            count = p
        }

        let storage: PackedStorage
        let expected: [String: Range<Int>]
        if let type = QuantType(rawValue: t.dtype) {
            guard let b = t.blockSize, QuantSpec.blockSizes.contains(b) else {
                throw bad("block_size \(t.blockSize.map(String.init) ?? "missing") is not one of \(QuantSpec.blockSizes)")
            }
            guard let k = t.scaleKind.flatMap(ScaleKind.init(rawValue:)) else {
                throw bad("scale_kind \(t.scaleKind ?? "missing") is not one of \(ScaleKind.allCases.map(\.rawValue))")
            }
            guard count > 0 else { throw bad("a quantized tensor must have elements (shape \(t.shape))") }
            let spec = QuantSpec(type: type, blockSize: b, scaleKind: k)
            storage = .quantized(spec)
            let parts = PackedParts(layout: PackedLayout(spec: spec, count: count))
            var e = ["codes": parts.codes, "scales": parts.scales]
            if k == .dq8 { e["group_scales"] = parts.groupScales }
            expected = e
        } else if let dtype = TensorDType(rawValue: t.dtype), TensorDType.floatWeightTypes.contains(dtype) {
            storage = .float(dtype)
            expected = ["data": 0..<(count * dtype.byteSize)]
        } else {
            throw bad("dtype \"\(t.dtype)\" is not one of \((QuantType.allCases.map(\.rawValue) + TensorDType.floatWeightTypes.map(\.rawValue)).joined(separator: ", "))")
        }

        guard Set(t.parts.keys) == Set(expected.keys) else {
            throw bad("parts are \(t.parts.keys.sorted()), a \(storage) tensor has \(expected.keys.sorted())")
        }
        for (key, want) in expected {
            let got = t.parts[key]!
            guard got == [want.lowerBound, want.upperBound] else {
                throw bad("part \(key) is \(got), expected [\(want.lowerBound), \(want.upperBound)] for \(storage) with shape \(t.shape)")
            }
        }
        let size = expected.values.map(\.upperBound).max() ?? 0
        guard t.size == size else { throw bad("size \(t.size) does not match its parts (\(size) bytes)") }
        let compressed: Bool
        switch t.compression {
        case nil:
            compressed = false
            guard t.length == t.size else { throw bad("length \(t.length) differs from size \(t.size) but the tensor is not compressed") }
        case "zstd": compressed = true
        case let other?: throw bad("compression \"\(other)\" is not known (only \"zstd\")")
        }
        return PackedTensorInfo(name: t.name, shape: t.shape, storage: storage,
                                fileRange: try range(offset: t.offset, length: t.length, name: t.name, url: url),
                                size: size, isCompressed: compressed, checksum: try checksum(t.xxh64, name: t.name, url: url))
    }

    /// Every extent inside the data section, aligned, and apart from the others.
    private static func checkPlacement(_ extents: [(String, Range<Int>)], dataSection: Range<Int>, url: URL) throws {
        for (name, r) in extents {
            guard r.lowerBound % PackedCheckpointFormat.alignment == 0 else {
                throw PackedCheckpointError.misaligned(url, name: name, offset: r.lowerBound)
            }
            guard r.lowerBound >= dataSection.lowerBound, r.upperBound <= dataSection.upperBound else {
                throw PackedCheckpointError.outOfBounds(url, name: name, range: r, dataSection: dataSection)
            }
        }
        let sorted = extents.filter { !$0.1.isEmpty }.sorted { $0.1.lowerBound < $1.1.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.1.lowerBound < a.1.upperBound {
            throw PackedCheckpointError.overlap(url, first: a.0, second: b.0, at: b.1.lowerBound)
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ c: [CodingKey]) -> String {
            c.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: ["."])
        }
        switch error {
        case let .keyNotFound(key, ctx): return "missing \"\(key.stringValue)\" at \(path(ctx.codingPath).isEmpty ? "the top level" : path(ctx.codingPath))"
        case let .typeMismatch(_, ctx), let .valueNotFound(_, ctx): return "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        case let .dataCorrupted(ctx): return ctx.codingPath.isEmpty ? "not valid JSON" : "\(path(ctx.codingPath)): \(ctx.debugDescription)"
        @unknown default: return "\(error)"
        }
    }
}

/// fp32 values of a tensor: a view into the map, or owned memory after conversion.
/// The values live as long as some copy of it does; raw access goes through `withValues`.
public struct FloatTensor: @unchecked Sendable {
    public let shape: [Int]
    let values: UnsafeBufferPointer<Float>
    private let owner: AnyObject

    init(shape: [Int], values: UnsafeBufferPointer<Float>, owner: AnyObject) {
        self.shape = shape
        self.values = values
        self.owner = owner
    }

    public var count: Int { values.count }
    public var array: [Float] { withExtendedLifetime(owner) { Array(values) } }

    public func withValues<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        try withExtendedLifetime(owner) { try body(values) }
    }
}
