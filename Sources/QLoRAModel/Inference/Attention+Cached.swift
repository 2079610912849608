import COpenBLAS

extension GroupedQueryAttention {
    /// Multiply-adds of QKᵀ (as many again for PV) below which cached
    /// attention runs on the calling thread.
    static let parallelWork = 1 << 20

    /// Floats of scratch `forward(q:rows:start:keys:values:into:scratch:)`
    /// needs for up to `rows` new tokens in a cache of `capacity` tokens.
    func cachedScratchCount(rows: Int, capacity: Int) -> Int {
        max(Parallel.chunkCount(for: heads) * min(rows, Self.queryBlock),
            Parallel.chunkCount(for: kvHeads) * heads / kvHeads) * capacity
    }

    /// Attention of n new tokens at positions start..<start + n over every
    /// cached token each can see (causality and the window), their own rotated
    /// keys and values already stored at rows start..<start + n of the cache.
    /// The same scores, softmax and products as the full forward, query block
    /// by query block; query heads run concurrently.
    ///
    /// - Parameters:
    ///   - q: [n, H·hd] rotated queries
    ///   - keys: [capacity, KV·hd] rotated keys, rows 0..<start + n filled
    ///   - values: [capacity, KV·hd], rows 0..<start + n filled
    ///   - out: [n, H·hd], heads concatenated
    ///   - scratch: `cachedScratchCount(rows: n, capacity: start + n)` floats or more
    func forward(q: UnsafePointer<Float>, rows n: Int, start: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>,
                 into out: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        let hd = headDimension, qw = queryWidth, kw = kvWidth, group = heads / kvHeads
        // One new token: by kv group, unless that leaves cores idle on a context worth splitting
        // (fewer kv heads than cores), where the per-head path below keeps them busy.
        if n == 1, kvHeads >= Parallel.chunkCount(for: heads) || (start + 1) * hd * heads < Self.parallelWork {
            decodeForward(q: q, start: start, keys: k, values: v, into: out, scratch: scratch)
            return
        }
        let perChunk = min(n, Self.queryBlock) * (start + n)
        // Decoding one token over a short context is a few hundred thousand
        // multiply-adds: less than starting the other threads costs.
        let parallel = n * (start + n) * hd * heads >= Self.parallelWork
        Parallel.forEachChunk(heads, grain: parallel ? 1 : heads) { chunk, items in
            let p = scratch + chunk * perChunk // [block, keys]
            for h in items {
                let qh = q + h * hd, kg = k + (h / group) * hd, vg = v + (h / group) * hd
                for r0 in stride(from: 0, to: n, by: Self.queryBlock) {
                    let r1 = min(n, r0 + Self.queryBlock)
                    // Keys visible to some query of the block, in absolute positions.
                    let keys = (window.map { max(0, start + r0 - $0 + 1) } ?? 0)..<(start + r1)
                    let rows = Int32(r1 - r0), cols = Int32(keys.count)
                    // S [rows, keys] = scale · q_h[r0..<r1] · k_g[keys]ᵀ
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, Int32(hd),
                                scale, qh + r0 * qw, Int32(qw), kg + keys.lowerBound * kw, Int32(kw), 0, p, cols)
                    for r in r0..<r1 {
                        _ = softmaxRow(p + (r - r0) * keys.count, query: start + r, keys: keys, mask: nil)
                    }
                    // out_h[r0..<r1] [rows, hd] = P · v_g[keys]
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, Int32(hd), cols,
                                1, p, cols, vg + keys.lowerBound * kw, Int32(kw), 0, out + r0 * qw + h * hd, Int32(qw))
                }
            }
        }
    }

    /// One new token: the query heads of a kv group share its keys and values,
    /// so each group is one product of `group` query rows (heads g·group..<(g+1)·group
    /// are adjacent in q and out), reading the group's cached keys and values
    /// once instead of once per head.
    private func decodeForward(q: UnsafePointer<Float>, start: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>,
                               into out: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
        let hd = headDimension, kw = kvWidth, group = heads / kvHeads
        let keys = (window.map { max(0, start - $0 + 1) } ?? 0)..<(start + 1)
        let rows = Int32(group), cols = Int32(keys.count)
        let parallel = keys.count * hd * heads >= Self.parallelWork
        Parallel.forEachChunk(kvHeads, grain: parallel ? 1 : kvHeads) { chunk, items in
            let p = scratch + chunk * group * keys.count // [group, keys]
            for g in items {
                let qg = q + g * group * hd, kg = k + keys.lowerBound * kw + g * hd, vg = v + keys.lowerBound * kw + g * hd
                // S [group, keys] = scale · q_g · k_g[keys]ᵀ
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, Int32(hd), scale, qg, Int32(hd), kg, Int32(kw),
                            0, p, cols)
                for r in 0..<group { _ = softmaxRow(p + r * keys.count, query: start, keys: keys, mask: nil) }
                // out_g [group, hd] = P · v_g[keys]
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, Int32(hd), cols, 1, p, cols, vg, Int32(kw),
                            0, out + g * group * hd, Int32(hd))
            }
        }
    }
}
