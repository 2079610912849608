import COpenBLAS

extension DecoderLayer {
    /// The layer on n new tokens at positions start..<start + n, in place on
    /// the residual stream x [n, C]: the arithmetic of `forward`, with the
    /// tokens' rotated keys and values written to rows start..<start + n of
    /// the layer's cache and attention reading every cached row before them.
    /// Nothing is kept for backward.
    func infer(_ x: UnsafeMutablePointer<Float>, rows n: Int, start: Int,
               keys: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>, workspace ws: InferenceWorkspace) {
        let count = Int32(n * inputNorm.dimension)
        let h = ws.normed.pointer, newKeys = keys + start * attention.kvWidth
        // Attention block: x += o_proj(attention(...)).
        inputNorm.forward(x, rows: n, into: h, rstd: ws.rstd.pointer)
        queryProjection.forward(h, rows: n, into: ws.query.pointer)
        keyProjection.forward(h, rows: n, into: newKeys)
        valueProjection.forward(h, rows: n, into: values + start * attention.kvWidth)
        rope.forward(ws.query.pointer, rows: n, heads: attention.heads, cos: ws.cos.pointer, sin: ws.sin.pointer)
        rope.forward(newKeys, rows: n, heads: attention.kvHeads, cos: ws.cos.pointer, sin: ws.sin.pointer)
        attention.forward(q: ws.query.pointer, rows: n, start: start, keys: keys, values: values,
                          into: ws.attention.pointer, scratch: ws.scratch.pointer)
        outputProjection.forward(ws.attention.pointer, rows: n, into: h)
        cblas_saxpy(count, 1, h, 1, x, 1)
        // MLP block: x += down_proj(silu(gate_proj(h2)) · up_proj(h2)).
        postAttentionNorm.forward(x, rows: n, into: h, rstd: ws.rstd.pointer)
        gateProjection.forward(h, rows: n, into: ws.gate.pointer)
        upProjection.forward(h, rows: n, into: ws.up.pointer)
        SwiGLU.forward(gate: ws.gate.pointer, up: ws.up.pointer, count: n * gateProjection.outFeatures, into: ws.gate.pointer)
        downProjection.forward(ws.gate.pointer, rows: n, into: h)
        cblas_saxpy(count, 1, h, 1, x, 1)
    }
}
