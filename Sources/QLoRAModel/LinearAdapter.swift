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
    /// A nil `dx` asks for the parameter gradients only: nothing below the
    /// layer trains, so the input gradient would be thrown away.
    func backward(base: any FrozenLinear, _ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int,
                  into dx: UnsafeMutablePointer<Float>?, accumulate: Bool)
}
