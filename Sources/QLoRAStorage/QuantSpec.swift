import CQLoRAKernels

/// A block data type for frozen weights (see formats/packed-checkpoint.md).
public enum QuantType: String, CaseIterable, Sendable, Codable, CustomStringConvertible {
    case int8, int4, nf4, fp4

    /// The number stored in files and passed to the C kernels.
    public var code: Int32 {
        switch self {
        case .int8: Int32(QK_TYPE_INT8.rawValue)
        case .int4: Int32(QK_TYPE_INT4.rawValue)
        case .nf4: Int32(QK_TYPE_NF4.rawValue)
        case .fp4: Int32(QK_TYPE_FP4.rawValue)
        }
    }

    public init?(code: Int32) {
        guard let t = QuantType.allCases.first(where: { $0.code == code }) else { return nil }
        self = t
    }

    /// Bits of one code (excluding scales).
    public var codeBits: Int { self == .int8 ? 8 : 4 }

    public var description: String { rawValue }
}

/// How each block's absmax is stored.
public enum ScaleKind: String, CaseIterable, Sendable, Codable {
    /// One fp32 per block.
    case f32
    /// One IEEE half per block.
    case f16
    /// QLoRA double quantization: 8-bit codes, an fp32 scale per 256 blocks, one fp32 offset.
    case dq8

    public var code: Int32 {
        switch self {
        case .f32: Int32(QK_SCALE_F32.rawValue)
        case .f16: Int32(QK_SCALE_F16.rawValue)
        case .dq8: Int32(QK_SCALE_DQ8.rawValue)
        }
    }

    public init?(code: Int32) {
        guard let k = ScaleKind.allCases.first(where: { $0.code == code }) else { return nil }
        self = k
    }
}

/// Everything that decides how a weight is packed.
public struct QuantSpec: Hashable, Sendable, Codable, CustomStringConvertible {
    public static let blockSizes = [32, 64, 128, 256]
    /// Blocks whose scales share one fp32 group scale under double quantization.
    public static let doubleQuantGroup = Int(QK_DQ_GROUP)

    public var type: QuantType
    public var blockSize: Int
    public var scaleKind: ScaleKind

    public init(type: QuantType, blockSize: Int, scaleKind: ScaleKind = .f32) {
        self.type = type
        self.blockSize = blockSize
        self.scaleKind = scaleKind
    }

    public var description: String { "\(type)/\(blockSize)/\(scaleKind.rawValue)" }
}

/// Byte sizes of one packed tensor: codes, scales and (with double quantization)
/// group scales, for `count` elements blocked over the flattened tensor.
public struct PackedLayout: Hashable, Sendable {
    public let spec: QuantSpec
    public let count: Int

    public init(spec: QuantSpec, count: Int) {
        self.spec = spec
        self.count = count
    }

    public var blocks: Int { (count + spec.blockSize - 1) / spec.blockSize }
    public var bytesPerBlock: Int { Int(qk_block_bytes(spec.type.code, Int32(spec.blockSize))) }
    public var codeBytes: Int { blocks * bytesPerBlock }
    public var scaleBytes: Int {
        switch spec.scaleKind {
        case .f32: blocks * 4
        case .f16: blocks * 2
        case .dq8: blocks
        }
    }
    /// fp32 group scales, plus the fp32 offset, under double quantization.
    public var groupScaleBytes: Int {
        spec.scaleKind == .dq8 ? ((blocks + QuantSpec.doubleQuantGroup - 1) / QuantSpec.doubleQuantGroup) * 4 + 4 : 0
    }
    public var totalBytes: Int { codeBytes + scaleBytes + groupScaleBytes }
    /// Storage cost per weight, everything included.
    public var bitsPerWeight: Double { count == 0 ? 0 : Double(totalBytes * 8) / Double(count) }
}
