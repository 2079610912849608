// How much memory a training run will need, worked out before it starts.
//
// Notation: B batch size, T sequence length, N = B·T tokens, L layers, H hidden size,
// Hq = heads·headDim, Hkv = kvHeads·headDim, hd headDim, I intermediate size, V vocabulary,
// nh heads, r LoRA rank; every activation, gradient and trainable value is fp32 (4 bytes).
// The terms are the buffers QLoRAModel's hand-written forward and backward allocate:
//
//   base weights        the seven projections of every block: packed bytes (PackedLayout
//                       of each tensor's flattened weight) or 4 bytes per weight
//   embeddings, norms   4·(V·H · (1, or 2 when lm_head is untied) + (2L + 1)·H + biases)
//   adapter             4 · 4P: weights, gradients and AdamW's m and v, where
//                       P = La · Σ over targets of r·(in + out), La the layers with
//                       adapters (L, or those of PEFT's layers_to_transform)
//   one layer           4·N·(H + c + d): the block's input (the residual stream), its cache
//                         c = 3H + 2 + 2Hq + 2Hkv + nh + 2I
//                       (two norm outputs and their 1/rms, q and k after RoPE, v, the
//                       attention output, the mid-block residual, gate and up, one
//                       log-sum-exp per head: attention recomputes its probabilities in
//                       backward and silu(gate)·up is recomputed too), and its adapters'
//                         d = Σ_targets (2r + in/32·[dropout])
//                       (A·x and its gradient, and one mask bit per dropped input)
//   activations         L·4·N·H + Lk·4·N·c + La·4·N·d + 4·N·H (the final residual), where
//                       Lk = L − l0 + [l0 > 0] caches: one per layer from the lowest with
//                       an adapter, l0, up, and one that the layers below share (backward
//                       stops at l0); all layers adapted, that is L · one layer + 4·N·H.
//                       With gradient checkpointing Lk = 1: the caches c exist once, for
//                       the layer being recomputed
//   logits              4·N·(H + 2 + V): final norm output and 1/rms, the logits (their
//                       gradient overwrites them) and their log-sum-exp
//   scratch             4·N·(2H + 2Hq + 2Hkv + 2I + hd): the gradients flowing through a
//                       layer, the residual gradient and the RoPE tables; attention's
//                       2·min(T, 64)·T floats per thread; 16·N bytes of ids, positions,
//                       targets and mask; with dropout, drop(x) for the widest adapter, 4·N·max(in)
//
// It leaves out the process itself (runtime, libraries, OpenBLAS's buffers: tens of MB)
// and allocator slack. With a limit, `check` refuses a run that does not fit and says
// which single change — batch size, sequence length, gradient checkpointing or LoRA
// rank — brings it under, and to what.

import Foundation
import QLoRAStorage

/// The settings of a training run that decide its memory.
public struct TrainingMemoryPlan: Hashable, Sendable {
    /// How the frozen projections are stored.
    public enum BaseWeights: Hashable, Sendable {
        case fp32
        case packed(QuantSpec)
        /// A measured size (for example the packed checkpoint's file size).
        case bytes(Int)
    }

    public var configuration: LlamaConfiguration
    public var base: BaseWeights
    public var batchSize: Int
    public var sequenceLength: Int
    public var loraRank: Int
    /// Projections that get an adapter (linear weight kinds).
    public var loraTargets: [LlamaTensor.Kind]
    /// The decoder layers that get adapters (PEFT's layers_to_transform); nil = all.
    public var loraLayers: [Int]?
    /// Whether LoRA dropout is on (each adapter then keeps a mask bit per input element).
    public var loraDropout: Bool
    public var gradientCheckpointing: Bool
    /// Threads the attention runs on (each has its own scratch).
    public var threads: Int

    public init(configuration: LlamaConfiguration, base: BaseWeights, batchSize: Int, sequenceLength: Int, loraRank: Int,
                loraTargets: [LlamaTensor.Kind], loraLayers: [Int]? = nil, loraDropout: Bool = false,
                gradientCheckpointing: Bool = false, threads: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.configuration = configuration
        self.base = base
        self.batchSize = batchSize
        self.sequenceLength = sequenceLength
        self.loraRank = loraRank
        self.loraTargets = loraTargets
        self.loraLayers = loraLayers
        self.loraDropout = loraDropout
        self.gradientCheckpointing = gradientCheckpointing
        self.threads = max(1, threads)
    }

    /// The estimate for these settings (see the file comment for the formula).
    public func estimate() -> MemoryEstimate {
        let c = configuration
        let b = Double(batchSize), t = Double(sequenceLength), layers = Double(c.hiddenLayers)
        let h = Double(c.hiddenSize), hq = Double(c.attentionHeads * c.headDimensions)
        let hkv = Double(c.kvHeads * c.headDimensions), inter = Double(c.intermediateSize)
        let v = Double(c.vocabularySize), heads = Double(c.attentionHeads)
        let inventory = c.tensorInventory

        var base = 0.0
        switch self.base {
        case .fp32: base = 4 * inventory.filter(\.kind.isLinearWeight).reduce(0) { $0 + Double($1.shape.reduce(1, *)) }
        case let .packed(spec):
            base = inventory.filter(\.kind.isLinearWeight).reduce(0) { $0 + Double(PackedLayout(spec: spec, count: $1.shape.reduce(1, *)).totalBytes) }
        case let .bytes(n): base = Double(n)
        }
        let frozen = inventory.filter { !$0.kind.isLinearWeight && $0.isRequired }  // a tied lm_head is not required
        let embeddings = 4 * frozen.reduce(0) { $0 + Double($1.shape.reduce(1, *)) }

        // Shapes of the targeted projections in one block: [out, in].
        let targets = inventory.filter { $0.layer == 0 && loraTargets.contains($0.kind) }.map { (out: Double($0.shape[0]), in: Double($0.shape[1])) }
        let r = Double(loraRank)
        let adapted = Set(loraLayers ?? Array(0..<c.hiddenLayers)).filter { (0..<c.hiddenLayers).contains($0) }
        let adaptedLayers = Double(targets.isEmpty ? 0 : adapted.count)
        let adapterParameters = adaptedLayers * targets.reduce(0) { $0 + r * ($1.in + $1.out) }
        let adapter = 4 * 4 * adapterParameters

        let n = b * t
        let cache = 3 * h + 2 + 2 * hq + 2 * hkv + heads + 2 * inter
        let adapters = targets.reduce(0) { $0 + 2 * r + (loraDropout ? $1.in / 32 : 0) }
        let layer = 4 * n * (h + cache + adapters)
        let lowest = targets.isEmpty ? 0 : adapted.min() ?? 0
        let caches = gradientCheckpointing ? 1 : layers - Double(lowest) + (lowest > 0 ? 1 : 0)
        let activations = 4 * n * (layers * h + caches * cache + adaptedLayers * adapters + h)
        let logits = 4 * n * (h + 2 + v)
        let headDimension = Double(c.headDimensions), widest = targets.map(\.in).max() ?? 0
        let scratch = 4 * n * (2 * h + 2 * hq + 2 * hkv + 2 * inter + headDimension)
            + 4 * Double(threads) * 2 * min(t, 64) * t + 16 * n + (loraDropout ? 4 * n * widest : 0)

        return MemoryEstimate(baseWeights: Self.bytes(base), embeddingsAndNorms: Self.bytes(embeddings),
                              activations: Self.bytes(activations), logits: Self.bytes(logits),
                              adapter: Self.bytes(adapter), scratch: Self.bytes(scratch),
                              adapterParameters: Self.bytes(adapterParameters), activationsPerLayer: Self.bytes(layer))
    }

    /// Throws `MemoryLimitError` when the estimate exceeds `limit` bytes; the error
    /// lists every single change of batch size, sequence length, gradient checkpointing
    /// or rank that would fit, each as large as possible.
    public func check(limit: Int) throws {
        let estimate = estimate()
        guard estimate.total > limit else { return }
        var fixes: [MemoryLimitError.Fix] = []
        if !gradientCheckpointing {
            var p = self
            p.gradientCheckpointing = true
            let total = p.estimate().total
            if total <= limit { fixes.append(.init(knob: .gradientCheckpointing, total: total)) }
        }
        let numeric: [(MemoryLimitError.Knob, Int, WritableKeyPath<TrainingMemoryPlan, Int>)] = [
            (.batchSize, batchSize, \.batchSize), (.sequenceLength, sequenceLength, \.sequenceLength), (.loraRank, loraRank, \.loraRank),
        ]
        for (knob, current, path) in numeric {
            if let (value, total) = largestFitting(path, below: current, limit: limit) {
                fixes.append(.init(knob: knob, value: value, total: total))
            }
        }
        var floor = self
        floor.batchSize = 1
        floor.loraRank = 1
        floor.gradientCheckpointing = true
        throw MemoryLimitError(estimate: estimate, limit: limit, fixes: fixes, smallest: floor.estimate())
    }

    /// The largest value of `path` in 1..<current whose estimate fits, by bisection
    /// (the estimate grows with each of these settings).
    private func largestFitting(_ path: WritableKeyPath<TrainingMemoryPlan, Int>, below current: Int, limit: Int) -> (Int, Int)? {
        func total(_ value: Int) -> Int {
            var p = self
            p[keyPath: path] = value
            return p.estimate().total
        }
        guard current > 1, total(1) <= limit else { return nil }
        var lo = 1, hi = current - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if total(mid) <= limit { lo = mid } else { hi = mid - 1 }
        }
        return (lo, total(lo))
    }

    private static func bytes(_ x: Double) -> Int { x >= Double(Int.max) ? Int.max : Int(x.rounded(.up)) }
}

/// Estimated bytes by purpose.
public struct MemoryEstimate: Hashable, Sendable, CustomStringConvertible {
    public var baseWeights: Int
    public var embeddingsAndNorms: Int
    public var activations: Int
    public var logits: Int
    /// Adapter weights, gradients and both AdamW moments.
    public var adapter: Int
    public var scratch: Int
    /// Trainable parameters (not bytes).
    public var adapterParameters: Int
    /// Saved activations of one block.
    public var activationsPerLayer: Int

    public var total: Int {
        [baseWeights, embeddingsAndNorms, activations, logits, adapter, scratch].reduce(0) { $0.addingReportingOverflow($1).overflow ? Int.max : $0 + $1 }
    }

    public var description: String {
        "\(Self.format(total)) = base weights \(Self.format(baseWeights)) + embeddings and norms \(Self.format(embeddingsAndNorms))"
            + " + activations \(Self.format(activations)) (\(Self.format(activationsPerLayer)) per layer) + logits \(Self.format(logits))"
            + " + adapter \(Self.format(adapter)) (\(adapterParameters) parameters with gradients and AdamW moments) + scratch \(Self.format(scratch))"
    }

    /// "1.50 GiB", "12.0 MiB", "512 B".
    public static func format(_ bytes: Int) -> String {
        let b = Double(bytes)
        let kib = 1024.0, mib = kib * kib, gib = mib * kib
        if b >= gib { return String(format: "%.2f GiB", b / gib) }
        if b >= mib { return String(format: "%.1f MiB", b / mib) }
        if b >= kib { return String(format: "%.1f KiB", b / kib) }
        return "\(bytes) B"
    }
}

/// A training run that would not fit its memory limit, with the changes that would.
public struct MemoryLimitError: Error, LocalizedError, Hashable, Sendable {
    /// A setting that lowers the estimate; `flag` is the qlora option that sets it.
    public enum Knob: String, Hashable, Sendable {
        case batchSize, sequenceLength, gradientCheckpointing, loraRank

        public var flag: String {
            switch self {
            case .batchSize: "--batch-size"
            case .sequenceLength: "--max-seq-len"
            case .gradientCheckpointing: "--grad-checkpoint"
            case .loraRank: "--rank"
            }
        }
    }

    /// One change that fits on its own.
    public struct Fix: Hashable, Sendable {
        public var knob: Knob
        /// The new value (nil for the on/off checkpointing switch).
        public var value: Int?
        /// The estimate with this change.
        public var total: Int

        public init(knob: Knob, value: Int? = nil, total: Int) {
            self.knob = knob
            self.value = value
            self.total = total
        }
    }

    public var estimate: MemoryEstimate
    public var limit: Int
    public var fixes: [Fix]
    /// The estimate with batch size 1, rank 1 and gradient checkpointing.
    public var smallest: MemoryEstimate

    public var errorDescription: String? {
        let f = MemoryEstimate.format
        var text = "training needs an estimated \(f(estimate.total)), over the \(f(limit)) memory limit by \(f(estimate.total - limit)).\n"
            + "  estimate: \(estimate)\n"
        if fixes.isEmpty {
            text += "  no single change of \(Knob.batchSize.flag), \(Knob.sequenceLength.flag), \(Knob.gradientCheckpointing.flag) or \(Knob.loraRank.flag) is enough"
            text += smallest.total <= limit
                ? "; combine them (with \(Knob.batchSize.flag) 1 \(Knob.gradientCheckpointing.flag) \(Knob.loraRank.flag) 1 it needs \(f(smallest.total)))"
                : "; even with \(Knob.batchSize.flag) 1 \(Knob.gradientCheckpointing.flag) \(Knob.loraRank.flag) 1 it needs \(f(smallest.total)), of which the frozen weights take \(f(smallest.baseWeights + smallest.embeddingsAndNorms)): use a smaller quantization, a shorter sequence, or raise the limit"
        } else {
            text += "  any one of these fits:"
            for fix in fixes {
                let setting = fix.value.map { "\(fix.knob.flag) \($0)" } ?? fix.knob.flag
                text += "\n    \(setting)  (estimate \(f(fix.total)), saves \(f(estimate.total - fix.total)))"
            }
        }
        return text
    }
}
