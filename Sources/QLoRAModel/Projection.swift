import QLoRACompute

/// One linear of the model: its frozen base weight (and frozen bias, for
/// models that have one, such as Qwen2's q/k/v) and, when training, the
/// adapter attached to it. Named by its Hugging Face module path, e.g.
/// "model.layers.0.self_attn.q_proj", which is also how PEFT names targets.
public final class Projection {
    public let name: String
    /// Dense fp32 after loading; replaced by a packed base to run quantized.
    public var base: any FrozenLinear
    /// b [out], added to every output row; frozen, so backward ignores it.
    public let bias: [Float]?
    public var adapter: (any LinearAdapter)?

    public init(name: String, base: any FrozenLinear, bias: [Float]? = nil) {
        precondition(bias.map { $0.count == base.outFeatures } ?? true, "[Projection] \(name): bias is not [\(base.outFeatures)]")
        self.name = name
        self.base = base
        self.bias = bias
    }

    public var inFeatures: Int { base.inFeatures }
    public var outFeatures: Int { base.outFeatures }

    /// y [n, out] from x [n, in].
    public func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        if let adapter {
            adapter.forward(base: base, x, rows: n, into: y)
        } else {
            base.forward(x, rows: n, into: y)
        }
        addBias(y, rows: n)
    }

    private func addBias(_ y: UnsafeMutablePointer<Float>, rows n: Int) {
        bias?.withUnsafeBufferPointer { b in
            let out = outFeatures
            for row in 0..<n {
                let yr = y + row * out
                for j in 0..<out { yr[j] += b[j] }
            }
        }
    }

    /// Projections that read the same x [n, in] (q/k/v, gate/up): y_j [n, out_j]
    /// for each, as `forward` gives, with their LoRA adapters run as one group
    /// when they can be (see `LoRAAdapter.group`).
    static func forward(_ group: [Projection], _ x: UnsafePointer<Float>, rows n: Int,
                        into outputs: [UnsafeMutablePointer<Float>]) {
        guard let adapters = LoRAAdapter.group(group.map(\.adapter)) else {
            for (p, y) in zip(group, outputs) { p.forward(x, rows: n, into: y) }
            return
        }
        for (p, y) in zip(group, outputs) { p.base.forward(x, rows: n, into: y) }
        LoRAAdapter.forward(adapters, x, rows: n, into: outputs)
        for (p, y) in zip(group, outputs) { p.addBias(y, rows: n) }
    }

    /// The backward of `forward(_:_:rows:into:)`: dx [n, in] (+)= the sum of
    /// the projections' input gradients from dys[j] [n, out_j]; a nil dx
    /// only adds the adapters' parameter gradients.
    static func backward(_ group: [Projection], _ dys: [UnsafePointer<Float>], input x: UnsafePointer<Float>, rows n: Int,
                         into dx: UnsafeMutablePointer<Float>?, accumulate: Bool) {
        guard let adapters = LoRAAdapter.group(group.map(\.adapter)) else {
            for (j, (p, dy)) in zip(group, dys).enumerated() {
                p.backward(dy, input: x, rows: n, into: dx, accumulate: accumulate || j > 0)
            }
            return
        }
        if let dx {
            for (j, (p, dy)) in zip(group, dys).enumerated() {
                p.base.backwardInput(dy, rows: n, into: dx, accumulate: accumulate || j > 0)
            }
        }
        LoRAAdapter.backward(adapters, dys, input: x, rows: n, into: dx)
    }

    /// dx [n, in] (+)= ∂loss/∂x from dy [n, out]; x is the forward input,
    /// which only an adapter needs. A nil dx only adds the adapter's
    /// parameter gradients.
    public func backward(_ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int,
                         into dx: UnsafeMutablePointer<Float>?, accumulate: Bool) {
        if let adapter {
            adapter.backward(base: base, dy, input: x, rows: n, into: dx, accumulate: accumulate)
        } else if let dx {
            base.backwardInput(dy, rows: n, into: dx, accumulate: accumulate)
        }
    }
}
