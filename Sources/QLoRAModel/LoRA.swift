import CQLoRAKernels
import Foundation
import QLoRACompute
import QLoRATraining

/// Which linears get a LoRA adapter and how it is scaled, in PEFT's terms.
public struct LoRAConfiguration: Sendable, Hashable, Codable {
    /// How A is initialized (B always starts at zero, so training starts from the base model).
    public enum Initialization: String, Sendable, Hashable, Codable, CaseIterable {
        /// PEFT's default (init_lora_weights=True): A ~ U(±1/√in), kaiming-uniform with a = √5.
        case peft
        /// PEFT's init_lora_weights="gaussian": A ~ N(0, 1/r²).
        case gaussian
    }

    /// r, the inner dimension of B·A.
    public var rank: Int
    /// lora_alpha.
    public var alpha: Float
    /// Module names matched by their last component, as PEFT matches a list
    /// of target_modules: "q_proj" selects every layer's self_attn.q_proj.
    public var targetModules: [String]
    /// rsLoRA scales by alpha/√r instead of alpha/r.
    public var useRSLoRA: Bool
    /// lora_dropout: probability of zeroing each input element of the
    /// adapter path during training (the base path sees x unchanged).
    public var dropout: Float
    /// PEFT's layers_to_transform: only these decoder layers get adapters; nil = all.
    public var layers: [Int]?
    public var initialization: Initialization

    public init(rank: Int = 8, alpha: Float = 16,
                targetModules: [String] = LoRAConfiguration.allLlamaProjections, useRSLoRA: Bool = false,
                dropout: Float = 0, layers: [Int]? = nil, initialization: Initialization = .peft) {
        self.rank = rank
        self.alpha = alpha
        self.targetModules = targetModules
        self.useRSLoRA = useRSLoRA
        self.dropout = dropout
        self.layers = layers
        self.initialization = initialization
    }

    /// PEFT's "all-linear" for a Llama: every projection of every block (not lm_head).
    public static let allLlamaProjections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// s in h = W0·x + s·B·(A·x).
    public var scaling: Float { useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    /// Whether a module (full name) is targeted: its last component is one of
    /// `targetModules` and, with `layers`, it sits in one of those blocks.
    public func targets(_ moduleName: String) -> Bool {
        guard targetModules.contains(where: { moduleName == $0 || moduleName.hasSuffix("." + $0) }) else { return false }
        guard let layers else { return true }
        return Self.layerIndex(of: moduleName).map(layers.contains) ?? false
    }

    /// N for a module under "model.layers.N.".
    static func layerIndex(of moduleName: String) -> Int? {
        let parts = moduleName.split(separator: ".")
        guard let i = parts.firstIndex(of: "layers"), i + 1 < parts.count else { return nil }
        return Int(parts[i + 1])
    }

    /// Names of a module's two tensors in `TrainableParameters` and in PEFT
    /// files (after the "base_model.model." prefix).
    public static func tensorNames(module: String) -> (a: String, b: String) {
        (module + ".lora_A.weight", module + ".lora_B.weight")
    }
}

/// LoRA (Hu et al. 2021) on a frozen linear: y = W0·x + s·B·(A·drop(x)),
/// with A [r, in] and B [out, r] trained and W0 untouched (dense or packed).
///
/// drop is PEFT's lora_dropout: while `dropoutGenerator` is set, each input
/// element of the adapter path is zeroed with probability `dropout` and the
/// others scaled by 1/(1 − p); otherwise (evaluation) it is the identity.
/// The mask is drawn from a copy of the generator, so every forward with the
/// same generator — including the one gradient checkpointing reruns before
/// backward — draws the same mask; the trainer sets a new generator for
/// each micro-batch.
///
/// Cache for backward: u = drop(x)·Aᵀ [n, r] and the dropout mask (one bit
/// per input element) from the latest forward; x itself is the decoder
/// layer's cached input of the projection. drop(x) is rebuilt in backward in
/// a scratch buffer shared by all adapters of a model, which also holds du.
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
    /// lora_dropout probability p in [0, 1).
    public let dropout: Float
    /// Draws the dropout mask of the next forward passes; nil = no dropout.
    public var dropoutGenerator: Xoshiro256?

    private var hidden = FloatBuffer(count: 0)         // u [n, r]
    private var mask: [UInt64] = []                    // [n·in] bits, 1 = kept
    private var masked = false                         // whether the latest forward dropped
    private let scratch: LoRAScratch

    /// Binds to tensors `a` [r, in] and `b` [out, r] of `parameters`.
    /// - Parameter scratch: room for du [n, r] and drop(x) [n, in], shared by the adapters of one model.
    public init(parameters: TrainableParameters, a: TrainableParameters.Entry, b: TrainableParameters.Entry, scaling: Float,
                dropout: Float = 0, scratch: LoRAScratch = LoRAScratch()) {
        precondition(a.shape.count == 2 && b.shape.count == 2 && a.shape[0] == b.shape[1],
                     "[LoRAAdapter] A \(a.shape) and B \(b.shape) do not form B·A")
        precondition((0..<1).contains(dropout), "[LoRAAdapter] dropout \(dropout) is outside [0, 1)")
        rank = a.shape[0]
        inFeatures = a.shape[1]
        outFeatures = b.shape[0]
        self.scaling = scaling
        self.parameters = parameters
        self.dropout = dropout
        self.scratch = scratch
        self.a = parameters.values.pointer + a.offset
        self.b = parameters.values.pointer + b.offset
        gradientA = parameters.gradients.pointer + a.offset
        gradientB = parameters.gradients.pointer + b.offset
    }

    /// PEFT's initialization: A ~ U(−1/√in, 1/√in) (kaiming-uniform with
    /// a = √5) and B = 0, so training starts from the base model's output.
    public func initialize<G: RandomNumberGenerator>(using generator: inout G) {
        initialize(.peft, using: &generator)
    }

    /// B = 0 and A as `initialization` says.
    public func initialize<G: RandomNumberGenerator>(_ initialization: LoRAConfiguration.Initialization, using generator: inout G) {
        let count = rank * inFeatures
        switch initialization {
        case .peft:
            let bound = 1 / Float(inFeatures).squareRoot()
            for i in 0..<count { a[i] = Float.random(in: -bound...bound, using: &generator) }
        case .gaussian:
            // Box–Muller, two normals per pair of uniforms; std 1/r as PEFT.
            let std = 1 / Float(rank)
            var i = 0
            while i < count {
                let u1 = Float.random(in: Float.leastNormalMagnitude..<1, using: &generator)
                let u2 = Float.random(in: 0..<1, using: &generator)
                let radius = (-2 * Foundation.log(u1)).squareRoot() * std, angle = 2 * Float.pi * u2
                a[i] = radius * Foundation.cos(angle)
                if i + 1 < count { a[i + 1] = radius * Foundation.sin(angle) }
                i += 2
            }
        }
        b.update(repeating: 0, count: outFeatures * rank)
    }

    public func forward(base: any FrozenLinear, _ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>) {
        base.forward(x, rows: n, into: y)
        guard n > 0 else { return }
        reserve(rows: n)
        masked = dropout > 0 && dropoutGenerator != nil
        let input = masked ? UnsafePointer(droppedInput(x, rows: n, drawingMask: true)) : x
        let r = rank, i = inFeatures, o = outFeatures, pool = ComputePool.shared
        // u [n, r] = drop(x) · Aᵀ
        pool.sgemm(.plain, .transposed, m: n, n: r, k: i, alpha: 1, a: input, lda: i, b: a, ldb: i, beta: 0, c: hidden.pointer, ldc: r)
        // y [n, out] += s · u · Bᵀ
        pool.sgemm(.plain, .transposed, m: n, n: o, k: r, alpha: scaling, a: hidden.pointer, lda: r, b: b, ldb: r,
                   beta: 1, c: y, ldc: o)
    }

    public func backward(base: any FrozenLinear, _ dy: UnsafePointer<Float>, input x: UnsafePointer<Float>, rows n: Int,
                         into dx: UnsafeMutablePointer<Float>?, accumulate: Bool) {
        if let dx { base.backwardInput(dy, rows: n, into: dx, accumulate: accumulate) }
        guard n > 0 else { return }
        let r = rank, i = inFeatures, pool = ComputePool.shared
        // du [n, r] lives in the shared scratch, ahead of drop(x) (sized for both at once, so the
        // scratch does not grow under du).
        let du = scratch.buffer(count: rank * n + (masked ? n * inFeatures : 0))
        addGradientB(dy, rows: n, du: du, rowStride: r)
        guard masked else {
            // dA [r, in] += duᵀ · x
            pool.sgemm(.transposed, .plain, m: r, n: i, k: n, alpha: 1, a: du, lda: r, b: x, ldb: i, beta: 1, c: gradientA, ldc: i)
            // dx [n, in] += du · A
            if let dx { pool.sgemm(.plain, .plain, m: n, n: i, k: r, alpha: 1, a: du, lda: r, b: a, ldb: i, beta: 1, c: dx, ldc: i) }
            return
        }
        // dA [r, in] += duᵀ · drop(x)
        let dropped = droppedInput(x, rows: n, drawingMask: false)
        pool.sgemm(.transposed, .plain, m: r, n: i, k: n, alpha: 1, a: du, lda: r, b: dropped, ldb: i, beta: 1, c: gradientA, ldc: i)
        guard let dx else { return }
        // dx [n, in] += drop'(du · A): the same mask and 1/(1 − p) on the way back
        let g = scratch.buffer(count: n * inFeatures, after: rank * n)
        pool.sgemm(.plain, .plain, m: n, n: i, k: r, alpha: 1, a: du, lda: r, b: a, ldb: i, beta: 0, c: g, ldc: i)
        let keep = 1 / (1 - dropout)
        forEachMaskSpan(count: n * inFeatures) { bits, first, count in
            qk_dropout_accumulate(dx + first, g + first, bits, Int64(count), keep)
        }
    }

    /// Grows the backward cache to n rows.
    private func reserve(rows n: Int) {
        if hidden.count < n * rank { hidden = FloatBuffer(count: n * rank) }
    }

    /// dB [out, r] += s · dyᵀ · u and du [n, r] (rows `rowStride` apart) = s · dy · B, from the
    /// cached u. Both read dy [n, out], so one pass does both where the kernel covers the rank in
    /// whole vectors: the rows of dy split across cores, each chunk after the first summing its
    /// share of dB apart, added in chunk order.
    private func addGradientB(_ dy: UnsafePointer<Float>, rows n: Int, du: UnsafeMutablePointer<Float>, rowStride: Int) {
        let r = rank, o = outFeatures, s = scaling, u = hidden.pointer, b = b, gradientB = gradientB
        let lanes = Int(qk_lora_b_lanes())
        guard lanes > 1, r % lanes == 0 else {
            let pool = ComputePool.shared
            pool.sgemm(.transposed, .plain, m: o, n: r, k: n, alpha: s, a: dy, lda: o, b: u, ldb: r, beta: 1, c: gradientB, ldc: r)
            pool.sgemm(.plain, .plain, m: n, n: r, k: o, alpha: s, a: dy, lda: o, b: b, ldb: r, beta: 0, c: du, ldc: rowStride)
            return
        }
        let grain = 32, chunks = Parallel.chunkCount(for: n, grain: grain)
        let partials = scratch.partialSums(count: (chunks - 1) * o * r)
        partials.update(repeating: 0, count: (chunks - 1) * o * r)
        Parallel.forEachChunk(n, grain: grain) { c, rows in
            let t = rows.lowerBound
            qk_lora_b_gradients(c == 0 ? gradientB : partials + (c - 1) * o * r, du + t * rowStride, Int64(rowStride),
                                dy + t * o, Int64(o), u + t * r, Int64(r), b, Int64(rows.count), Int64(o), Int64(r), s)
        }
        for c in 0..<(chunks - 1) {
            let p = partials + c * o * r
            for e in 0..<(o * r) { gradientB[e] += p[e] }
        }
    }

    /// drop(x) [n, in] in the shared scratch, from a fresh mask (forward) or the latest one (backward).
    private func droppedInput(_ x: UnsafePointer<Float>, rows n: Int, drawingMask: Bool) -> UnsafeMutablePointer<Float> {
        let count = n * inFeatures
        if drawingMask, var generator = dropoutGenerator { drawMask(count: count, from: generator.next()) }
        let out = scratch.buffer(count: count, after: rank * n), keep = 1 / (1 - dropout)
        forEachMaskSpan(count: count) { bits, first, count in
            qk_dropout_apply(out + first, x + first, bits, Int64(count), keep)
        }
        return out
    }

    /// Mask words drawn from one generator: each span of this many words has its
    /// own stream of `seed`, so the spans are drawn concurrently and the mask
    /// does not depend on the thread count.
    private static let maskSpanWords = 256

    /// A fresh mask for `count` elements: an element is kept when a 32-bit
    /// uniform is at least p·2³² (two elements per draw).
    private func drawMask(count: Int, from seed: UInt64) {
        let words = (count + 63) / 64, spans = (words + Self.maskSpanWords - 1) / Self.maskSpanWords
        let threshold = UInt64((Double(dropout) * 4_294_967_296).rounded(.up))
        if mask.count != words { mask = [UInt64](repeating: 0, count: words) }
        mask.withUnsafeMutableBufferPointer { bits in
            let bits = bits.baseAddress!
            Parallel.forEachChunk(spans) { _, chunk in
                for span in chunk {
                    var generator = Xoshiro256(seed: seed, stream: UInt64(span))
                    for w in (span * Self.maskSpanWords)..<min(words, (span + 1) * Self.maskSpanWords) {
                        var word: UInt64 = 0
                        for j in stride(from: 0, to: 64, by: 2) {
                            let draw = generator.next()
                            word |= (draw & 0xFFFF_FFFF >= threshold ? 1 : 0) << UInt64(j)
                            word |= (draw >> 32 >= threshold ? 1 : 0) << UInt64(j + 1)
                        }
                        bits[w] = word
                    }
                }
            }
        }
    }

    /// Calls `body(bits, first, count)` for spans of whole mask words of the
    /// first `count` elements, concurrently; `bits` is the span's first word.
    private func forEachMaskSpan(count: Int, _ body: (UnsafePointer<UInt64>, Int, Int) -> Void) {
        mask.withUnsafeBufferPointer { bits in
            let bits = bits.baseAddress!, words = (count + 63) / 64
            Parallel.forEachChunk(words, grain: 64) { _, chunk in
                let first = chunk.lowerBound * 64
                body(bits + chunk.lowerBound, first, min(count, chunk.upperBound * 64) - first)
            }
        }
    }
}

// MARK: - Adapters sharing an input

extension LoRAAdapter {
    /// The adapters of projections that read the same input (q/k/v, gate/up)
    /// when they can run as one group: all LoRA, of one rank and input width,
    /// sharing a scratch, and none dropping (each draws its own mask).
    static func group(_ adapters: [(any LinearAdapter)?]) -> [LoRAAdapter]? {
        let lora = adapters.compactMap { $0 as? LoRAAdapter }
        guard lora.count == adapters.count, lora.count > 1, let first = lora.first else { return nil }
        let compatible = lora.allSatisfy {
            $0.rank == first.rank && $0.inFeatures == first.inFeatures && $0.scratch === first.scratch
                && ($0.dropout == 0 || $0.dropoutGenerator == nil)
        }
        return compatible ? lora : nil
    }

    /// The adapter terms of a group from `group(_:)`, added to outputs that
    /// already hold the base products: y_j += s·B_j·(A_j·x). The A_j are
    /// stacked into one [m·r, in] matrix, so x is read by one product of m·r
    /// rows instead of m products of r (with the grouped backward, measured on
    /// 2 cores: LoRA's share of a QLoRA training step fell from ~17 % to ~9 %).
    static func forward(_ group: [LoRAAdapter], _ x: UnsafePointer<Float>, rows n: Int,
                        into outputs: [UnsafeMutablePointer<Float>]) {
        guard n > 0 else { return }
        let r = group[0].rank, i = group[0].inFeatures, m = group.count * r, pool = ComputePool.shared
        let (stackedA, stackedHidden, _) = group[0].scratch.stacked(rows: m, in: i, n: n)
        for (j, adapter) in group.enumerated() {
            (stackedA + j * r * i).update(from: adapter.a, count: r * i)
            adapter.reserve(rows: n)
            adapter.masked = false
        }
        // U [n, m·r] = x · stacked Aᵀ; adapter j's u is columns j·r ..< (j + 1)·r.
        pool.sgemm(.plain, .transposed, m: n, n: m, k: i, alpha: 1, a: x, lda: i, b: stackedA, ldb: i,
                   beta: 0, c: stackedHidden, ldc: m)
        for (j, adapter) in group.enumerated() {
            let u = adapter.hidden.pointer
            for row in 0..<n { (u + row * r).update(from: stackedHidden + row * m + j * r, count: r) }
            pool.sgemm(.plain, .transposed, m: n, n: adapter.outFeatures, k: r, alpha: adapter.scaling,
                       a: u, lda: r, b: adapter.b, ldb: r, beta: 1, c: outputs[j], ldc: adapter.outFeatures)
        }
    }

    /// The adapter part of a group's backward, after the base products have
    /// written dx: adds each adapter's parameter gradients and, with the
    /// stacked A, the input gradient of all of them in one product.
    static func backward(_ group: [LoRAAdapter], _ dys: [UnsafePointer<Float>], input x: UnsafePointer<Float>, rows n: Int,
                         into dx: UnsafeMutablePointer<Float>?) {
        guard n > 0 else { return }
        let r = group[0].rank, i = group[0].inFeatures, m = group.count * r, pool = ComputePool.shared
        let (stackedA, stackedGradient, gradientA) = group[0].scratch.stacked(rows: m, in: i, n: n)
        for (j, adapter) in group.enumerated() {
            (stackedA + j * r * i).update(from: adapter.a, count: r * i)
            // dB, and du into columns j·r ..< (j + 1)·r of the stacked du [n, m·r]
            adapter.addGradientB(dys[j], rows: n, du: stackedGradient + j * r, rowStride: m)
        }
        // dA of every adapter [m·r, in] = stacked duᵀ · x, then added to each gradient.
        pool.sgemm(.transposed, .plain, m: m, n: i, k: n, alpha: 1, a: stackedGradient, lda: m, b: x, ldb: i,
                   beta: 0, c: gradientA, ldc: i)
        for (j, adapter) in group.enumerated() {
            let g = adapter.gradientA, d = gradientA + j * r * i
            for e in 0..<(r * i) { g[e] += d[e] }
        }
        // dx [n, in] += stacked du · stacked A
        guard let dx else { return }
        pool.sgemm(.plain, .plain, m: n, n: i, k: m, alpha: 1, a: stackedGradient, lda: m, b: stackedA, ldb: i,
                   beta: 1, c: dx, ldc: i)
    }
}

/// Scratch memory the LoRA adapters of one model share (they run one at a
/// time): du in backward, drop(x) in forward and backward, then the masked
/// input gradient; the stacked matrices of adapters that run as a group.
public final class LoRAScratch {
    private var storage = FloatBuffer(count: 0)
    private var partials = FloatBuffer(count: 0)

    public init() {}

    /// At least `count` floats for the per-chunk sums of dB, apart from the
    /// other buffers, valid until the next call that grows it.
    func partialSums(count: Int) -> UnsafeMutablePointer<Float> {
        if partials.count < count { partials = FloatBuffer(count: count) }
        return partials.pointer
    }

    /// At least `count` floats starting `after` floats into the scratch,
    /// valid until the next call that grows it.
    func buffer(count: Int, after offset: Int = 0) -> UnsafeMutablePointer<Float> {
        if storage.count < offset + count { storage = FloatBuffer(count: offset + count) }
        return storage.pointer + offset
    }

    /// Room for a group of adapters with m·r = `rows` stacked rows: A [rows, in],
    /// U or du [n, rows] and dA [rows, in], valid until the next call.
    func stacked(rows: Int, in i: Int, n: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        let p = buffer(count: rows * (2 * i + n))
        return (p, p + rows * i, p + rows * (i + n))
    }
}
