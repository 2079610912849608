import CQLoRAKernels
import Foundation

// The fixed parts of formats/packed-checkpoint.md (version 1): constants, the
// preamble and footer, the JSON header's shape, and the errors a reader reports.
// PackedCheckpoint.swift reads this layout, PackedCheckpointWriter.swift writes it.

#if _endian(big)
#error("Packed checkpoints are little-endian and are mapped in place: big-endian hosts are not supported")
#endif

public enum PackedCheckpointFormat {
    /// "QLORAPAK": the first and the last 8 bytes of every packed checkpoint.
    public static let magic: [UInt8] = Array("QLORAPAK".utf8)
    /// The version this code writes and the newest it reads.
    public static let version: UInt32 = 1
    /// Every tensor part and embedded file starts on a multiple of this (a cache
    /// line, and the widest SIMD load), so mapped bytes are ready for the kernels.
    public static let alignment = 64
    public static let preambleSize = 64
    public static let footerSize = 64
    /// Headers beyond this are refused before being read: a lying length must not
    /// make a reader parse gigabytes of JSON.
    public static let maxHeaderLength = 256 << 20

    public static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// XXH64 (seed 0), the checksum of every tensor, embedded file and the header.
    public static func xxh64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        qk_xxh64(bytes.baseAddress, bytes.count, 0)
    }

    /// XXH64 (seed 0) over bytes given in pieces: equal to `xxh64` of their concatenation.
    public struct Hasher: Sendable {
        private var state = qk_xxh64_state()

        public init() { qk_xxh64_reset(&state, 0) }

        public mutating func update(_ bytes: UnsafeRawBufferPointer) {
            guard let p = bytes.baseAddress, bytes.count > 0 else { return }
            qk_xxh64_update(&state, p, bytes.count)
        }

        public var digest: UInt64 { withUnsafePointer(to: state) { qk_xxh64_digest($0) } }
    }

    public static func hex(_ checksum: UInt64) -> String {
        let digits = String(checksum, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// The footer, the last 64 bytes of a packed checkpoint: where the header is.
struct PackedFooter: Equatable {
    var headerOffset: Int
    var headerLength: Int
    var headerChecksum: UInt64
    var version: UInt32

    func encoded() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: PackedCheckpointFormat.footerSize)
        b.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt64(headerOffset).littleEndian, toByteOffset: 0, as: UInt64.self)
            p.storeBytes(of: UInt64(headerLength).littleEndian, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: headerChecksum.littleEndian, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: version.littleEndian, toByteOffset: 24, as: UInt32.self)
        }
        b.replaceSubrange(56..<64, with: PackedCheckpointFormat.magic)
        return b
    }

    /// `bytes` are the last 64 bytes of the file, magic already checked. Lengths
    /// beyond Int are clamped so the bounds checks that follow reject them.
    init(decoding bytes: UnsafeRawBufferPointer) {
        func int(_ at: Int) -> Int {
            let v = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            return v > UInt64(Int.max) ? Int.max : Int(v)
        }
        headerOffset = int(0)
        headerLength = int(8)
        headerChecksum = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        version = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 24, as: UInt32.self))
    }

    init(headerOffset: Int, headerLength: Int, headerChecksum: UInt64, version: UInt32) {
        self.headerOffset = headerOffset
        self.headerLength = headerLength
        self.headerChecksum = headerChecksum
        self.version = version
    }
}

/// The JSON header as stored (snake_case keys, as in the spec).
struct PackedHeader: Codable {
    var config: String
    var metadata: [String: String]?
    var files: [File]
    var tensors: [Tensor]

    struct File: Codable {
        var name: String
        var offset: Int
        var length: Int
        var xxh64: String
    }

    struct Tensor: Codable {
        var name: String
        var shape: [Int]
        var dtype: String
        var blockSize: Int?
        var scaleKind: String?
        var offset: Int
        var length: Int
        var size: Int
        var parts: [String: [Int]]
        var compression: String?
        var xxh64: String

        enum CodingKeys: String, CodingKey {
            case name, shape, dtype, offset, length, size, parts, compression, xxh64
            case blockSize = "block_size"
            case scaleKind = "scale_kind"
        }
    }
}

/// How a tensor's elements are stored.
public enum PackedStorage: Hashable, Sendable, CustomStringConvertible {
    /// Blocks: codes plus per-block scales.
    case quantized(QuantSpec)
    /// Plain little-endian elements: F32, F16 or BF16.
    case float(TensorDType)

    /// The header's `dtype` spelling.
    public var dtypeName: String {
        switch self {
        case let .quantized(spec): spec.type.rawValue
        case let .float(dtype): dtype.rawValue
        }
    }

    public var description: String {
        switch self {
        case let .quantized(spec): spec.description
        case let .float(dtype): dtype.rawValue
        }
    }
}

/// One tensor's entry, checked against the file when the checkpoint was opened.
public struct PackedTensorInfo: Hashable, Sendable {
    public let name: String
    public let shape: [Int]
    public let storage: PackedStorage
    /// The stored bytes in the file (the zstd frame when compressed).
    public let fileRange: Range<Int>
    /// Bytes of the region once decompressed (equal to `fileRange.count` otherwise).
    public let size: Int
    public let isCompressed: Bool
    public let checksum: UInt64

    public var count: Int { shape.reduce(1, *) }

    /// Bytes that carry the weights: codes, scales and group scales, or the elements.
    /// Alignment padding is not counted.
    public var payloadBytes: Int {
        switch storage {
        case let .quantized(spec): PackedLayout(spec: spec, count: count).totalBytes
        case let .float(dtype): count * dtype.byteSize
        }
    }

    public var bitsPerWeight: Double { count == 0 ? 0 : Double(payloadBytes * 8) / Double(count) }

    public var isQuantized: Bool {
        if case .quantized = storage { return true }
        return false
    }
}

/// A file carried inside the checkpoint (tokenizer.json and friends).
public struct EmbeddedFileInfo: Hashable, Sendable {
    public let name: String
    public let fileRange: Range<Int>
    public let checksum: UInt64
}

/// Everything a packed checkpoint can be found guilty of, each naming the file,
/// the check that failed and where.
public enum PackedCheckpointError: Error, LocalizedError, Equatable {
    case badMagic(URL, found: [UInt8])
    case truncated(URL, size: Int, reason: String)
    case unsupportedVersion(URL, found: UInt32, supported: UInt32)
    case versionMismatch(URL, preamble: UInt32, footer: UInt32)
    case headerOutOfBounds(URL, offset: Int, length: Int, limit: Int)
    case headerChecksumMismatch(URL, stored: UInt64, computed: UInt64)
    case invalidHeader(URL, reason: String)
    /// A tensor or file entry that contradicts itself or the format (sizes, types, names).
    case invalidEntry(URL, name: String, reason: String)
    case outOfBounds(URL, name: String, range: Range<Int>, dataSection: Range<Int>)
    case misaligned(URL, name: String, offset: Int)
    case overlap(URL, first: String, second: String, at: Int)
    case checksumMismatch(URL, name: String, range: Range<Int>, stored: UInt64, computed: UInt64)
    case decompressionFailed(URL, name: String, reason: String)
    case outOfMemory(URL, name: String, bytes: Int)
    case missingTensor(URL, name: String)
    case missingFile(URL, name: String)
    case notQuantized(URL, name: String)
    /// The writer was given something the format cannot hold.
    case invalidInput(URL, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .badMagic(url, found):
            "\(url.path): not a packed checkpoint (magic check): it starts with \(Self.show(found)), expected \"QLORAPAK\""
        case let .truncated(url, size, reason):
            "\(url.path): truncated or damaged (\(size) bytes): \(reason)"
        case let .unsupportedVersion(url, found, supported):
            "\(url.path): format version \(found) is newer than this qlora reads (up to \(supported)); upgrade qlora"
        case let .versionMismatch(url, preamble, footer):
            "\(url.path): damaged: the preamble says version \(preamble), the footer \(footer)"
        case let .headerOutOfBounds(url, offset, length, limit):
            "\(url.path): header truncated: the footer puts \(length) header bytes at offset \(offset), past the end of the data (\(limit))"
        case let .headerChecksumMismatch(url, stored, computed):
            "\(url.path): header checksum mismatch: stored \(PackedCheckpointFormat.hex(stored)), computed \(PackedCheckpointFormat.hex(computed)); the header is damaged"
        case let .invalidHeader(url, reason):
            "\(url.path): invalid header: \(reason)"
        case let .invalidEntry(url, name, reason):
            "\(url.path): \"\(name)\": \(reason)"
        case let .outOfBounds(url, name, range, data):
            "\(url.path): \"\(name)\": bytes \(range.lowerBound)..<\(range.upperBound) lie outside the data section \(data.lowerBound)..<\(data.upperBound)"
        case let .misaligned(url, name, offset):
            "\(url.path): \"\(name)\": offset \(offset) is not a multiple of \(PackedCheckpointFormat.alignment)"
        case let .overlap(url, first, second, at):
            "\(url.path): \"\(first)\" and \"\(second)\" overlap at byte \(at)"
        case let .checksumMismatch(url, name, range, stored, computed):
            "\(url.path): \"\(name)\": checksum mismatch in bytes \(range.lowerBound)..<\(range.upperBound): stored \(PackedCheckpointFormat.hex(stored)), computed \(PackedCheckpointFormat.hex(computed)); the data is damaged"
        case let .decompressionFailed(url, name, reason):
            "\(url.path): \"\(name)\": zstd decompression failed: \(reason)"
        case let .outOfMemory(url, name, bytes):
            "\(url.path): \"\(name)\": cannot allocate \(bytes) bytes"
        case let .missingTensor(url, name):
            "\(url.path): no tensor named \"\(name)\""
        case let .missingFile(url, name):
            "\(url.path): no embedded file named \"\(name)\""
        case let .notQuantized(url, name):
            "\(url.path): \"\(name)\" is not quantized"
        case let .invalidInput(url, reason):
            "\(url.path): cannot write: \(reason)"
        }
    }

    private static func show(_ bytes: [UInt8]) -> String {
        if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return "\"\(String(decoding: bytes, as: UTF8.self))\"" }
        return bytes.map { PackedCheckpointFormat.hex(UInt64($0)).suffix(2) }.joined(separator: " ")
    }
}
