import CQLoRAKernels
import QLoRACompute
import QLoRAStorage

/// Token embedding lookup, x[t] = E[id[t]], with no scaling (Llama). The
/// table is frozen and nothing upstream of it trains, so there is no
/// backward.
///
/// The table is an array (a Hugging Face checkpoint in fp32), a view of fp32
/// values in a mapped packed checkpoint, or packed blocks; quantized rows are
/// dequantized as they are gathered. A tied lm_head shares whichever it is
/// (`tiedHead`).
public struct Embedding: Sendable {
    public let vocabularySize: Int
    public let dimension: Int
    private let storage: Storage

    private enum Storage: Sendable {
        case array([Float])
        case tensor(FloatTensor)
        case quantized(QuantizedTensor)
    }

    /// E [V, C] as an array.
    public init(table: [Float], vocabularySize: Int, dimension: Int) {
        precondition(table.count == vocabularySize * dimension, "[Embedding] table is not \(vocabularySize)×\(dimension)")
        storage = .array(table)
        self.vocabularySize = vocabularySize
        self.dimension = dimension
    }

    /// E [V, C] as fp32 values, typically viewed in place in a packed checkpoint.
    /// - Precondition: the tensor is [V, C] (loaders check the shape first).
    public init(tensor: FloatTensor) {
        precondition(tensor.shape.count == 2, "[Embedding] tensor of shape \(tensor.shape) is not [V, C]")
        storage = .tensor(tensor)
        vocabularySize = tensor.shape[0]
        dimension = tensor.shape[1]
    }

    /// E [V, C] in packed blocks.
    /// - Precondition: the tensor is [V, C] (loaders check the shape first).
    public init(quantized: QuantizedTensor) {
        precondition(quantized.shape.count == 2, "[Embedding] tensor of shape \(quantized.shape) is not [V, C]")
        storage = .quantized(quantized)
        vocabularySize = quantized.shape[0]
        dimension = quantized.shape[1]
    }

    public var isQuantized: Bool {
        if case .quantized = storage { return true }
        return false
    }

    /// The table as the weight [V, C] of the output head, sharing its storage:
    /// the lm_head of a checkpoint that ties the two.
    public func tiedHead(name: String = "lm_head", pool: ComputePool = .shared) throws -> any FrozenLinear {
        switch storage {
        case let .array(table):
            return DenseLinear(weight: table, outFeatures: vocabularySize, inFeatures: dimension)
        case let .tensor(tensor):
            return MappedLinear(weight: tensor)
        case let .quantized(q):
            return try PackedLinear(view: q.packed, owner: QuantizedTensorOwner(q), name: name, pool: pool)
        }
    }

    /// x [n, C] = E[ids]; ids [n] must be in 0..<V (the model checks them first).
    public func forward(_ ids: UnsafePointer<Int32>, count n: Int, into x: UnsafeMutablePointer<Float>) {
        let c = dimension
        func gather(_ e: UnsafeBufferPointer<Float>) {
            for t in 0..<n { (x + t * c).update(from: e.baseAddress! + Int(ids[t]) * c, count: c) }
        }
        switch storage {
        case let .array(table):
            table.withUnsafeBufferPointer(gather)
        case let .tensor(tensor):
            tensor.withValues(gather)
        case let .quantized(q):
            // Rows may start inside a block when C is not a multiple of the block size.
            withUnsafeTemporaryAllocation(of: Float.self, capacity: QuantSpec.blockSizes.max()!) { tmp in
                q.withPacked { w in
                    for t in 0..<n {
                        qk_dequantize_span(x + t * c, w, Int64(Int(ids[t]) * c), Int64(c), tmp.baseAddress!)
                    }
                }
            }
        }
    }
}

/// Keeps a quantized tensor's bytes alive for a `PackedLinear` that views them.
final class QuantizedTensorOwner: Sendable {
    let tensor: QuantizedTensor
    init(_ tensor: QuantizedTensor) { self.tensor = tensor }
}
