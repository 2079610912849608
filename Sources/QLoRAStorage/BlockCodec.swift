import CQLoRAKernels
import Foundation

// Swift side of the block codec: fp32 weights in, packed blocks out (and back),
// in exactly the byte layout a packed checkpoint stores (formats/packed-checkpoint.md).
// The arithmetic is all in CQLoRAKernels; this file owns memory and shapes.

/// Where the parts of a quantized tensor sit inside its region: codes at 0, then
/// scales, then (DQ8) group scales and the offset, each starting on a 64-byte boundary.
public struct PackedParts: Hashable, Sendable {
    public let codes: Range<Int>
    public let scales: Range<Int>
    /// Empty unless the scales are double quantized.
    public let groupScales: Range<Int>
    /// Bytes of the whole region: the end of its last part.
    public var size: Int { Swift.max(codes.upperBound, scales.upperBound, groupScales.upperBound) }

    public init(layout: PackedLayout) {
        codes = 0..<layout.codeBytes
        let s = PackedCheckpointFormat.align(codes.upperBound)
        scales = s..<(s + layout.scaleBytes)
        let g = layout.groupScaleBytes > 0 ? PackedCheckpointFormat.align(scales.upperBound) : scales.upperBound
        groupScales = g..<(g + layout.groupScaleBytes)
    }
}

/// A zero-filled allocation that backs tensors built in memory (quantized on the
/// fly, decompressed, or converted to fp32). It is mapped straight from the kernel
/// (page-aligned, so 64-byte aligned too) and unmapped on release: malloc would keep
/// freed multi-MB blocks in its heap, and a quantizer allocating one per tensor
/// would see its resident memory creep up over a large model.
public final class AlignedBuffer: @unchecked Sendable {
    public let count: Int
    public let base: UnsafeMutableRawPointer
    private let mapped: Int

    /// Returns nil when the memory cannot be had, so sizes read from files fail
    /// with an error instead of a crash.
    ///
    /// - Parameter hugePages: ask for transparent huge pages (Linux), for weights
    ///   that products stream whole, as `MappedFile` does for checkpoints. Not for
    ///   buffers filled partly, whose untouched pages should stay unmapped.
    public init?(count: Int, hugePages: Bool = false) {
        guard count >= 0 else { return nil }
        let length = Swift.max(count, 1)
        #if os(Linux)
        // Only whole, aligned 2 MiB ranges get huge pages, and mmap aligns to
        // a page: a buffer of a few MiB would keep up to a quarter of itself on
        // small pages. Over-map by one huge page less a page, then return the
        // unaligned head and the surplus tail (Zen 4, 4096x4096 NF4 decode
        // from memory: small pages read 10 % slower).
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let slack = hugePages && length >= Self.hugePage ? Self.hugePage - page : 0
        #else
        let slack = 0
        #endif
        guard let raw = mmap(nil, length + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              raw != MAP_FAILED else { return nil }
        var p = raw
        if slack > 0 {
            let head = (Self.hugePage - Int(bitPattern: raw) % Self.hugePage) % Self.hugePage
            if head > 0 { munmap(raw, head) }
            p = raw + head
            if slack > head { munmap(p + (length + page - 1) / page * page, slack - head) }
        }
        #if os(Linux)
        if hugePages { _ = madvise(p, length, Int32(MADV_HUGEPAGE)) }
        #endif
        self.count = count
        mapped = length
        base = p
    }

    private static let hugePage = 2 << 20

    /// Memory the program cannot go on without (activations, benchmark
    /// buffers), unlike sizes read from files: stops with a message naming
    /// `owner` when the memory cannot be had.
    public static func required(_ count: Int, hugePages: Bool, for owner: String) -> AlignedBuffer {
        guard let buffer = AlignedBuffer(count: count, hugePages: hugePages) else {
            preconditionFailure("[\(owner)] cannot allocate \(count) bytes")
        }
        return buffer
    }

    deinit { munmap(base, mapped) }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
    public var mutableBytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: count) }
}

/// A block-quantized tensor: its region bytes (codes, scales, group scales) laid out
/// as in a packed checkpoint, either owned (from `BlockCodec`) or viewed in place
/// in a memory-mapped file (from `PackedCheckpoint`). Copies share the bytes.
///
/// The bytes live as long as some copy of the tensor does, so raw access goes
/// through closures (`withUnsafeRegion`, `withPacked`) that keep it alive.
public struct QuantizedTensor: @unchecked Sendable {
    public let spec: QuantSpec
    public let shape: [Int]
    public let layout: PackedLayout
    public let parts: PackedParts
    /// The region exactly as stored (parts and the zero padding between them).
    let region: UnsafeRawBufferPointer
    /// Keeps `region` valid: the mapped file or the owned buffer.
    private let owner: AnyObject

    /// `region` must hold `PackedParts(layout:)` for this spec and shape; callers check.
    init(spec: QuantSpec, shape: [Int], region: UnsafeRawBufferPointer, owner: AnyObject) {
        self.spec = spec
        self.shape = shape
        layout = PackedLayout(spec: spec, count: shape.reduce(1, *))
        parts = PackedParts(layout: layout)
        precondition(region.count == parts.size, "[QuantizedTensor] region of \(region.count) bytes, layout needs \(parts.size)")
        self.region = region
        self.owner = owner
    }

    public var count: Int { layout.count }
    /// The last dimension (`in` for a linear weight).
    public var cols: Int { shape.last ?? 1 }
    /// All other dimensions together (`out` for a linear weight).
    public var rows: Int { count / Swift.max(cols, 1) }

    /// The region's bytes, valid inside `body` only.
    public func withUnsafeRegion<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(owner) { try body(region) }
    }

    /// A copy of the region's bytes.
    public var regionBytes: [UInt8] { withUnsafeRegion { Array($0) } }

    /// DQ8 only: the mean of the fp32 absmax values, added back when decoding.
    public var offset: Float {
        guard spec.scaleKind == .dq8 else { return 0 }
        return withUnsafeRegion { $0.loadUnaligned(fromByteOffset: parts.groupScales.upperBound - 4, as: Float.self) }
    }

    /// The C description the kernels take. Its pointers are valid only while this
    /// tensor is alive: keep the tensor (for example in a property) beside it, or
    /// use `withPacked`.
    public var packed: qk_packed {
        let base = region.baseAddress!
        return qk_packed(type: spec.type.code, block_size: Int32(spec.blockSize), scale_kind: spec.scaleKind.code, reserved: 0,
                         rows: Int64(rows), cols: Int64(cols),
                         codes: base.assumingMemoryBound(to: UInt8.self),
                         scales: UnsafeRawPointer(base + parts.scales.lowerBound),
                         group_scales: spec.scaleKind == .dq8 ? (base + parts.groupScales.lowerBound).assumingMemoryBound(to: Float.self) : nil,
                         offset: offset)
    }

    public func withPacked<R>(_ body: (UnsafePointer<qk_packed>) throws -> R) rethrows -> R {
        try withExtendedLifetime(owner) {
            var p = packed
            return try body(&p)
        }
    }

    /// The stored scales decoded to fp32, one per block.
    public func decodedScales() -> [Float] {
        let n = layout.blocks
        return [Float](unsafeUninitializedCapacity: n) { out, initialized in
            withPacked { qk_scales_decode(out.baseAddress!, $0, 0, Int64(n)) }
            initialized = n
        }
    }

    /// Dequantizes whole blocks [blocks) into `y`, which holds `blocks.count · blockSize`
    /// floats (the padding of the last block comes out as zeros).
    public func dequantize(blocks: Range<Int>, into y: UnsafeMutablePointer<Float>) {
        guard !blocks.isEmpty else { return }
        var absmax = [Float](repeating: 0, count: blocks.count)
        withPacked { p in
            qk_scales_decode(&absmax, p, Int64(blocks.lowerBound), Int64(blocks.count))
            qk_dequantize(y, p.pointee.codes + blocks.lowerBound * layout.bytesPerBlock, absmax,
                          Int64(blocks.count), spec.type.code, Int32(spec.blockSize))
        }
    }

    /// All `count` weights back in fp32, with the scales as stored.
    public func dequantized() -> [Float] {
        let padded = layout.blocks * spec.blockSize
        var y = [Float](repeating: 0, count: padded)
        y.withUnsafeMutableBufferPointer { dequantize(blocks: 0..<layout.blocks, into: $0.baseAddress!) }
        y.removeLast(padded - count)
        return y
    }
}

/// What cannot be quantized.
public enum BlockCodecError: Error, LocalizedError, Equatable {
    case invalidSpec(QuantSpec)
    case emptyTensor(shape: [Int])
    case outOfMemory(bytes: Int)

    public var errorDescription: String? {
        switch self {
        case let .invalidSpec(spec):
            "[quantize] block size \(spec.blockSize) is not one of \(QuantSpec.blockSizes.map(String.init).joined(separator: ", "))"
        case let .emptyTensor(shape): "[quantize] a tensor of shape \(shape) has no elements to quantize"
        case let .outOfMemory(bytes): "[quantize] cannot allocate \(bytes) bytes"
        }
    }
}

/// Quantizes a tensor piece by piece, so a caller converting a large fp16/bf16 weight
/// needs only a small fp32 buffer, and pieces can be encoded on several threads.
/// The result is identical to quantizing in one go.
public final class BlockEncoder: @unchecked Sendable {
    public let spec: QuantSpec
    public let shape: [Int]
    public let layout: PackedLayout
    public let parts: PackedParts
    private let buffer: AlignedBuffer
    /// Exact fp32 absmax per block, kept when the stored scales are not fp32.
    private let absmax: AlignedBuffer?
    private let lock = NSLock()
    private var encoded = 0

    public init(spec: QuantSpec, shape: [Int]) throws {
        guard QuantSpec.blockSizes.contains(spec.blockSize) else { throw BlockCodecError.invalidSpec(spec) }
        let count = shape.reduce(1, *)
        guard count > 0, shape.allSatisfy({ $0 > 0 }) else { throw BlockCodecError.emptyTensor(shape: shape) }
        self.spec = spec
        self.shape = shape
        layout = PackedLayout(spec: spec, count: count)
        parts = PackedParts(layout: layout)
        guard let buffer = AlignedBuffer(count: parts.size, hugePages: true) else {
            throw BlockCodecError.outOfMemory(bytes: parts.size)
        }
        self.buffer = buffer
        if spec.scaleKind == .f32 {
            absmax = nil
        } else {
            guard let a = AlignedBuffer(count: layout.blocks * 4) else { throw BlockCodecError.outOfMemory(bytes: layout.blocks * 4) }
            absmax = a
        }
    }

    /// Encodes `chunk` as the flat elements `start ..< start + chunk.count`. `start`
    /// must be a multiple of the block size, and so must the chunk's length unless it
    /// ends the tensor. Disjoint chunks may be encoded in any order, concurrently.
    public func encode(_ chunk: UnsafeBufferPointer<Float>, at start: Int) {
        let B = spec.blockSize
        precondition(start % B == 0 && start >= 0, "[BlockEncoder] chunk starts inside a block")
        precondition(start + chunk.count <= layout.count, "[BlockEncoder] more elements than the shape holds")
        precondition(chunk.count % B == 0 || start + chunk.count == layout.count, "[BlockEncoder] chunk ends inside a block")
        guard let x = chunk.baseAddress, chunk.count > 0 else { return }
        let firstBlock = start / B
        let codes = (buffer.base + firstBlock * layout.bytesPerBlock).assumingMemoryBound(to: UInt8.self)
        let scales = (absmax?.base ?? buffer.base + parts.scales.lowerBound).assumingMemoryBound(to: Float.self) + firstBlock
        qk_quantize(codes, scales, x, Int64(chunk.count), spec.type.code, Int32(B))
        lock.withLock { encoded += chunk.count }
    }

    /// Stores the scales and hands the tensor over; the encoder is spent afterwards.
    public func finish() -> QuantizedTensor {
        precondition(lock.withLock { encoded } == layout.count, "[BlockEncoder] \(encoded) of \(layout.count) elements encoded")
        let n = Int64(layout.blocks)
        if let absmax {
            let exact = absmax.base.assumingMemoryBound(to: Float.self)
            let scales = buffer.base + parts.scales.lowerBound
            switch spec.scaleKind {
            case .f32: break
            case .f16: qk_f32_to_f16(scales.assumingMemoryBound(to: UInt16.self), exact, n)
            case .dq8:
                let groups = (buffer.base + parts.groupScales.lowerBound).assumingMemoryBound(to: Float.self)
                let offset = (buffer.base + parts.groupScales.upperBound - 4).assumingMemoryBound(to: Float.self)
                qk_double_quantize(scales.assumingMemoryBound(to: UInt8.self), groups, offset, exact, n)
            }
        }
        return QuantizedTensor(spec: spec, shape: shape, region: buffer.bytes, owner: buffer)
    }
}

/// One-call quantization and the error it makes.
public enum BlockCodec {
    /// Quantizes `x` (row-major, `shape`) into owned blocks.
    public static func quantize(_ x: UnsafeBufferPointer<Float>, shape: [Int], spec: QuantSpec) throws -> QuantizedTensor {
        let encoder = try BlockEncoder(spec: spec, shape: shape)
        precondition(x.count == encoder.layout.count, "[BlockCodec] \(x.count) values for shape \(shape)")
        encoder.encode(x, at: 0)
        return encoder.finish()
    }

    public static func quantize(_ x: [Float], shape: [Int], spec: QuantSpec) throws -> QuantizedTensor {
        try x.withUnsafeBufferPointer { try quantize($0, shape: shape, spec: spec) }
    }

    /// How far the stored tensor is from `reference`, the weights it was made from.
    public static func error(of tensor: QuantizedTensor, reference: UnsafeBufferPointer<Float>) -> ReconstructionError {
        precondition(reference.count == tensor.count, "[BlockCodec] reference has \(reference.count) values, tensor \(tensor.count)")
        var stats = ReconstructionError()
        let chunkBlocks = Swift.max(1, (1 << 16) / tensor.spec.blockSize)
        var y = [Float](repeating: 0, count: chunkBlocks * tensor.spec.blockSize)
        var block = 0
        while block < tensor.layout.blocks {
            let blocks = block..<Swift.min(block + chunkBlocks, tensor.layout.blocks)
            let first = block * tensor.spec.blockSize
            let n = Swift.min(blocks.count * tensor.spec.blockSize, tensor.count - first)
            y.withUnsafeMutableBufferPointer { y in
                tensor.dequantize(blocks: blocks, into: y.baseAddress!)
                stats.add(reference: UnsafeBufferPointer(rebasing: reference[first..<(first + n)]),
                          approximation: UnsafeBufferPointer(rebasing: y[0..<n]), firstIndex: first)
            }
            block = blocks.upperBound
        }
        return stats
    }
}

/// Error of reconstructed weights against the originals. Non-finite originals are
/// skipped (they can only be there when explicitly allowed).
public struct ReconstructionError: Hashable, Sendable, Codable {
    public var count = 0
    public var sumSquaredError = 0.0
    public var sumSquaredReference = 0.0
    public var maxAbs: Float = 0
    /// Flat index of the largest error.
    public var maxAbsIndex = 0

    public init() {}

    public var rms: Double { count == 0 ? 0 : (sumSquaredError / Double(count)).squareRoot() }
    /// RMS error over RMS weight.
    public var relativeRMS: Double { sumSquaredReference == 0 ? 0 : (sumSquaredError / sumSquaredReference).squareRoot() }

    public mutating func add(reference: UnsafeBufferPointer<Float>, approximation: UnsafeBufferPointer<Float>, firstIndex: Int) {
        var sse = 0.0, ssr = 0.0, worst: Float = 0, worstAt = 0, n = 0
        for i in 0..<reference.count where reference[i].isFinite {
            let e = abs(approximation[i] - reference[i])
            sse += Double(e * e)
            ssr += Double(reference[i] * reference[i])
            if e > worst || n == 0 {
                worst = e
                worstAt = i
            }
            n += 1
        }
        if n > 0 && (count == 0 || worst > maxAbs) {
            maxAbs = worst
            maxAbsIndex = firstIndex + worstAt
        }
        count += n
        sumSquaredError += sse
        sumSquaredReference += ssr
    }

    public mutating func merge(_ other: ReconstructionError) {
        if other.count > 0 && (other.maxAbs > maxAbs || count == 0) {
            maxAbs = other.maxAbs
            maxAbsIndex = other.maxAbsIndex
        }
        count += other.count
        sumSquaredError += other.sumSquaredError
        sumSquaredReference += other.sumSquaredReference
    }
}
