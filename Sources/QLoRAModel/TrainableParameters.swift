/// Every trainable tensor of the attached adapters in one contiguous buffer,
/// with a parallel gradient buffer, so the optimizer and gradient clipping
/// are single flat loops. Adapters hold pointers into these buffers.
public final class TrainableParameters {
    public struct Entry: Sendable, Equatable {
        /// "<module>.<tensor>", e.g. "model.layers.0.self_attn.q_proj.lora_A.weight".
        public let name: String
        public let shape: [Int]
        /// Index of the first value in `values` / `gradients`.
        public let offset: Int
        public var count: Int { shape.reduce(1, *) }
    }

    /// Tensors in layout order.
    public let entries: [Entry]
    /// All values, [count].
    public let values: FloatBuffer
    /// ∂loss/∂values, [count]; backward adds into it.
    public let gradients: FloatBuffer
    private let index: [String: Int]

    public var count: Int { values.count }

    /// Lays out the named tensors back to back, zero-initialized.
    public init(tensors: [(name: String, shape: [Int])]) {
        var offset = 0
        var entries: [Entry] = []
        for tensor in tensors {
            entries.append(Entry(name: tensor.name, shape: tensor.shape, offset: offset))
            offset += tensor.shape.reduce(1, *)
        }
        self.entries = entries
        values = FloatBuffer(count: offset)
        gradients = FloatBuffer(count: offset)
        index = Dictionary(uniqueKeysWithValues: entries.enumerated().map { ($1.name, $0) })
    }

    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }

    /// The values of one tensor, a view into `values`.
    public func values(of entry: Entry) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: values.pointer + entry.offset, count: entry.count)
    }

    /// The gradient of one tensor, a view into `gradients`.
    public func gradients(of entry: Entry) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: gradients.pointer + entry.offset, count: entry.count)
    }

    public func zeroGradients() { gradients.zero() }
}
