import CQLoRAKernels
import QLoRAStorage

/// A frozen linear layer whose weight W [out, in] stays packed in 4- or 8-bit
/// blocks; every product dequantizes on the fly (see CQLoRAKernels.h for the
/// block format and the kernels). The weight is usually a view into a
/// memory-mapped checkpoint, so a model's base costs its packed size in
/// memory, paged in on demand.
///
/// Work is split across `pool`'s threads: rows of W for the forward, columns
/// of W for the backward. Results are bitwise reproducible for a fixed thread
/// count (in fact for any thread count: each output element is summed in an
/// order fixed by the batch size and W alone).
///
/// See Also: QLoRA (Dettmers et al., 2023), section 3, for NF4 and double
/// quantization; formats/packed-checkpoint.md for the bytes.
public final class PackedLinear: FrozenLinear, @unchecked Sendable {
    /// The tensor's name, used in error messages.
    public let name: String
    public let inFeatures: Int
    public let outFeatures: Int
    public let spec: QuantSpec
    public let pool: ComputePool

    // Immutable after init; the kernels only read it.
    private let view: UnsafeMutablePointer<qk_packed>
    // Whatever keeps the bytes `view` points into alive (a mapped file, owned buffers).
    private let owner: AnyObject

    /// Wraps packed bytes owned elsewhere, typically views into a memory-mapped
    /// checkpoint. The caller guarantees the buffers hold the sizes
    /// `PackedLayout` gives for this shape and spec; this initializer checks
    /// the descriptive fields.
    /// - Parameters:
    ///   - view: the packed matrix (type, block size, scale kind, shape, pointers).
    ///   - owner: kept alive as long as this layer, so the pointers stay valid.
    ///   - name: the tensor name for error messages.
    ///   - pool: threads and scratch for the products.
    /// - Throws: `PackedLinearError` naming the tensor and the bad field.
    public init(view: qk_packed, owner: AnyObject, name: String, pool: ComputePool = .shared) throws(PackedLinearError) {
        guard let type = QuantType(code: view.type) else { throw .unknownType(name, code: view.type) }
        guard QuantSpec.blockSizes.contains(Int(view.block_size)) else {
            throw .unsupportedBlockSize(name, Int(view.block_size))
        }
        guard let kind = ScaleKind(code: view.scale_kind) else { throw .unknownScaleKind(name, code: view.scale_kind) }
        guard view.rows > 0, view.cols > 0, view.rows.multipliedReportingOverflow(by: view.cols).overflow == false else {
            throw .invalidShape(name, rows: Int(view.rows), cols: Int(view.cols))
        }
        guard view.codes != nil else { throw .missingBuffer(name, "codes") }
        guard view.scales != nil else { throw .missingBuffer(name, "scales") }
        guard kind != .dq8 || view.group_scales != nil else { throw .missingBuffer(name, "group scales") }
        self.name = name
        self.inFeatures = Int(view.cols)
        self.outFeatures = Int(view.rows)
        self.spec = QuantSpec(type: type, blockSize: Int(view.block_size), scaleKind: kind)
        self.pool = pool
        self.owner = owner
        self.view = .allocate(capacity: 1)
        self.view.initialize(to: view)
    }

    /// Quantizes fp32 weights [out, in] (row-major) into buffers this layer owns.
    /// - Throws: `PackedLinearError` when `weights` does not hold out × in values.
    public convenience init(
        quantizing weights: UnsafeBufferPointer<Float>, outFeatures: Int, inFeatures: Int, spec: QuantSpec,
        name: String = "weight", pool: ComputePool = .shared
    ) throws(PackedLinearError) {
        try Self.checkCount(weights.count, outFeatures, inFeatures, name)
        let buffers = PackedBuffers(quantizing: weights, spec: spec)
        try self.init(
            view: buffers.view(spec: spec, rows: outFeatures, cols: inFeatures), owner: buffers, name: name, pool: pool)
    }

    /// Quantizes fp32 weights [out, in] (row-major) into buffers this layer owns.
    /// - Throws: `PackedLinearError` when `weights` does not hold out × in values.
    public convenience init(
        quantizing weights: [Float], outFeatures: Int, inFeatures: Int, spec: QuantSpec,
        name: String = "weight", pool: ComputePool = .shared
    ) throws(PackedLinearError) {
        try Self.checkCount(weights.count, outFeatures, inFeatures, name)
        let buffers = weights.withUnsafeBufferPointer { PackedBuffers(quantizing: $0, spec: spec) }
        try self.init(
            view: buffers.view(spec: spec, rows: outFeatures, cols: inFeatures), owner: buffers, name: name, pool: pool)
    }

    private static func checkCount(_ count: Int, _ rows: Int, _ cols: Int, _ name: String) throws(PackedLinearError) {
        guard rows > 0, cols > 0 else { throw .invalidShape(name, rows: rows, cols: cols) }
        guard count == rows * cols else { throw .weightCount(name, expected: rows * cols, found: count) }
    }

    deinit {
        view.deallocate()
    }

    /// Bytes one full product reads from the packed weight: codes, scales and group scales.
    public var packedBytes: Int { PackedLayout(spec: spec, count: inFeatures * outFeatures).totalBytes }

    /// Calls `body` with the packed view (for kernels and benchmarks).
    public func withView<R>(_ body: (UnsafePointer<qk_packed>) throws -> R) rethrows -> R {
        try body(view)
    }

    /// y[n, out] = x[n, in] · Wᵀ.
    public func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        precondition(n >= 0, "[PackedLinear] negative row count")
        guard n > 0 else { return }
        var call = KernelCall(output: y, input: x, rows: Int64(n), weight: view, accumulate: 0)
        let direction = Int32(QK_DIRECTION_FORWARD.rawValue)
        withUnsafePointer(to: &call) { call in
            pool.run(
                extent: outFeatures, grain: Int(qk_matmul_grain(view, call.pointee.rows, direction)),
                scratchFloats: qk_matmul_scratch_floats(view, call.pointee.rows, direction),
                chunksPerThread: Int(qk_matmul_slices_per_thread(view, call.pointee.rows, direction)), context: call
            ) { context, lower, upper, scratch in
                let c = context.assumingMemoryBound(to: KernelCall.self).pointee
                qk_matmul_forward(c.output, c.input, c.rows, c.weight, Int64(lower), Int64(upper), scratch)
            }
        }
    }

    /// dx[n, in] = dy[n, out] · W, or dx += dy · W when `accumulate` is true.
    public func backwardInput(
        _ dy: UnsafePointer<Float>, rows n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool
    ) {
        precondition(n >= 0, "[PackedLinear] negative row count")
        guard n > 0 else { return }
        var call = KernelCall(output: dx, input: dy, rows: Int64(n), weight: view, accumulate: accumulate ? 1 : 0)
        let direction = Int32(QK_DIRECTION_BACKWARD.rawValue)
        withUnsafePointer(to: &call) { call in
            pool.run(
                extent: inFeatures, grain: Int(qk_matmul_grain(view, call.pointee.rows, direction)),
                scratchFloats: qk_matmul_scratch_floats(view, call.pointee.rows, direction), context: call
            ) { context, lower, upper, scratch in
                let c = context.assumingMemoryBound(to: KernelCall.self).pointee
                qk_matmul_backward(
                    c.output, c.input, c.rows, c.weight, Int64(lower), Int64(upper), c.accumulate, scratch)
            }
        }
    }

    /// The dequantized weight [out, in], row-major: exactly the values the
    /// products multiply by (for tests, merging adapters and inspection).
    public func dequantized() -> [Float] {
        let count = inFeatures * outFeatures
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            var tmp = [Float](repeating: 0, count: 256)
            tmp.withUnsafeMutableBufferPointer { t in
                qk_dequantize_span(buffer.baseAddress!, view, 0, Int64(count), t.baseAddress!)
            }
            initialized = count
        }
    }
}

/// Why a packed weight cannot be used, naming the tensor.
public enum PackedLinearError: Error, Equatable, CustomStringConvertible {
    /// The block type code is not one of QuantType's.
    case unknownType(String, code: Int32)
    /// The block size is not 32, 64, 128 or 256.
    case unsupportedBlockSize(String, Int)
    /// The scale storage code is not one of ScaleKind's.
    case unknownScaleKind(String, code: Int32)
    /// Rows or columns are not positive, or their product overflows.
    case invalidShape(String, rows: Int, cols: Int)
    /// A buffer the spec needs is missing.
    case missingBuffer(String, String)
    /// The fp32 weights given to quantize do not match the shape.
    case weightCount(String, expected: Int, found: Int)

    public var description: String {
        switch self {
        case let .unknownType(name, code): "\(name): unknown block type \(code) (supported: 1 int8, 2 int4, 3 nf4, 4 fp4)"
        case let .unsupportedBlockSize(name, size): "\(name): block size \(size) (supported: 32, 64, 128, 256)"
        case let .unknownScaleKind(name, code): "\(name): unknown scale storage \(code) (supported: 0 f32, 1 f16, 2 dq8)"
        case let .invalidShape(name, rows, cols): "\(name): invalid shape [\(rows), \(cols)]"
        case let .missingBuffer(name, what): "\(name): no \(what) buffer"
        case let .weightCount(name, expected, found): "\(name): expected \(expected) weights, found \(found)"
        }
    }
}

/// Packed buffers quantized in memory (tests, benchmarks, layers built from fp32),
/// in huge pages where the system has them, as checkpoints are mapped.
final class PackedBuffers: @unchecked Sendable {
    let codes: UnsafeMutableRawBufferPointer
    let scales: UnsafeMutableRawBufferPointer
    let groupScales: UnsafeMutableRawBufferPointer
    private(set) var offset: Float = 0
    private let storage: [AlignedBuffer]

    init(quantizing weights: UnsafeBufferPointer<Float>, spec: QuantSpec) {
        let layout = PackedLayout(spec: spec, count: weights.count)
        let blocks = layout.blocks
        let groups = spec.scaleKind == .dq8 ? (blocks + QuantSpec.doubleQuantGroup - 1) / QuantSpec.doubleQuantGroup : 0
        storage = [layout.codeBytes, layout.scaleBytes, groups * 4].map {
            .required($0, hugePages: true, for: "PackedBuffers")
        }
        (codes, scales, groupScales) = (storage[0].mutableBytes, storage[1].mutableBytes, storage[2].mutableBytes)
        let absmax = UnsafeMutableBufferPointer<Float>.allocate(capacity: blocks)
        defer { absmax.deallocate() }
        qk_quantize(
            codes.baseAddress!.assumingMemoryBound(to: UInt8.self), absmax.baseAddress!, weights.baseAddress!,
            Int64(weights.count), spec.type.code, Int32(spec.blockSize))
        switch spec.scaleKind {
        case .f32:
            scales.baseAddress!.copyMemory(from: absmax.baseAddress!, byteCount: blocks * 4)
        case .f16:
            qk_f32_to_f16(scales.baseAddress!.assumingMemoryBound(to: UInt16.self), absmax.baseAddress!, Int64(blocks))
        case .dq8:
            qk_double_quantize(
                scales.baseAddress!.assumingMemoryBound(to: UInt8.self),
                groupScales.baseAddress!.assumingMemoryBound(to: Float.self), &offset, absmax.baseAddress!,
                Int64(blocks))
        }
    }

    func view(spec: QuantSpec, rows: Int, cols: Int) -> qk_packed {
        qk_packed(
            spec: spec, rows: rows, cols: cols, codes: UnsafeRawPointer(codes.baseAddress!),
            scales: UnsafeRawPointer(scales.baseAddress!),
            groupScales: spec.scaleKind == .dq8 ? UnsafeRawPointer(groupScales.baseAddress!) : nil, offset: offset)
    }
}

/// Arguments of one kernel call, passed to the pool's threads by pointer.
private struct KernelCall {
    let output: UnsafeMutablePointer<Float>
    let input: UnsafePointer<Float>
    let rows: Int64
    let weight: UnsafeMutablePointer<qk_packed>
    let accumulate: Int32
}

extension qk_packed {
    /// A packed-matrix view over buffers laid out as `PackedLayout` says.
    /// - Parameters:
    ///   - codes: the blocks' codes.
    ///   - scales: fp32, fp16 or 8-bit scales, per `spec.scaleKind`.
    ///   - groupScales: fp32 group scales (double quantization only).
    ///   - offset: the mean of the fp32 scales (double quantization only).
    public init(
        spec: QuantSpec, rows: Int, cols: Int, codes: UnsafeRawPointer, scales: UnsafeRawPointer,
        groupScales: UnsafeRawPointer? = nil, offset: Float = 0
    ) {
        self.init()
        type = spec.type.code
        block_size = Int32(spec.blockSize)
        scale_kind = spec.scaleKind.code
        self.rows = Int64(rows)
        self.cols = Int64(cols)
        self.codes = codes.assumingMemoryBound(to: UInt8.self)
        self.scales = scales
        group_scales = groupScales?.assumingMemoryBound(to: Float.self)
        self.offset = offset
    }
}
