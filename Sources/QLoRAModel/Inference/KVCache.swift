import QLoRAStorage

/// The keys and values of one sequence's tokens so far, per layer, so each new
/// token attends to them instead of recomputing the whole prefix; and the
/// buffers one inference step works in, sized for `chunkSize` tokens at a
/// time and reused by every layer (inference keeps no per-layer activations).
///
/// Keys are stored after RoPE, [capacity, KV·hd] per layer, so a step only
/// rotates its own tokens. Made for one model (`LlamaModel.forward(_:cache:logits:)`
/// checks); one sequence at a time.
public final class KVCache {
    /// Tokens the cache can hold: the longest sequence it serves.
    public let capacity: Int
    /// Tokens a forward step runs at once; longer inputs go in chunks.
    public let chunkSize: Int
    /// Tokens held now: the position the next token gets.
    public private(set) var count = 0
    let configuration: LlamaConfiguration
    let keys: [FloatBuffer]    // L × [capacity, KV·hd]
    let values: [FloatBuffer]  // L × [capacity, KV·hd]
    let workspace: InferenceWorkspace

    /// - Parameters:
    ///   - capacity: the longest sequence, prompt and generated tokens together.
    ///   - chunkSize: tokens per step when feeding a long input (a prompt, an
    ///     evaluation window); bounds the activations to chunkSize rows.
    /// - Throws: `GenerationError.invalidCapacity` when either is not positive
    ///   or the capacity exceeds the model's max_position_embeddings.
    public init(model: LlamaModel, capacity: Int, chunkSize: Int = 128) throws {
        let c = model.configuration
        guard capacity > 0, chunkSize > 0, capacity <= c.maxPositionEmbeddings else {
            throw GenerationError.invalidCapacity(capacity: capacity, chunkSize: chunkSize, context: c.maxPositionEmbeddings)
        }
        self.capacity = capacity
        self.chunkSize = min(chunkSize, capacity)
        configuration = c
        let kv = c.kvHeads * c.headDimensions
        keys = (0..<c.hiddenLayers).map { _ in FloatBuffer(count: capacity * kv) }
        values = (0..<c.hiddenLayers).map { _ in FloatBuffer(count: capacity * kv) }
        workspace = InferenceWorkspace(rows: self.chunkSize, capacity: capacity, configuration: c,
                                       attention: model.layers[0].attention)
    }

    /// Forgets every token (the buffers stay allocated).
    public func reset() { count = 0 }

    /// Rewinds to the first `count` tokens, e.g. to reuse a shared prefix.
    public func truncate(to count: Int) {
        precondition((0...self.count).contains(count), "[KVCache] cannot truncate \(self.count) tokens to \(count)")
        self.count = count
    }

    func advance(by n: Int) { count += n }

    /// Bytes of the keys and values.
    public var byteCount: Int { (keys.reduce(0) { $0 + $1.count } + values.reduce(0) { $0 + $1.count }) * 4 }

    /// Bytes of the step buffers: one chunk's activations and logits.
    public var workspaceByteCount: Int { workspace.byteCount }
}

/// One inference step's activations for up to `rows` tokens, shared by all
/// layers: each layer reads the residual stream and writes it back in place.
final class InferenceWorkspace {
    let rows: Int
    let residual: FloatBuffer    // [m, C] x, updated in place layer by layer
    let normed: FloatBuffer      // [m, C] norm output, then o_proj and down_proj outputs
    let rstd: FloatBuffer        // [m]
    let query: FloatBuffer       // [m, H·hd]
    let attention: FloatBuffer   // [m, H·hd]
    let gate: FloatBuffer        // [m, F], then silu(gate)·up
    let up: FloatBuffer          // [m, F]
    let logits: FloatBuffer      // [m, V]
    let cos: FloatBuffer         // [m, hd/2]
    let sin: FloatBuffer         // [m, hd/2]
    let scratch: FloatBuffer     // attention scores
    let tokens: UnsafeMutablePointer<Int32>     // [m]
    let positions: UnsafeMutablePointer<Int32>  // [m]

    init(rows m: Int, capacity: Int, configuration c: LlamaConfiguration, attention: GroupedQueryAttention) {
        rows = m
        let q = c.attentionHeads * c.headDimensions
        residual = FloatBuffer(count: m * c.hiddenSize)
        normed = FloatBuffer(count: m * c.hiddenSize)
        rstd = FloatBuffer(count: m)
        query = FloatBuffer(count: m * q)
        self.attention = FloatBuffer(count: m * q)
        gate = FloatBuffer(count: m * c.intermediateSize)
        up = FloatBuffer(count: m * c.intermediateSize)
        logits = FloatBuffer(count: m * c.vocabularySize)
        cos = FloatBuffer(count: m * c.headDimensions / 2)
        sin = FloatBuffer(count: m * c.headDimensions / 2)
        scratch = FloatBuffer(count: attention.cachedScratchCount(rows: m, capacity: capacity))
        tokens = .allocate(capacity: m)
        positions = .allocate(capacity: m)
    }

    deinit {
        tokens.deallocate()
        positions.deallocate()
    }

    var byteCount: Int {
        let buffers = [residual, normed, rstd, query, attention, gate, up, logits, cos, sin, scratch]
        return buffers.reduce(0) { $0 + $1.count } * 4 + rows * 8
    }
}
