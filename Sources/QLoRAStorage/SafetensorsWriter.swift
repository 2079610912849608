// Writing safetensors files: LoRA adapters, and the checkpoints tests build.
//
// The output is what the reference writer produces for the same tensors: the
// header is padded with spaces to a multiple of 8 bytes, and tensors are laid out
// by decreasing element size, then by name, so every tensor is aligned to its
// element size and the bytes depend only on the tensors and metadata given.
// The file appears whole or not at all (AtomicFileWriter). Tensors are either
// held in memory or produced while the file is written, one at a time, so a
// merged checkpoint never has to be in memory whole.

import Foundation

/// Collects tensors (in memory, or producers of their bytes) and writes them as
/// one safetensors file.
public struct SafetensorsWriter: Sendable {
    /// The `__metadata__` strings (written with sorted keys; omitted when empty).
    public var metadata: [String: String]
    private var tensors: [String: Tensor] = [:]

    /// Receives a produced tensor's bytes, a piece at a time.
    public typealias Emit = (UnsafeRawBufferPointer) throws -> Void

    private struct Tensor: Sendable {
        var dtype: TensorDType
        var shape: [Int]
        var byteCount: Int
        var contents: Contents
    }

    private enum Contents: Sendable {
        case bytes([UInt8])
        case produced(@Sendable (Emit) throws -> Void)
    }

    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
    }

    /// Names added so far, in the order they will be laid out.
    public var names: [String] {
        tensors.sorted { a, b in
            a.value.dtype.byteSize != b.value.dtype.byteSize
                ? a.value.dtype.byteSize > b.value.dtype.byteSize
                : Array(a.key.utf8).lexicographicallyPrecedes(b.key.utf8)
        }.map(\.key)
    }

    /// Adds a tensor from its little-endian bytes.
    /// - Throws: `SafetensorsWriterError` when the name is taken or reserved, or
    ///   the byte count is not product(shape) · dtype size.
    public mutating func add(_ name: String, dtype: TensorDType, shape: [Int], bytes: some Collection<UInt8>) throws {
        let expected = try checkedByteCount(name, dtype: dtype, shape: shape)
        guard bytes.count == expected else {
            throw SafetensorsWriterError.sizeMismatch(name, dtype: dtype, shape: shape, expected: expected, found: bytes.count)
        }
        tensors[name] = Tensor(dtype: dtype, shape: shape, byteCount: expected, contents: .bytes(Array(bytes)))
    }

    /// Adds a tensor whose bytes are made only while `write(to:)` runs: `producer`
    /// is called once, in layout order, and passes the tensor's little-endian bytes
    /// to the `Emit` it is given, in pieces of any size. Only the tensor being
    /// produced then needs to be in memory.
    /// - Throws: `SafetensorsWriterError` when the name is taken or reserved or the
    ///   shape invalid. `write(to:)` throws `.sizeMismatch` if the producer emits
    ///   another byte count, and passes on what the producer throws.
    public mutating func add(_ name: String, dtype: TensorDType, shape: [Int],
                             producer: @escaping @Sendable (_ emit: Emit) throws -> Void) throws {
        let expected = try checkedByteCount(name, dtype: dtype, shape: shape)
        tensors[name] = Tensor(dtype: dtype, shape: shape, byteCount: expected, contents: .produced(producer))
    }

    private func checkedByteCount(_ name: String, dtype: TensorDType, shape: [Int]) throws -> Int {
        guard name != "__metadata__" else { throw SafetensorsWriterError.reservedName(name) }
        guard tensors[name] == nil else { throw SafetensorsWriterError.duplicateName(name) }
        guard let expected = dtype.byteCount(shape: shape) else { throw SafetensorsWriterError.invalidShape(name, shape: shape) }
        return expected
    }

    /// Adds an F32 tensor.
    public mutating func add(_ name: String, shape: [Int], floats: [Float]) throws {
        try add(name, dtype: .F32, shape: shape, bytes: floats.withUnsafeBytes { Array($0) })
    }

    /// Writes the file to `url`, replacing it atomically.
    /// - Throws: `FileError` when the folder is missing or a write fails; `url` is then untouched.
    public func write(to url: URL) throws {
        let order = names
        var header = "{"
        var fields: [String] = []
        if !metadata.isEmpty {
            let pairs = metadata.keys.sorted().map { "\(Self.quoted($0)):\(Self.quoted(metadata[$0]!))" }
            fields.append("\"__metadata__\":{\(pairs.joined(separator: ","))}")
        }
        var offset = 0
        for name in order {
            let t = tensors[name]!
            let shape = t.shape.map(String.init).joined(separator: ",")
            fields.append("\(Self.quoted(name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + t.byteCount)]}")
            offset += t.byteCount
        }
        header += fields.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        headerBytes += [UInt8](repeating: UInt8(ascii: " "), count: (8 - headerBytes.count % 8) % 8)

        let out = try AtomicFileWriter(destination: url)
        var length = UInt64(headerBytes.count).littleEndian
        try withUnsafeBytes(of: &length) { try out.write($0) }
        try out.write(headerBytes)
        for name in order {
            let t = tensors[name]!
            switch t.contents {
            case let .bytes(bytes):
                try out.write(bytes)
            case let .produced(producer):
                var emitted = 0
                let mismatch = { SafetensorsWriterError.sizeMismatch(name, dtype: t.dtype, shape: t.shape, expected: t.byteCount, found: emitted) }
                try producer { piece in
                    emitted += piece.count
                    guard emitted <= t.byteCount else { throw mismatch() }
                    try out.write(piece)
                }
                guard emitted == t.byteCount else { throw mismatch() }
            }
        }
        try out.commit()
    }

    /// A JSON string literal.
    private static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += String(format: "\\u%04x", u.value)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}

/// Tensors a `SafetensorsWriter` refuses.
public enum SafetensorsWriterError: Error, LocalizedError, Equatable {
    /// A tensor with this name was already added.
    case duplicateName(String)
    /// `__metadata__` is the header's metadata key, not a tensor name.
    case reservedName(String)
    /// A dimension is negative, or the byte size overflows.
    case invalidShape(String, shape: [Int])
    /// The bytes given (or produced) are not product(shape) · dtype size.
    case sizeMismatch(String, dtype: TensorDType, shape: [Int], expected: Int, found: Int)

    public var errorDescription: String? {
        switch self {
        case let .duplicateName(name): "safetensors writer: tensor \"\(name)\" was added twice"
        case let .reservedName(name): "safetensors writer: \"\(name)\" is reserved for metadata and cannot name a tensor"
        case let .invalidShape(name, shape): "safetensors writer: tensor \"\(name)\" has invalid shape \(shape)"
        case let .sizeMismatch(name, dtype, shape, expected, found):
            "safetensors writer: tensor \"\(name)\" (\(dtype.rawValue) \(shape)) needs \(expected) bytes, got \(found)"
        }
    }
}
