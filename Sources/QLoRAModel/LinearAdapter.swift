import QLoRACompute

/// A trainable change attached to one frozen linear of the model: LoRA now,
/// other PEFT methods (DoRA, (IA)³, ...) behind the same two calls.
///
/// The adapter wraps the base in both passes rather than only adding a term,
/// so multiplicative methods can scale the base output or its gradient. It
/// may keep what its backward needs from the latest forward (a decoder layer
/// runs forward again before backward under gradient checkpointing). Its
/// trainable tensors live in the model's `TrainableParameters`, and backward
/// adds into their gradients there.
public protocol LinearAdapter: AnyObject {
    /// y [n, out] = the adapted linear applied to x [n, in].
    func forward(base: any FrozenLinear, _ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>)

    /// From dy = ∂loss/∂y [n, out] and the forward input x [n, in]: adds the
    /// parameter gradients, and writes dx [n, in] (adds into it when
    /// `accumulate`), passing the base part through `base.backwardInput`.
    func backward(base: any FrozenLinear, _ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int,
                  into dx: UnsafeMutablePointer<Float>, accumulate: Bool)
}

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
        bias?.withUnsafeBufferPointer { b in
            let out = outFeatures
            for row in 0..<n {
                let yr = y + row * out
                for j in 0..<out { yr[j] += b[j] }
            }
        }
    }

    /// dx [n, in] (+)= ∂loss/∂x from dy [n, out]; x is the forward input,
    /// which only an adapter needs.
    public func backward(_ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int,
                         into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        if let adapter {
            adapter.backward(base: base, dy, input: x, rows: n, into: dx, accumulate: accumulate)
        } else {
            base.backwardInput(dy, rows: n, into: dx, accumulate: accumulate)
        }
    }
}
