import CQLoRAKernels
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
}

/// One tensor's entry in a safetensors header.
public struct TensorInfo: Hashable, Sendable {
    public var name: String
    public var dtype: TensorDType
    public var shape: [Int]
    /// Absolute byte range in the file.
    public var byteRange: Range<Int>

    public var count: Int { shape.reduce(1, *) }
}

/// A memory-mapped safetensors file: header parsed, tensors handed out as views.
public final class SafetensorsFile: @unchecked Sendable {
    public let url: URL
    public let file: MappedFile
    /// Tensor entries in file order.
    public let tensors: [TensorInfo]
    public let metadata: [String: String]
    private let index: [String: Int]

    public init(url: URL) throws {
        self.url = url
        file = try MappedFile(url: url)
        let bytes = file.bytes
        guard bytes.count >= 8 else { throw SafetensorsError.truncated(url, size: bytes.count) }
        let headerLength = Int(UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self)))
        guard headerLength <= bytes.count - 8 else {
            throw SafetensorsError.headerTooLarge(url, header: headerLength, file: bytes.count)
        }
        let json = Data(bytes[8..<(8 + headerLength)])
        guard let object = try? JSONSerialization.jsonObject(with: json) as? [String: Any] else {
            throw SafetensorsError.invalidHeader(url, reason: "the header is not a JSON object")
        }
        let dataStart = 8 + headerLength
        var infos: [TensorInfo] = []
        var meta: [String: String] = [:]
        for (name, value) in object {
            if name == "__metadata__" {
                meta = (value as? [String: String]) ?? [:]
                continue
            }
            guard let entry = value as? [String: Any],
                  let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int],
                  let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw SafetensorsError.invalidHeader(url, reason: "tensor \"\(name)\" has no dtype, shape or data_offsets") }
            guard let dtype = TensorDType(rawValue: dtypeName) else {
                throw SafetensorsError.unsupportedDType(url, tensor: name, dtype: dtypeName)
            }
            infos.append(TensorInfo(name: name, dtype: dtype, shape: shape,
                                    byteRange: (dataStart + offsets[0])..<(dataStart + offsets[1])))
        }
        infos.sort { $0.byteRange.lowerBound < $1.byteRange.lowerBound }
        tensors = infos
        metadata = meta
        index = Dictionary(uniqueKeysWithValues: infos.enumerated().map { ($1.name, $0) })
    }

    public func info(_ name: String) throws -> TensorInfo {
        guard let i = index[name] else { throw SafetensorsError.missingTensor(url, tensor: name) }
        return tensors[i]
    }

    public func contains(_ name: String) -> Bool { index[name] != nil }

    /// The raw little-endian bytes of a tensor, without copying.
    public func bytes(_ name: String) throws -> UnsafeRawBufferPointer {
        file.bytes(try info(name).byteRange)
    }

    /// A floating tensor converted to fp32 (F32, F16 or BF16).
    public func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        let raw = file.bytes(info.byteRange)
        let n = info.count
        return [Float](unsafeUninitializedCapacity: n) { out, initialized in
            switch info.dtype {
            case .F32: _ = memcpy(out.baseAddress!, raw.baseAddress!, n * 4)
            case .F16: qk_f16_to_f32(out.baseAddress!, raw.baseAddress!.assumingMemoryBound(to: UInt16.self), Int64(n))
            case .BF16: qk_bf16_to_f32(out.baseAddress!, raw.baseAddress!.assumingMemoryBound(to: UInt16.self), Int64(n))
            default: break
            }
            initialized = n
        }
    }
}

/// What can be wrong with a safetensors file. Every message names the file.
public enum SafetensorsError: Error, LocalizedError, Equatable {
    case truncated(URL, size: Int)
    case headerTooLarge(URL, header: Int, file: Int)
    case invalidHeader(URL, reason: String)
    case unsupportedDType(URL, tensor: String, dtype: String)
    case missingTensor(URL, tensor: String)

    public var errorDescription: String? {
        switch self {
        case let .truncated(url, size):
            "\(url.path): truncated safetensors file (\(size) bytes, fewer than the 8-byte header length)"
        case let .headerTooLarge(url, header, file):
            "\(url.path): header length \(header) runs past the end of the \(file)-byte file"
        case let .invalidHeader(url, reason):
            "\(url.path): invalid safetensors header: \(reason)"
        case let .unsupportedDType(url, tensor, dtype):
            "\(url.path): tensor \"\(tensor)\" has dtype \(dtype), which is not handled (supported: \(TensorDType.allCases.map(\.rawValue).joined(separator: ", ")))"
        case let .missingTensor(url, tensor):
            "\(url.path): no tensor named \"\(tensor)\""
        }
    }
}
