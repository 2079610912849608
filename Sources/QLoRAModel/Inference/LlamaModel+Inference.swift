/// Which rows' logits an inference step returns.
public enum LogitRows: Sendable {
    /// The last token's [V]: what generation samples from.
    case last
    /// Every token's, [n, V]: what evaluation scores.
    case all
}

extension LlamaModel {
    /// Runs `tokens` as the continuation of the sequence held in `cache`
    /// (positions cache.count, cache.count + 1, …), adding their keys and
    /// values to it, and returns their logits: [V] of the last token, or
    /// [n, V] of all of them. Long inputs run `cache.chunkSize` tokens at a
    /// time; only the rows asked for go through the final norm and lm_head.
    ///
    /// The numbers are those of `forward(_: TokenBatch)` on the whole
    /// sequence (up to summation order), without its training caches: one
    /// chunk of activations plus the KV cache is all inference holds.
    /// - Throws: `GenerationError` for an empty input, an id outside the
    ///   vocabulary, a cache of another model or one too full for the tokens.
    public func forward(_ tokens: [Int32], cache: KVCache, logits rows: LogitRows = .last) throws -> [Float] {
        guard cache.configuration == configuration else { throw GenerationError.cacheMismatch }
        guard !tokens.isEmpty else { throw GenerationError.emptyPrompt }
        let v = vocabularySize, c = hiddenSize
        if let i = tokens.firstIndex(where: { $0 < 0 || Int($0) >= v }) {
            throw GenerationError.tokenOutOfVocabulary(token: tokens[i], index: i, vocabularySize: v)
        }
        guard tokens.count <= cache.capacity - cache.count else {
            throw GenerationError.contextFull(capacity: cache.capacity, held: cache.count, adding: tokens.count)
        }
        let ws = cache.workspace
        var out: [Float] = []
        out.reserveCapacity(rows == .all ? tokens.count * v : v)
        for chunkStart in stride(from: 0, to: tokens.count, by: ws.rows) {
            let n = min(ws.rows, tokens.count - chunkStart), start = cache.count
            for i in 0..<n {
                ws.tokens[i] = tokens[chunkStart + i]
                ws.positions[i] = Int32(start + i)
            }
            rope.tables(positions: ws.positions, count: n, cos: ws.cos.pointer, sin: ws.sin.pointer)
            embedding.forward(ws.tokens, count: n, into: ws.residual.pointer)
            for (l, layer) in layers.enumerated() {
                layer.infer(ws.residual.pointer, rows: n, start: start, keys: cache.keys[l].pointer,
                            values: cache.values[l].pointer, workspace: ws)
            }
            cache.advance(by: n)
            guard rows == .all || chunkStart + n == tokens.count else { continue }
            let first = rows == .all ? 0 : n - 1, m = n - first
            finalNorm.forward(ws.residual.pointer + first * c, rows: m, into: ws.normed.pointer, rstd: ws.rstd.pointer)
            lmHead.forward(ws.normed.pointer, rows: m, into: ws.logits.pointer)
            out.append(contentsOf: UnsafeBufferPointer(start: ws.logits.pointer, count: m * v))
        }
        return out
    }
}
