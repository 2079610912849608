// Reading safetensors files (huggingface/safetensors), treating every byte as hostile.
//
// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the
// data section. The JSON object maps tensor names to {dtype, shape, data_offsets},
// offsets being [begin, end) within the data section; the optional `__metadata__`
// maps strings to strings. A file is accepted only when, as the reference
// implementation requires:
//   - N is at most 100 MB and the header fits in the file;
//   - every tensor has a known dtype, a shape of non-negative integers and
//     end - begin == product(shape) · dtype size (computed with overflow checks);
//   - the tensors, sorted by offset, tile the data section exactly: no overlap, no
//     hole between two tensors and nothing after the last one (a stray byte means
//     the writer and this reader disagree about the file, so it is refused);
//   - no name appears twice.
// The file is memory-mapped; only the header is copied.

import Foundation

/// Element types that can appear in a safetensors file.
public enum TensorDType: String, CaseIterable, Sendable, Codable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL

    public var byteSize: Int {
        switch self {
        case .F64, .I64, .U64: 8
        case .F32, .I32, .U32: 4
        case .F16, .BF16, .I16, .U16: 2
        case .I8, .U8, .BOOL: 1
        }
    }

    /// Floating types a weight can be read from.
    public static let floatWeightTypes: [TensorDType] = [.F32, .F16, .BF16]

    /// Whether `readFloats` and friends can convert this type to fp32.
    public var isFloatWeightType: Bool { Self.floatWeightTypes.contains(self) }

    /// Bytes a tensor of `shape` takes, or nil when a dimension is negative or the size overflows.
    public func byteCount(shape: [Int]) -> Int? {
        var bytes = byteSize
        for d in shape {
            let (p, overflow) = bytes.multipliedReportingOverflow(by: d)
            guard d >= 0, !overflow else { return nil }
            bytes = p
        }
        return bytes
    }
}

/// One tensor's entry in a safetensors header (already validated against the file).
public struct TensorInfo: Hashable, Sendable {
    public var name: String
    public var dtype: TensorDType
    /// Row-major dimensions, outermost first.
    public var shape: [Int]
    /// Absolute byte range in the file.
    public var byteRange: Range<Int>

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }
    /// Rows when the tensor is seen as a matrix [shape[0], everything else]; 1 for a scalar.
    public var rowCount: Int { shape.first ?? 1 }
    /// Elements per row (product of all dimensions but the first).
    public var rowLength: Int { shape.dropFirst().reduce(1, *) }
}

/// A memory-mapped safetensors file: header parsed and checked, tensors handed out as views.
public final class SafetensorsFile: @unchecked Sendable {
    /// The largest header accepted, as in the reference implementation.
    public static let maxHeaderBytes = 100_000_000

    public let url: URL
    public let file: MappedFile
    /// Tensor entries in file (offset) order.
    public let tensors: [TensorInfo]
    /// The `__metadata__` strings, empty when absent.
    public let metadata: [String: String]
    /// Absolute file offset of the data section (8 + header length).
    public let dataStart: Int
    private let index: [String: Int]

    /// Maps `url` and checks its header against the file; throws `SafetensorsError`
    /// (or `FileError` when the file cannot be opened) naming what is wrong.
    public init(url: URL) throws {
        self.url = url
        file = try MappedFile(url: url)
        let bytes = file.bytes
        guard bytes.count >= 8 else { throw SafetensorsError.truncated(url, size: bytes.count) }
        let declared = UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self))
        guard declared <= UInt64(Self.maxHeaderBytes) else { throw SafetensorsError.headerTooLarge(url, length: declared) }
        let headerLength = Int(declared)
        guard headerLength <= bytes.count - 8 else {
            throw SafetensorsError.headerPastEnd(url, length: headerLength, fileSize: bytes.count)
        }
        dataStart = 8 + headerLength
        let header = try Self.parseHeader(Array(bytes[8..<dataStart]), url: url)
        (tensors, metadata) = try Self.validate(header, url: url, dataStart: dataStart, dataSize: bytes.count - dataStart)
        index = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
    }

    /// The entry for `name`.
    public func info(_ name: String) throws -> TensorInfo {
        guard let i = index[name] else { throw SafetensorsError.missingTensor(url, tensor: name) }
        return tensors[i]
    }

    public func contains(_ name: String) -> Bool { index[name] != nil }

    /// The raw little-endian bytes of a tensor, without copying: valid while this
    /// object lives, and aligned only as far as the writer padded the header.
    public func bytes(_ name: String) throws -> UnsafeRawBufferPointer {
        file.bytes(try info(name).byteRange)
    }

    // MARK: - Header checks

    private static func parseHeader(_ bytes: [UInt8], url: URL) throws(SafetensorsError) -> HeaderJSON {
        guard String(bytes: bytes, encoding: .utf8) != nil else {
            throw .invalidJSON(url, offset: 0, reason: "the header is not valid UTF-8")
        }
        do {
            return try HeaderJSONReader.parse(bytes)
        } catch {
            throw .invalidJSON(url, offset: error.offset, reason: error.message)
        }
    }

    private static func validate(
        _ header: HeaderJSON, url: URL, dataStart: Int, dataSize: Int
    ) throws -> ([TensorInfo], [String: String]) {
        guard case let .object(members) = header else { throw SafetensorsError.headerNotObject(url) }
        var seen = Set<String>()
        var infos: [TensorInfo] = []
        var metadata: [String: String] = [:]
        for (name, value) in members {
            guard seen.insert(name).inserted else { throw SafetensorsError.duplicateName(url, name: name) }
            if name == "__metadata__" {
                metadata = try readMetadata(value, url: url)
            } else {
                infos.append(try readEntry(name, value, url: url, dataStart: dataStart, dataSize: dataSize))
            }
        }
        // Tiling check: sorted by (begin, end), each tensor starts where the last ended.
        infos.sort { ($0.byteRange.lowerBound, $0.byteRange.upperBound) < ($1.byteRange.lowerBound, $1.byteRange.upperBound) }
        var covered = dataStart
        var previous: String?
        for info in infos {
            if info.byteRange.lowerBound < covered, let previous {
                throw SafetensorsError.overlap(url, tensor: info.name, other: previous)
            }
            if info.byteRange.lowerBound > covered {
                throw SafetensorsError.gap(url, tensor: info.name, from: covered - dataStart, to: info.byteRange.lowerBound - dataStart)
            }
            covered = info.byteRange.upperBound
            previous = info.name
        }
        guard covered - dataStart == dataSize else {
            throw SafetensorsError.trailingBytes(url, covered: covered - dataStart, dataSize: dataSize)
        }
        return (infos, metadata)
    }

    private static func readMetadata(_ value: HeaderJSON, url: URL) throws -> [String: String] {
        guard case let .object(pairs) = value else { throw SafetensorsError.invalidMetadata(url, key: nil) }
        var out: [String: String] = [:]
        for (key, v) in pairs {
            guard case let .string(s) = v else { throw SafetensorsError.invalidMetadata(url, key: key) }
            out[key] = s
        }
        return out
    }

    private static func readEntry(_ name: String, _ value: HeaderJSON, url: URL, dataStart: Int, dataSize: Int) throws -> TensorInfo {
        guard case .object = value else { throw SafetensorsError.malformedEntry(url, tensor: name, field: "entry") }
        guard case let .string(dtypeName)? = value.member("dtype") else {
            throw SafetensorsError.malformedEntry(url, tensor: name, field: "dtype")
        }
        guard case let .array(dims)? = value.member("shape") else {
            throw SafetensorsError.malformedEntry(url, tensor: name, field: "shape")
        }
        let shape = dims.compactMap(\.nonNegativeInteger)
        guard shape.count == dims.count else { throw SafetensorsError.malformedEntry(url, tensor: name, field: "shape") }
        guard case let .array(offsets)? = value.member("data_offsets"), offsets.count == 2,
              let begin = offsets[0].nonNegativeInteger, let end = offsets[1].nonNegativeInteger
        else { throw SafetensorsError.malformedEntry(url, tensor: name, field: "data_offsets") }
        guard let dtype = TensorDType(rawValue: dtypeName) else {
            throw SafetensorsError.unsupportedDType(url, tensor: name, dtype: dtypeName)
        }
        guard begin <= end else { throw SafetensorsError.reversedOffsets(url, tensor: name, begin: begin, end: end) }
        guard let byteCount = dtype.byteCount(shape: shape) else {
            throw SafetensorsError.sizeOverflow(url, tensor: name, shape: shape)
        }
        guard end - begin == byteCount else {
            throw SafetensorsError.sizeMismatch(url, tensor: name, dtype: dtype, shape: shape,
                                                expected: byteCount, found: end - begin)
        }
        guard end <= dataSize else { throw SafetensorsError.offsetsPastEnd(url, tensor: name, end: end, dataSize: dataSize) }
        return TensorInfo(name: name, dtype: dtype, shape: shape, byteRange: (dataStart + begin)..<(dataStart + end))
    }
}

/// What can be wrong with a safetensors file, or with a request to read one.
/// Every message names the file; offsets in messages count from the data section.
public enum SafetensorsError: Error, LocalizedError, Equatable {
    /// The file is shorter than the 8-byte header length.
    case truncated(URL, size: Int)
    /// The declared header length exceeds `SafetensorsFile.maxHeaderBytes`.
    case headerTooLarge(URL, length: UInt64)
    /// The declared header length runs past the end of the file.
    case headerPastEnd(URL, length: Int, fileSize: Int)
    /// The header is not UTF-8 JSON; `offset` is the byte within the header.
    case invalidJSON(URL, offset: Int, reason: String)
    /// The header is JSON but not an object.
    case headerNotObject(URL)
    /// `__metadata__` is not an object of strings (`key` names the first non-string value).
    case invalidMetadata(URL, key: String?)
    /// A tensor name (or `__metadata__`) appears twice in the header.
    case duplicateName(URL, name: String)
    /// A tensor's entry is not an object, or its dtype, shape or data_offsets field is missing or ill-typed.
    case malformedEntry(URL, tensor: String, field: String)
    /// A tensor's dtype is not one of `TensorDType`.
    case unsupportedDType(URL, tensor: String, dtype: String)
    /// A tensor's data_offsets end before they begin.
    case reversedOffsets(URL, tensor: String, begin: Int, end: Int)
    /// A tensor's element count or byte size does not fit in a machine integer.
    case sizeOverflow(URL, tensor: String, shape: [Int])
    /// A tensor's offsets span a different number of bytes than its shape and dtype need.
    case sizeMismatch(URL, tensor: String, dtype: TensorDType, shape: [Int], expected: Int, found: Int)
    /// A tensor's data ends past the end of the file.
    case offsetsPastEnd(URL, tensor: String, end: Int, dataSize: Int)
    /// Two tensors share bytes.
    case overlap(URL, tensor: String, other: String)
    /// Bytes between two tensors (or before the first) belong to no tensor.
    case gap(URL, tensor: String, from: Int, to: Int)
    /// Bytes after the last tensor belong to no tensor.
    case trailingBytes(URL, covered: Int, dataSize: Int)
    /// No tensor has the requested name.
    case missingTensor(URL, tensor: String)
    /// A tensor was read as floating point but holds another type.
    case notFloatingPoint(URL, tensor: String, dtype: TensorDType)
    /// A tensor holds NaN or ±Inf; `index` is the row-major flat index of the first one.
    case nonFinite(URL, tensor: String, index: Int, value: Float)

    public var errorDescription: String? {
        switch self {
        case let .truncated(url, size):
            "\(url.path): truncated safetensors file (\(size) bytes, fewer than the 8-byte header length)"
        case let .headerTooLarge(url, length):
            "\(url.path): header length \(length) exceeds the \(SafetensorsFile.maxHeaderBytes)-byte limit; not a safetensors file?"
        case let .headerPastEnd(url, length, fileSize):
            "\(url.path): header length \(length) runs past the end of the \(fileSize)-byte file (truncated download?)"
        case let .invalidJSON(url, offset, reason):
            "\(url.path): the header is not valid JSON at byte \(offset): \(reason)"
        case let .headerNotObject(url):
            "\(url.path): the header is JSON but not an object"
        case let .invalidMetadata(url, key?):
            "\(url.path): __metadata__ must map strings to strings, but \"\(key)\" is not a string"
        case let .invalidMetadata(url, nil):
            "\(url.path): __metadata__ must be an object of strings"
        case let .duplicateName(url, name):
            "\(url.path): \"\(name)\" appears twice in the header"
        case let .malformedEntry(url, tensor, field):
            "\(url.path): tensor \"\(tensor)\": \(Self.fieldRule(field))"
        case let .unsupportedDType(url, tensor, dtype):
            "\(url.path): tensor \"\(tensor)\" has dtype \(dtype), which is not handled (supported: \(TensorDType.allCases.map(\.rawValue).joined(separator: ", ")))"
        case let .reversedOffsets(url, tensor, begin, end):
            "\(url.path): tensor \"\(tensor)\" has data_offsets [\(begin), \(end)] that end before they begin"
        case let .sizeOverflow(url, tensor, shape):
            "\(url.path): tensor \"\(tensor)\" has shape \(shape), too large to address"
        case let .sizeMismatch(url, tensor, dtype, shape, expected, found):
            "\(url.path): tensor \"\(tensor)\" (\(dtype.rawValue) \(shape)) needs \(expected) bytes but its data_offsets span \(found)"
        case let .offsetsPastEnd(url, tensor, end, dataSize):
            "\(url.path): tensor \"\(tensor)\" ends at data byte \(end), past the \(dataSize)-byte data section (truncated file?)"
        case let .overlap(url, tensor, other):
            "\(url.path): tensors \"\(tensor)\" and \"\(other)\" overlap"
        case let .gap(url, tensor, from, to):
            "\(url.path): data bytes \(from)..<\(to) before tensor \"\(tensor)\" belong to no tensor"
        case let .trailingBytes(url, covered, dataSize):
            "\(url.path): the tensors cover \(covered) bytes of the \(dataSize)-byte data section; the rest belongs to no tensor"
        case let .missingTensor(url, tensor):
            "\(url.path): no tensor named \"\(tensor)\""
        case let .notFloatingPoint(url, tensor, dtype):
            "\(url.path): tensor \"\(tensor)\" is \(dtype.rawValue), not one of \(TensorDType.floatWeightTypes.map(\.rawValue).joined(separator: ", "))"
        case let .nonFinite(url, tensor, index, value):
            "\(url.path): tensor \"\(tensor)\" holds \(value) at flat index \(index)"
        }
    }

    private static func fieldRule(_ field: String) -> String {
        switch field {
        case "dtype": "\"dtype\" is missing or not a string"
        case "shape": "\"shape\" is missing or not a list of non-negative integers"
        case "data_offsets": "\"data_offsets\" is missing or not two non-negative integers [begin, end]"
        default: "the entry is not an object with dtype, shape and data_offsets"
        }
    }
}
