import COpenBLAS
import Foundation
import QLoRACompute

/// Which linears get a LoRA adapter and how it is scaled, in PEFT's terms.
public struct LoRAConfiguration: Sendable, Equatable {
    /// r, the inner dimension of B·A.
    public var rank: Int
    /// lora_alpha.
    public var alpha: Float
    /// Module names matched by their last component, as PEFT matches a list
    /// of target_modules: "q_proj" selects every layer's self_attn.q_proj.
    public var targetModules: [String]
    /// rsLoRA scales by alpha/√r instead of alpha/r.
    public var useRSLoRA: Bool

    public init(rank: Int = 8, alpha: Float = 16,
                targetModules: [String] = LoRAConfiguration.allLlamaProjections, useRSLoRA: Bool = false) {
        self.rank = rank
        self.alpha = alpha
        self.targetModules = targetModules
        self.useRSLoRA = useRSLoRA
    }

    public static let allLlamaProjections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// s in h = W0·x + s·B·(A·x).
    public var scaling: Float { useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    /// Whether a module (full name) is targeted.
    public func targets(_ moduleName: String) -> Bool {
        targetModules.contains { moduleName == $0 || moduleName.hasSuffix("." + $0) }
    }

    /// Names of a module's two tensors in `TrainableParameters` and in PEFT
    /// files (after the "base_model.model." prefix).
    public static func tensorNames(module: String) -> (a: String, b: String) {
        (module + ".lora_A.weight", module + ".lora_B.weight")
    }
}

/// LoRA (Hu et al. 2021) on a frozen linear: y = W0·x + s·B·(A·x), with
/// A [r, in] and B [out, r] trained and W0 untouched (dense or packed).
///
/// Cache for backward: u = x·Aᵀ [n, r] from the latest forward; x itself is
/// the decoder layer's cached input of the projection.
public final class LoRAAdapter: LinearAdapter {
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    public let scaling: Float
    /// A [r, in] and B [out, r], views into `parameters.values`.
    public let a: UnsafeMutablePointer<Float>
    public let b: UnsafeMutablePointer<Float>
    /// ∂loss/∂A [r, in] and ∂loss/∂B [out, r], views into `parameters.gradients`.
    public let gradientA: UnsafeMutablePointer<Float>
    public let gradientB: UnsafeMutablePointer<Float>
    /// Owns the storage the views point into.
    public let parameters: TrainableParameters

    private var hidden = FloatBuffer(count: 0)         // u [n, r]
    private var hiddenGradient = FloatBuffer(count: 0) // du [n, r]

    /// Binds to tensors `a` [r, in] and `b` [out, r] of `parameters`.
    public init(parameters: TrainableParameters, a: TrainableParameters.Entry, b: TrainableParameters.Entry, scaling: Float) {
        precondition(a.shape.count == 2 && b.shape.count == 2 && a.shape[0] == b.shape[1],
                     "[LoRAAdapter] A \(a.shape) and B \(b.shape) do not form B·A")
        rank = a.shape[0]
        inFeatures = a.shape[1]
        outFeatures = b.shape[0]
        self.scaling = scaling
        self.parameters = parameters
        self.a = parameters.values.pointer + a.offset
        self.b = parameters.values.pointer + b.offset
        gradientA = parameters.gradients.pointer + a.offset
        gradientB = parameters.gradients.pointer + b.offset
    }

    /// PEFT's initialization: A ~ U(−1/√in, 1/√in) (kaiming-uniform with
    /// a = √5) and B = 0, so training starts from the base model's output.
    public func initialize<G: RandomNumberGenerator>(using generator: inout G) {
        let bound = 1 / Float(inFeatures).squareRoot()
        for i in 0..<(rank * inFeatures) { a[i] = Float.random(in: -bound...bound, using: &generator) }
        b.update(repeating: 0, count: outFeatures * rank)
    }

    public func forward(base: any FrozenLinear, _ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        base.forward(x, rows: n, into: y)
        guard n > 0 else { return }
        if hidden.count < n * rank {
            hidden = FloatBuffer(count: n * rank)
            hiddenGradient = FloatBuffer(count: n * rank)
        }
        let r = Int32(rank), i = Int32(inFeatures), o = Int32(outFeatures), n32 = Int32(n)
        // u [n, r] = x [n, in] · Aᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n32, r, i, 1, x, i, a, i, 0, hidden.pointer, r)
        // y [n, out] += s · u · Bᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n32, o, r, scaling, hidden.pointer, r, b, r, 1, y, o)
    }

    public func backward(base: any FrozenLinear, _ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int,
                         into dx: UnsafeMutablePointer<Float>, accumulate: Bool) {
        base.backwardInput(dy, rows: n, into: dx, accumulate: accumulate)
        guard n > 0 else { return }
        let r = Int32(rank), i = Int32(inFeatures), o = Int32(outFeatures), n32 = Int32(n)
        let u = hidden.pointer, du = hiddenGradient.pointer
        // dB [out, r] += s · dyᵀ · u
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o, r, n32, scaling, dy, o, u, r, 1, gradientB, r)
        // du [n, r] = s · dy · B
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n32, r, o, scaling, dy, o, b, r, 0, du, r)
        // dA [r, in] += duᵀ · x
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, i, n32, 1, du, r, x, i, 1, gradientA, i)
        // dx [n, in] += du · A
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n32, i, r, 1, du, r, a, i, 1, dx, i)
    }
}
