import COpenBLAS
import Foundation
import QLoRACompute
import QLoRAStorage

/// A Llama-family causal language model (whatever `LlamaConfiguration`
/// accepts: Llama 1–3, TinyLlama, Mistral, Qwen2, stories260K) in fp32,
/// written the llm.c way: each layer is a forward that caches what its
/// backward needs and a hand-written backward.
///
/// The base is frozen. Every linear is a `Projection` over a `FrozenLinear`
/// (dense fp32 as loaded, packed blocks once quantized), and trainable
/// adapters attach to projections. Backward runs from the loss through every
/// projection's input into the adapters' gradients; the embedding, norms and
/// base weights get none.
///
/// Inference (generation, evaluation) runs through `forward(_:cache:logits:)`
/// with a `KVCache` instead, which keeps no training caches.
///
/// Not thread-safe: one forward/backward at a time (each one uses all cores).
public final class LlamaModel {
    public let configuration: LlamaConfiguration
    public let embedding: Embedding
    public let layers: [DecoderLayer]
    public let finalNorm: RMSNorm
    /// Shares the embedding table when the checkpoint ties them.
    public let lmHead: Projection
    public let rope: RotaryEmbedding
    /// The attached adapters' tensors and gradients; nil until adapters are attached.
    public internal(set) var trainableParameters: TrainableParameters?
    /// How the attached LoRA adapters were configured; nil without them.
    public internal(set) var loraConfiguration: LoRAConfiguration?

    /// Keep only each layer's input during forward and recompute the layer's
    /// activations just before its backward: one layer's cache instead of L,
    /// for one more forward pass of compute.
    public var gradientCheckpointing = false {
        didSet { if gradientCheckpointing != oldValue { workspace = nil } }
    }

    private var workspace: Workspace?
    /// What the latest forward pass left for backward; `headRows` is how many
    /// rows went through lm_head when only the target rows did (nil: all of them).
    private var pending: (batch: Int, length: Int, hasTargets: Bool, counted: Int, headRows: Int?)?

    init(configuration: LlamaConfiguration, embedding: Embedding, layers: [DecoderLayer], finalNorm: RMSNorm,
         lmHead: Projection, rope: RotaryEmbedding) {
        self.configuration = configuration
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
        self.rope = rope
    }

    var vocabularySize: Int { configuration.vocabularySize }
    var hiddenSize: Int { configuration.hiddenSize }

    /// Every projection, decoder layers' in module order, then lm_head.
    public var projections: [Projection] { layers.flatMap(\.projections) + [lmHead] }

    // MARK: - Forward and backward

    /// The loss of a forward pass: the sum of the counted rows' cross-entropy
    /// and how many rows counted.
    public struct Loss: Sendable, Equatable {
        public var sum: Double
        public var count: Int
        /// Mean cross-entropy over counted rows (transformers' loss); NaN when none counted.
        public var mean: Float { Float(sum / Double(count)) }
    }

    /// Runs the batch and keeps its logits (see `logits()`) and, for backward,
    /// its activations. Returns the loss when the batch has targets.
    ///
    /// With `allLogits` false, a batch with targets runs lm_head and the
    /// cross-entropy on the rows that have a target only (fine-tuning on
    /// completions leaves most rows without one, and at large vocabularies
    /// lm_head is a large share of a step); the loss and every gradient are
    /// the same, and `logits()` and `finalNormOutput()` are then not available.
    @discardableResult
    public func forward(_ batch: TokenBatch, allLogits: Bool = true) throws -> Loss? {
        try validate(batch)
        let b = batch.batchSize, t = batch.length, n = b * t
        let ws = prepareWorkspace(batch: b, length: t)
        ws.load(batch)
        let context = ws.context(batch: b, length: t)
        rope.tables(positions: ws.positions, count: n, cos: ws.cos.pointer, sin: ws.sin.pointer)
        embedding.forward(ws.tokens, count: n, into: ws.residual[0].pointer)
        for (l, layer) in layers.enumerated() {
            layer.forward(ws.residual[l].pointer, into: ws.residual[l + 1].pointer, cache: ws.cache(layer: l), context: context)
        }
        finalNorm.forward(ws.residual[layers.count].pointer, rows: n, into: ws.finalInput.pointer, rstd: ws.finalRstd.pointer)
        let headRows = allLogits || batch.targets == nil ? nil : ws.compactTargetRows(width: hiddenSize)
        ws.logitsComplete = headRows == nil
        lmHead.forward(ws.finalInput.pointer, rows: headRows ?? n, into: ws.logits.pointer)
        var loss: Loss?
        if batch.targets != nil {
            let (sum, count) = CrossEntropy.forward(logits: ws.logits.pointer, targets: ws.targets, rows: headRows ?? n,
                                                    classes: vocabularySize, lse: ws.logitLSE.pointer)
            loss = Loss(sum: sum, count: count)
        }
        pending = (b, t, batch.targets != nil, loss?.count ?? 0, headRows)
        return loss
    }

    /// Backpropagates the latest forward pass's loss into the adapters'
    /// gradients (added to what is there). `scale` is ∂loss/∂(summed
    /// cross-entropy): 1/count by default, the mean loss; pass 1/(tokens in
    /// the optimizer step) to accumulate micro-batches. Overwrites the logits
    /// with their gradient.
    public func backward(scale: Float? = nil) throws {
        guard let state = pending, state.hasTargets, let ws = workspace else { throw ModelError.noForwardPass }
        pending = nil
        let n = state.batch * state.length, last = layers.count - 1
        let context = ws.context(batch: state.batch, length: state.length)
        let lossScale = scale ?? (state.counted > 0 ? 1 / Float(state.counted) : 0)
        let headRows = state.headRows ?? n
        CrossEntropy.backward(logits: ws.logits.pointer, targets: ws.targets, lse: ws.logitLSE.pointer,
                              rows: headRows, classes: vocabularySize, scale: lossScale)
        // The embeddings never train: backward ends at the lowest layer with an adapter, without its
        // input gradient (layers below it kept no cache).
        let lowest = lowestAdaptedLayer.map { max($0, ws.keptFrom) }
        lmHead.backward(ws.logits.pointer, input: ws.finalInput.pointer, rows: headRows,
                        into: lowest == nil ? nil : ws.gradients.norm.pointer, accumulate: false)
        guard let lowest else { return }
        if let m = state.headRows { ws.expandTargetRows(ws.gradients.norm.pointer, count: m, rows: n, width: hiddenSize) }
        finalNorm.backward(ws.gradients.norm.pointer, input: ws.residual[layers.count].pointer, rstd: ws.finalRstd.pointer,
                           rows: n, into: ws.residualGradient.pointer, accumulate: false)
        for l in stride(from: last, through: lowest, by: -1) {
            let cache = ws.cache(layer: l)
            if gradientCheckpointing && l != last {
                // Recompute the activations; the output equals the kept input of layer l + 1.
                layers[l].forward(ws.residual[l].pointer, into: ws.residual[l + 1].pointer, cache: cache, context: context)
            }
            layers[l].backward(ws.residualGradient.pointer, input: ws.residual[l].pointer, cache: cache,
                               gradients: ws.gradients, context: context, inputGradient: l > lowest)
        }
    }

    // MARK: - Inspecting the latest forward pass

    /// Logits [B, T, V] of the latest forward pass (their gradient after backward).
    public func logits() -> [Float] {
        guard let ws = workspace, let n = ws.rows, ws.logitsComplete else { return [] }
        return ws.logits.array(count: n * vocabularySize)
    }

    /// Logits [V] of one row (b·T + t) of the latest forward pass.
    public func logits(row: Int) -> [Float] {
        guard let ws = workspace, let n = ws.rows, ws.logitsComplete else { return [] }
        precondition((0..<n).contains(row), "[LlamaModel] row \(row) is outside the \(n) rows of the latest batch")
        let v = vocabularySize
        return Array(UnsafeBufferPointer(start: ws.logits.pointer + row * v, count: v))
    }

    /// The residual stream [B, T, C]: `index` 0 is the embedding output,
    /// `index` l + 1 the output of decoder layer l.
    public func hiddenState(_ index: Int) -> [Float] {
        guard let ws = workspace, let n = ws.rows else { return [] }
        precondition((0...layers.count).contains(index), "[LlamaModel] no hidden state \(index) (0...\(layers.count))")
        return ws.residual[index].array(count: n * hiddenSize)
    }

    /// The final RMSNorm output [B, T, C], the input of lm_head.
    public func finalNormOutput() -> [Float] {
        guard let ws = workspace, let n = ws.rows, ws.logitsComplete else { return [] }
        return ws.finalInput.array(count: n * hiddenSize)
    }

    /// Decoder layer `layer`'s cache from the latest forward pass. Under
    /// gradient checkpointing only the last layer's is kept; with adapters
    /// attached, none of the layers below the lowest one that has some.
    public func cache(layer: Int) -> DecoderLayerCache? {
        guard let ws = workspace, layer >= ws.keptFrom, !gradientCheckpointing || layer == layers.count - 1 else { return nil }
        return ws.cache(layer: layer)
    }

    /// The lowest decoder layer with an adapter, where backward ends; nil without adapters.
    private var lowestAdaptedLayer: Int? { layers.firstIndex(where: \.isTrainable) }

    /// The first layer whose activations backward needs: the lowest with an
    /// adapter (the layers below only pass their output up), 0 without adapters
    /// (every cache stays available to `cache(layer:)`).
    private var firstKeptLayer: Int { lowestAdaptedLayer ?? 0 }

    /// Flops per token of the frozen products no training step can skip:
    /// the forward of every projection and lm_head, and the input gradient of
    /// lm_head and of every projection from the lowest adapted layer up (that
    /// layer may stop a little earlier). Attention, the adapters' own products
    /// and the elementwise work come on top.
    public var trainingFloorFlopsPerToken: Double {
        func weights(_ p: [Projection]) -> Double { p.reduce(0) { $0 + Double($1.inFeatures * $1.outFeatures) } }
        let upper = layers[firstKeptLayer...].flatMap(\.projections) + [lmHead]
        return 2 * weights(projections) + 2 * weights(upper)
    }

    // MARK: - Private

    private func validate(_ batch: TokenBatch) throws {
        let n = batch.batchSize * batch.length
        guard batch.batchSize > 0, batch.length > 0 else {
            throw ModelError.invalidBatch(reason: "shape [\(batch.batchSize), \(batch.length)] is empty")
        }
        for (name, count) in [("tokens", batch.tokens.count), ("positions", batch.positions.count),
                              ("attentionMask", batch.attentionMask?.count ?? n), ("targets", batch.targets?.count ?? n)]
            where count != n {
            throw ModelError.invalidBatch(reason: "\(name) has \(count) values, expected \(batch.batchSize)×\(batch.length)")
        }
        let v = vocabularySize
        if let i = batch.tokens.firstIndex(where: { $0 < 0 || Int($0) >= v }) {
            throw ModelError.invalidBatch(reason: "token \(batch.tokens[i]) at index \(i) is outside the vocabulary 0..<\(v)")
        }
        if let targets = batch.targets, let i = targets.firstIndex(where: { Int($0) >= v }) {
            throw ModelError.invalidBatch(reason: "target \(targets[i]) at index \(i) is outside the vocabulary 0..<\(v)")
        }
        if let i = batch.positions.firstIndex(where: { $0 < 0 }) {
            throw ModelError.invalidBatch(reason: "position \(batch.positions[i]) at index \(i) is negative")
        }
        if let ids = batch.sequenceIDs {
            guard ids.count == n else {
                throw ModelError.invalidBatch(reason: "sequenceIDs has \(ids.count) values, expected \(batch.batchSize)×\(batch.length)")
            }
            // Attention finds where a sequence starts by walking back over equal ids.
            for row in 0..<batch.batchSize {
                var seen = Set<Int32>()
                for t in 0..<batch.length {
                    let i = row * batch.length + t
                    if (t == 0 || ids[i] != ids[i - 1]) && !seen.insert(ids[i]).inserted {
                        throw ModelError.invalidBatch(reason: "sequence \(ids[i]) of row \(row) is not contiguous (it resumes at position \(t))")
                    }
                }
            }
        }
    }

    /// Sizes the buffers for batches up to b × t now, so growing batches
    /// (generation, padded training batches) do not reallocate as they come.
    public func reserve(batch b: Int, length t: Int) { _ = prepareWorkspace(batch: b, length: t) }

    private func prepareWorkspace(batch b: Int, length t: Int) -> Workspace {
        let keptFrom = gradientCheckpointing ? 0 : firstKeptLayer
        if let ws = workspace, ws.fits(batch: b, length: t), ws.keptFrom == keptFrom { return ws }
        workspace = nil // free the old buffers before allocating the larger ones
        let c = configuration
        let ws = Workspace(rows: b * t, length: t, configuration: c, attention: layers[0].attention,
                           caching: gradientCheckpointing ? .lastOnly : .from(keptFrom))
        workspace = ws
        return ws
    }
}

/// Every buffer one forward/backward pass uses, for up to `rowCapacity` rows
/// and sequences up to `lengthCapacity` long, allocated once and reused while
/// batches fit.
private final class Workspace {
    let rowCapacity: Int
    let lengthCapacity: Int
    /// L + 1 × [N, C]: residual[l] is the input of layer l, residual[L] the final one.
    let residual: [FloatBuffer]
    /// One cache per layer from `keptFrom` up, plus one the layers below share;
    /// one for all under gradient checkpointing.
    let caches: [DecoderLayerCache]
    /// The lowest layer with a cache of its own (0 under gradient checkpointing).
    let keptFrom: Int
    let finalInput: FloatBuffer        // [N, C] final norm output, lm_head input
    let finalRstd: FloatBuffer         // [N]
    let logits: FloatBuffer            // [N, V], then ∂loss/∂logits
    let logitLSE: FloatBuffer          // [N]
    let cos: FloatBuffer               // [N, hd/2]
    let sin: FloatBuffer               // [N, hd/2]
    let attentionScratch: FloatBuffer
    let gradients: LayerGradients
    let residualGradient: FloatBuffer  // [N, C]
    let tokens: UnsafeMutablePointer<Int32>     // [N]
    let positions: UnsafeMutablePointer<Int32>  // [N]
    let targets: UnsafeMutablePointer<Int32>    // [N]
    let mask: UnsafeMutablePointer<UInt8>       // [N]
    let sequences: UnsafeMutablePointer<Int32>  // [N]
    /// The original rows of the compacted target rows (see `compactTargetRows`).
    let targetRows: UnsafeMutablePointer<Int32> // [N]
    /// Whether the latest forward ran lm_head on every row.
    var logitsComplete = true
    private(set) var hasMask = false
    private(set) var hasSequences = false
    /// Rows of the batch loaded last.
    private(set) var rows: Int?

    enum Caching {
        /// Gradient checkpointing: backward recomputes every layer's cache in one buffer.
        case lastOnly
        /// Layers from this one up keep their caches; those below share one.
        case from(Int)
    }

    init(rows n: Int, length t: Int, configuration c: LlamaConfiguration, attention: GroupedQueryAttention, caching: Caching) {
        rowCapacity = n
        lengthCapacity = t
        let cacheCount: Int
        switch caching {
        case .lastOnly: (keptFrom, cacheCount) = (0, 1)
        case let .from(l): (keptFrom, cacheCount) = (l, c.hiddenLayers - l + (l > 0 ? 1 : 0))
        }
        let q = c.attentionHeads * c.headDimensions, kv = c.kvHeads * c.headDimensions
        residual = (0...c.hiddenLayers).map { _ in .workspace(n * c.hiddenSize) }
        caches = (0..<cacheCount).map { _ in
            DecoderLayerCache(rows: n, hidden: c.hiddenSize, queryWidth: q, kvWidth: kv, heads: c.attentionHeads,
                              intermediate: c.intermediateSize)
        }
        finalInput = .workspace(n * c.hiddenSize)
        finalRstd = .workspace(n)
        logits = .workspace(n * c.vocabularySize)
        logitLSE = .workspace(n)
        cos = .workspace(n * c.headDimensions / 2)
        sin = .workspace(n * c.headDimensions / 2)
        // The scratch depends on B and T only through B·H chunks of T×T, bounded by the capacities.
        attentionScratch = .workspace(attention.scratchCount(batch: n, length: t))
        gradients = LayerGradients(rows: n, hidden: c.hiddenSize, queryWidth: q, kvWidth: kv, intermediate: c.intermediateSize)
        residualGradient = .workspace(n * c.hiddenSize)
        tokens = .allocate(capacity: n)
        positions = .allocate(capacity: n)
        targets = .allocate(capacity: n)
        mask = .allocate(capacity: n)
        sequences = .allocate(capacity: n)
        targetRows = .allocate(capacity: n)
    }

    deinit {
        tokens.deallocate()
        positions.deallocate()
        targets.deallocate()
        mask.deallocate()
        sequences.deallocate()
        targetRows.deallocate()
    }

    func fits(batch b: Int, length t: Int) -> Bool { b * t <= rowCapacity && t <= lengthCapacity }

    func cache(layer: Int) -> DecoderLayerCache {
        if caches.count == 1 || layer < keptFrom { return caches[0] }
        return caches[layer - keptFrom + (keptFrom > 0 ? 1 : 0)]
    }

    func load(_ batch: TokenBatch) {
        let n = batch.batchSize * batch.length
        tokens.update(from: batch.tokens, count: n)
        positions.update(from: batch.positions, count: n)
        if let t = batch.targets { targets.update(from: t, count: n) }
        hasMask = batch.attentionMask != nil
        if let m = batch.attentionMask { mask.update(from: m, count: n) }
        hasSequences = batch.sequenceIDs != nil
        if let s = batch.sequenceIDs { sequences.update(from: s, count: n) }
        rows = n
    }

    /// Moves the rows of `finalInput` [rows, width] that have a target, and
    /// their targets, to the front, in order; returns how many there are.
    func compactTargetRows(width c: Int) -> Int {
        var m = 0
        for i in 0..<(rows ?? 0) where targets[i] >= 0 {
            if m != i {
                (finalInput.pointer + m * c).update(from: finalInput.pointer + i * c, count: c)
                targets[m] = targets[i]
            }
            targetRows[m] = Int32(i)
            m += 1
        }
        return m
    }

    /// Undoes `compactTargetRows` (which kept `m` rows) on x [rows, width]:
    /// compacted row k goes back to its original row, and the rows without a
    /// target become zero. From the last row back: a row only ever moves down,
    /// onto a row already moved or not a target.
    func expandTargetRows(_ x: UnsafeMutablePointer<Float>, count m: Int, rows n: Int, width c: Int) {
        var next = n - 1
        for k in stride(from: m - 1, through: 0, by: -1) {
            let i = Int(targetRows[k])
            for r in stride(from: next, to: i, by: -1) { (x + r * c).update(repeating: 0, count: c) }
            if i != k { (x + i * c).update(from: x + k * c, count: c) }
            next = i - 1
        }
        for r in stride(from: next, through: 0, by: -1) { (x + r * c).update(repeating: 0, count: c) }
    }

    /// Forward borrows the MLP input gradient buffer as its [N, F] scratch:
    /// nothing else uses it until a layer's backward, which recomputes what it held.
    func context(batch b: Int, length t: Int) -> BatchContext {
        BatchContext(batch: b, length: t, mask: hasMask ? UnsafePointer(mask) : nil,
                     sequences: hasSequences ? UnsafePointer(sequences) : nil,
                     cos: cos.pointer, sin: sin.pointer, attentionScratch: attentionScratch.pointer,
                     mlpScratch: gradients.up.pointer)
    }
}
