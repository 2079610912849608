import QLoRACompute
import QLoRAStorage

/// A frozen fp32 linear map whose weight W [out, in] is a `FloatTensor` of a
/// packed checkpoint (an output head kept unquantized): an F32 tensor is a
/// view into the mapped file, so loading it copies nothing; F16/BF16 ones
/// come converted. `DenseLinear` is the same product over an array.
public struct MappedLinear: FrozenLinear {
    public let inFeatures: Int
    public let outFeatures: Int
    public let weight: FloatTensor

    /// - Precondition: `weight` is [out, in] (loaders check the shape first).
    public init(weight: FloatTensor) {
        precondition(weight.shape.count == 2, "[MappedLinear] weight of shape \(weight.shape) is not [out, in]")
        self.weight = weight
        outFeatures = weight.shape[0]
        inFeatures = weight.shape[1]
    }

    public func forward(_ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        weight.withValues {
            DenseLinear.forward(weight: $0.baseAddress!, outFeatures: outFeatures, inFeatures: inFeatures, x, rows: n, into: y)
        }
    }

    public func backwardInput(_ dy: UnsafePointer<Float>, rows n: Int, into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        weight.withValues {
            DenseLinear.backwardInput(weight: $0.baseAddress!, outFeatures: outFeatures, inFeatures: inFeatures, dy, rows: n,
                                      into: dx, accumulate: accumulate)
        }
    }
}
