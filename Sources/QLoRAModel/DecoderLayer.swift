import COpenBLAS

/// The shape of one forward pass: B sequences of T tokens, N = B·T rows in
/// every [N, ·] buffer, plus what all layers share (padding mask, RoPE tables,
/// attention scratch).
struct BatchContext {
    let batch: Int                      // B
    let length: Int                     // T
    let mask: UnsafePointer<UInt8>?     // [B, T], nil when nothing is padded
    let sequences: UnsafePointer<Int32>? // [B, T], nil when no row packs several sequences
    let cos: UnsafePointer<Float>       // [N, hd/2]
    let sin: UnsafePointer<Float>       // [N, hd/2]
    let attentionScratch: UnsafeMutablePointer<Float>
    /// [N, F]: silu(gate)·up for down_proj, shared by the layers (backward recomputes it).
    let mlpScratch: UnsafeMutablePointer<Float>
    var rows: Int { batch * length }
}

/// What one decoder layer's backward needs from its forward, sized for up to
/// `rows` rows. The layer's input x [N, C] is kept by the model (it is the
/// residual stream and the restart point for gradient checkpointing).
public final class DecoderLayerCache {
    /// h1 [N, C]: input_layernorm output, the input of q/k/v_proj.
    public let attentionInput: FloatBuffer
    /// [N]: input_layernorm's reciprocal RMS.
    public let attentionRstd: FloatBuffer
    /// [N, H·hd]: q_proj output after RoPE.
    public let query: FloatBuffer
    /// [N, KV·hd]: k_proj output after RoPE.
    public let key: FloatBuffer
    /// [N, KV·hd]: v_proj output.
    public let value: FloatBuffer
    /// [B, H, T]: log-sum-exp of each attention score row.
    public let logSumExp: FloatBuffer
    /// [N, H·hd]: attention output, heads concatenated; the input of o_proj.
    public let attention: FloatBuffer
    /// [N, C]: residual stream after the attention block, x + o_proj(·).
    public let middle: FloatBuffer
    /// h2 [N, C]: post_attention_layernorm output, the input of gate/up_proj.
    public let mlpInput: FloatBuffer
    /// [N]: post_attention_layernorm's reciprocal RMS.
    public let mlpRstd: FloatBuffer
    /// [N, F]: gate_proj output.
    public let gate: FloatBuffer
    /// [N, F]: up_proj output. (silu(gate)·up, the input of down_proj, is not
    /// kept: backward recomputes it, an elementwise pass, saving N·F floats per layer.)
    public let up: FloatBuffer

    init(rows n: Int, hidden c: Int, queryWidth q: Int, kvWidth kv: Int, heads: Int, intermediate f: Int) {
        attentionInput = .workspace(n * c)
        attentionRstd = .workspace(n)
        query = .workspace(n * q)
        key = .workspace(n * kv)
        value = .workspace(n * kv)
        logSumExp = .workspace(n * heads)
        attention = .workspace(n * q)
        middle = .workspace(n * c)
        mlpInput = .workspace(n * c)
        mlpRstd = .workspace(n)
        gate = .workspace(n * f)
        up = .workspace(n * f)
    }
}

/// Gradient buffers for one layer's backward, shared by all layers (backward
/// runs one layer at a time).
final class LayerGradients {
    let norm: FloatBuffer       // [N, C]   ∂loss/∂(norm output), summed over the projections reading it
    let query: FloatBuffer      // [N, H·hd]
    let key: FloatBuffer        // [N, KV·hd]
    let value: FloatBuffer      // [N, KV·hd]
    let attention: FloatBuffer  // [N, H·hd]
    let gate: FloatBuffer       // [N, F]   ∂loss/∂activation first, then ∂loss/∂gate in place
    let up: FloatBuffer         // [N, F]   the recomputed activation first, then ∂loss/∂up

    init(rows n: Int, hidden c: Int, queryWidth q: Int, kvWidth kv: Int, intermediate f: Int) {
        norm = .workspace(n * c)
        query = .workspace(n * q)
        key = .workspace(n * kv)
        value = .workspace(n * kv)
        attention = .workspace(n * q)
        gate = .workspace(n * f)
        up = .workspace(n * f)
    }
}

/// One Llama decoder layer:
///
///     m = x + o_proj(attention(rope(q_proj(h1)), rope(k_proj(h1)), v_proj(h1))),   h1 = input_layernorm(x)
///     y = m + down_proj(silu(gate_proj(h2)) · up_proj(h2)),                         h2 = post_attention_layernorm(m)
public final class DecoderLayer {
    public let inputNorm: RMSNorm
    public let queryProjection: Projection
    public let keyProjection: Projection
    public let valueProjection: Projection
    public let outputProjection: Projection
    public let postAttentionNorm: RMSNorm
    public let gateProjection: Projection
    public let upProjection: Projection
    public let downProjection: Projection
    public let attention: GroupedQueryAttention
    public let rope: RotaryEmbedding

    init(inputNorm: RMSNorm, query: Projection, key: Projection, value: Projection, output: Projection,
         postAttentionNorm: RMSNorm, gate: Projection, up: Projection, down: Projection,
         attention: GroupedQueryAttention, rope: RotaryEmbedding) {
        self.inputNorm = inputNorm
        queryProjection = query
        keyProjection = key
        valueProjection = value
        outputProjection = output
        self.postAttentionNorm = postAttentionNorm
        gateProjection = gate
        upProjection = up
        downProjection = down
        self.attention = attention
        self.rope = rope
    }

    /// The layer's projections in module order.
    public var projections: [Projection] {
        [queryProjection, keyProjection, valueProjection, outputProjection, gateProjection, upProjection, downProjection]
    }

    /// y [N, C] from x [N, C], filling `cache`.
    func forward(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, cache: DecoderLayerCache, context: BatchContext) {
        let n = context.rows, c = inputNorm.dimension
        // Attention block.
        inputNorm.forward(x, rows: n, into: cache.attentionInput.pointer, rstd: cache.attentionRstd.pointer)
        Projection.forward([queryProjection, keyProjection, valueProjection], cache.attentionInput.pointer, rows: n,
                           into: [cache.query.pointer, cache.key.pointer, cache.value.pointer])
        rope.forward(cache.query.pointer, rows: n, heads: attention.heads, cos: context.cos, sin: context.sin)
        rope.forward(cache.key.pointer, rows: n, heads: attention.kvHeads, cos: context.cos, sin: context.sin)
        attention.forward(q: cache.query.pointer, k: cache.key.pointer, v: cache.value.pointer,
                          mask: context.mask, sequenceIDs: context.sequences, batch: context.batch, length: context.length,
                          into: cache.attention.pointer, lse: cache.logSumExp.pointer,
                          scratch: context.attentionScratch)
        outputProjection.forward(cache.attention.pointer, rows: n, into: cache.middle.pointer)
        cblas_saxpy(Int32(n * c), 1, x, 1, cache.middle.pointer, 1)
        // MLP block.
        postAttentionNorm.forward(cache.middle.pointer, rows: n, into: cache.mlpInput.pointer, rstd: cache.mlpRstd.pointer)
        Projection.forward([gateProjection, upProjection], cache.mlpInput.pointer, rows: n,
                           into: [cache.gate.pointer, cache.up.pointer])
        SwiGLU.forward(gate: cache.gate.pointer, up: cache.up.pointer, count: n * gateProjection.outFeatures,
                       into: context.mlpScratch)
        downProjection.forward(context.mlpScratch, rows: n, into: y)
        cblas_saxpy(Int32(n * c), 1, cache.middle.pointer, 1, y, 1)
    }

    /// Whether any projection of the layer has an adapter.
    var isTrainable: Bool { projections.contains { $0.adapter != nil } }

    /// Backward through the layer, in place on the residual gradient: on
    /// entry `residual` [N, C] holds ∂loss/∂y, on return ∂loss/∂x. Adapters
    /// add their parameter gradients on the way. Without `inputGradient` (no
    /// layer below trains) it stops as soon as the layer's adapters have their
    /// gradients, leaving `residual` partly updated.
    func backward(_ residual: UnsafeMutablePointer<Float>, input x: UnsafePointer<Float>, cache: DecoderLayerCache,
                  gradients g: LayerGradients, context: BatchContext, inputGradient: Bool = true) {
        let n = context.rows, f = gateProjection.outFeatures
        // How far down the gradient has to go: below q/k/v, o_proj, gate/up and down_proj.
        let belowQKV = inputGradient
        let belowOutput = belowQKV || [queryProjection, keyProjection, valueProjection].contains { $0.adapter != nil }
        let belowMLP = belowOutput || outputProjection.adapter != nil
        let belowDown = belowMLP || gateProjection.adapter != nil || upProjection.adapter != nil
        // MLP block: ∂loss/∂m = ∂loss/∂y + the path through down, SwiGLU, gate/up and the norm.
        // down_proj's input, silu(gate)·up, only matters to its adapter.
        if downProjection.adapter != nil {
            SwiGLU.forward(gate: cache.gate.pointer, up: cache.up.pointer, count: n * f, into: g.up.pointer)
        }
        downProjection.backward(residual, input: g.up.pointer, rows: n, into: belowDown ? g.gate.pointer : nil, accumulate: false)
        guard belowDown else { return }
        SwiGLU.backward(g.gate.pointer, gate: cache.gate.pointer, up: cache.up.pointer, count: n * f,
                        gateGradient: g.gate.pointer, upGradient: g.up.pointer)
        Projection.backward([gateProjection, upProjection], [g.gate.pointer, g.up.pointer], input: cache.mlpInput.pointer,
                            rows: n, into: belowMLP ? g.norm.pointer : nil, accumulate: false)
        guard belowMLP else { return }
        postAttentionNorm.backward(g.norm.pointer, input: cache.middle.pointer, rstd: cache.mlpRstd.pointer,
                                   rows: n, into: residual, accumulate: true)
        // Attention block: ∂loss/∂x = ∂loss/∂m + the path through o_proj, attention, RoPE, q/k/v and the norm.
        outputProjection.backward(residual, input: cache.attention.pointer, rows: n,
                                  into: belowOutput ? g.attention.pointer : nil, accumulate: false)
        guard belowOutput else { return }
        attention.backward(g.attention.pointer, q: cache.query.pointer, k: cache.key.pointer, v: cache.value.pointer,
                           lse: cache.logSumExp.pointer, mask: context.mask, sequenceIDs: context.sequences,
                           batch: context.batch, length: context.length,
                           dq: g.query.pointer, dk: g.key.pointer, dv: g.value.pointer, scratch: context.attentionScratch)
        rope.backward(g.query.pointer, rows: n, heads: attention.heads, cos: context.cos, sin: context.sin)
        rope.backward(g.key.pointer, rows: n, heads: attention.kvHeads, cos: context.cos, sin: context.sin)
        Projection.backward([queryProjection, keyProjection, valueProjection], [g.query.pointer, g.key.pointer, g.value.pointer],
                            input: cache.attentionInput.pointer, rows: n, into: belowQKV ? g.norm.pointer : nil, accumulate: false)
        guard belowQKV else { return }
        inputNorm.backward(g.norm.pointer, input: x, rstd: cache.attentionRstd.pointer, rows: n, into: residual, accumulate: true)
    }
}
