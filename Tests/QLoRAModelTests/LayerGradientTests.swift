import Foundation
import QLoRAKit
import Testing
import _TestSupport

// Finite-difference checks of every layer's backward at tiny, awkward sizes.
// Each layer's output y is reduced to the scalar loss Σ probe·y (in Double),
// whose gradient with respect to y is `probe`; backward from `probe` must then
// equal the central differences of that loss.

private func dot(_ a: [Float], _ b: [Float]) -> Double {
    zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) }
}

/// Central differences of f at x, step h (fp32 inputs, Double loss).
private func numericalGradient(_ x: [Float], step h: Float = 1e-2, _ f: ([Float]) -> Double) -> [Float] {
    (0..<x.count).map { i in
        var plus = x, minus = x
        plus[i] += h
        minus[i] -= h
        return Float((f(plus) - f(minus)) / Double(2 * h))
    }
}

private func expectClose(_ analytic: [Float], _ numeric: [Float], _ what: String,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    let scale = max(1, numeric.map(abs).max() ?? 0)
    let error = maxAbsDifference(analytic, numeric)
    #expect(error <= 2e-3 * scale, "\(what): max |analytic − numeric| = \(error)", sourceLocation: sourceLocation)
    #expect(numeric.contains { abs($0) > 1e-3 }, "\(what): the check is vacuous", sourceLocation: sourceLocation)
}

@Suite struct LayerGradientTests {
    var random = SeededGenerator(seed: 42)

    @Test mutating func rmsNorm() {
        let n = 3, c = 7
        let x = random.gaussian(count: n * c), probe = random.gaussian(count: n * c)
        let norm = RMSNorm(weight: random.gaussian(count: c, std: 0.3).map { 1 + $0 }, epsilon: 1e-5)
        func loss(_ x: [Float]) -> Double {
            var y = [Float](repeating: 0, count: n * c), rstd = [Float](repeating: 0, count: n)
            norm.forward(x, rows: n, into: &y, rstd: &rstd)
            return dot(y, probe)
        }
        var y = [Float](repeating: 0, count: n * c), rstd = [Float](repeating: 0, count: n)
        norm.forward(x, rows: n, into: &y, rstd: &rstd)
        var dx = [Float](repeating: 1, count: n * c)
        norm.backward(probe, input: x, rstd: rstd, rows: n, into: &dx, accumulate: true)
        expectClose(dx.map { $0 - 1 }, numericalGradient(x, loss), "RMSNorm dx (accumulated)")
    }

    @Test mutating func rope() {
        let n = 3, heads = 2, hd = 6
        let positions: [Int32] = [0, 3, 11]
        let rope = RotaryEmbedding(headDimension: hd, theta: 10000)
        var cos = [Float](repeating: 0, count: n * hd / 2), sin = cos
        rope.tables(positions: positions, count: n, cos: &cos, sin: &sin)
        let x = random.gaussian(count: n * heads * hd), probe = random.gaussian(count: n * heads * hd)
        func loss(_ x: [Float]) -> Double {
            var y = x
            rope.forward(&y, rows: n, heads: heads, cos: cos, sin: sin)
            return dot(y, probe)
        }
        var dx = probe
        rope.backward(&dx, rows: n, heads: heads, cos: cos, sin: sin)
        expectClose(dx, numericalGradient(x, loss), "RoPE dx")
    }

    /// (heads, kv heads, head size, lengths of the B sequences, padding side, window)
    struct AttentionCase: Sendable, CustomTestStringConvertible {
        var heads = 4, kvHeads = 2, headDimension = 3
        var lengths: [Int]
        var leftPadding = false
        var window: Int?
        var testDescription: String {
            "\(heads)/\(kvHeads) heads, lengths \(lengths)\(leftPadding ? " left-padded" : ""), window \(window.map(String.init) ?? "none")"
        }
    }

    @Test(arguments: [
        AttentionCase(lengths: [5, 5]), AttentionCase(lengths: [5, 3]), AttentionCase(lengths: [5, 3], leftPadding: true),
        AttentionCase(lengths: [5, 4], leftPadding: true, window: 2),
        // Longer than one query block, so blocks see different key ranges.
        AttentionCase(heads: 2, kvHeads: 1, headDimension: 2, lengths: [67, 60], window: 40),
    ])
    func attention(_ c: AttentionCase) {
        var random = SeededGenerator(seed: 5)
        let b = c.lengths.count, t = c.lengths.max()!
        let attention = GroupedQueryAttention(heads: c.heads, kvHeads: c.kvHeads, headDimension: c.headDimension, window: c.window)
        let qw = c.heads * c.headDimension, kw = c.kvHeads * c.headDimension, n = b * t
        let mask: [UInt8]? = c.lengths.allSatisfy({ $0 == t }) ? nil : c.lengths.flatMap { length in
            let real = [UInt8](repeating: 1, count: length), pad = [UInt8](repeating: 0, count: t - length)
            return c.leftPadding ? pad + real : real + pad
        }
        let q = random.gaussian(count: n * qw), k = random.gaussian(count: n * kw), v = random.gaussian(count: n * kw)
        let probe = random.gaussian(count: n * qw)
        var scratch = [Float](repeating: 0, count: attention.scratchCount(batch: b, length: t))
        var lse = [Float](repeating: 0, count: b * c.heads * t)
        func run(_ q: [Float], _ k: [Float], _ v: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: n * qw)
            attention.forward(q: q, k: k, v: v, mask: mask, batch: b, length: t, into: &out, lse: &lse, scratch: &scratch)
            return out
        }
        var dq = [Float](repeating: 0, count: n * qw), dk = [Float](repeating: 0, count: n * kw), dv = dk
        _ = run(q, k, v)
        attention.backward(probe, q: q, k: k, v: v, lse: lse, mask: mask, batch: b, length: t,
                           dq: &dq, dk: &dk, dv: &dv, scratch: &scratch)
        expectClose(dq, numericalGradient(q) { dot(run($0, k, v), probe) }, "attention dq")
        expectClose(dk, numericalGradient(k) { dot(run(q, $0, v), probe) }, "attention dk")
        expectClose(dv, numericalGradient(v) { dot(run(q, k, $0), probe) }, "attention dv")
    }

    @Test(arguments: [AttentionCase(lengths: [5, 3], leftPadding: true, window: 2),
                      AttentionCase(heads: 2, kvHeads: 1, headDimension: 2, lengths: [150, 131], window: 70),
                      AttentionCase(heads: 2, kvHeads: 1, headDimension: 2, lengths: [130, 100], leftPadding: true)])
    func attentionMatchesTheDefinition(_ c: AttentionCase) {
        // Softmax over exactly the visible keys, in Double, one query at a time.
        var random = SeededGenerator(seed: 8)
        let b = c.lengths.count, t = c.lengths.max()!, hd = c.headDimension
        let attention = GroupedQueryAttention(heads: c.heads, kvHeads: c.kvHeads, headDimension: hd, window: c.window)
        let qw = c.heads * hd, kw = c.kvHeads * hd
        let real: [[Bool]] = c.lengths.map { length in
            (0..<t).map { c.leftPadding ? $0 >= t - length : $0 < length }
        }
        let mask = real.flatMap { $0.map { UInt8($0 ? 1 : 0) } }
        let q = random.gaussian(count: b * t * qw), k = random.gaussian(count: b * t * kw), v = random.gaussian(count: b * t * kw)
        var scratch = [Float](repeating: 0, count: attention.scratchCount(batch: b, length: t))
        var lse = [Float](repeating: 0, count: b * c.heads * t)
        var out = [Float](repeating: 0, count: b * t * qw)
        attention.forward(q: q, k: k, v: v, mask: mask, batch: b, length: t, into: &out, lse: &lse, scratch: &scratch)
        var expected = [Float](repeating: 0, count: b * t * qw)
        for s in 0..<b {
            for h in 0..<c.heads {
                let g = h / (c.heads / c.kvHeads)
                for i in 0..<t {
                    var visible: [Int] = []
                    for j in 0...i where real[s][j] && (c.window == nil || j > i - c.window!) { visible.append(j) }
                    var weights: [Double] = []
                    for j in visible {
                        var score: Double = 0
                        for d in 0..<hd { score += Double(q[(s * t + i) * qw + h * hd + d]) * Double(k[(s * t + j) * kw + g * hd + d]) }
                        weights.append(score / Double(hd).squareRoot())
                    }
                    let m = weights.max() ?? 0
                    weights = weights.map { Foundation.exp($0 - m) }
                    let total = weights.reduce(0, +)
                    for d in 0..<hd {
                        var value: Double = 0
                        for (j, w) in zip(visible, weights) { value += w * Double(v[(s * t + j) * kw + g * hd + d]) }
                        expected[(s * t + i) * qw + h * hd + d] = visible.isEmpty ? 0 : Float(value / total)
                    }
                }
            }
        }
        #expect(maxAbsDifference(out, expected) <= 1e-5)
    }

    @Test func keysOutsideTheWindowAreInvisible() {
        var random = SeededGenerator(seed: 11)
        let t = 6, attention = GroupedQueryAttention(heads: 2, kvHeads: 2, headDimension: 4, window: 3)
        let q = random.gaussian(count: t * 8), k = random.gaussian(count: t * 8)
        var v = random.gaussian(count: t * 8)
        var scratch = [Float](repeating: 0, count: attention.scratchCount(batch: 1, length: t))
        var lse = [Float](repeating: 0, count: 2 * t)
        var before = [Float](repeating: 0, count: t * 8), after = before
        attention.forward(q: q, k: k, v: v, mask: nil, batch: 1, length: t, into: &before, lse: &lse, scratch: &scratch)
        for d in 0..<8 { v[d] += 100 } // key 0 is visible to queries 0, 1, 2 only
        attention.forward(q: q, k: k, v: v, mask: nil, batch: 1, length: t, into: &after, lse: &lse, scratch: &scratch)
        #expect(before[(3 * 8)...] == after[(3 * 8)...])
        #expect(before[..<(3 * 8)] != after[..<(3 * 8)])
    }

    @Test func paddingIsInvisibleToRealTokens() {
        // Changing a padded key/value must not change any real query's output.
        var random = SeededGenerator(seed: 9)
        let t = 4, attention = GroupedQueryAttention(heads: 2, kvHeads: 1, headDimension: 4)
        let mask: [UInt8] = [0, 1, 1, 1]
        let q = random.gaussian(count: t * 8), k = random.gaussian(count: t * 4)
        var v = random.gaussian(count: t * 4)
        var scratch = [Float](repeating: 0, count: attention.scratchCount(batch: 1, length: t))
        var lse = [Float](repeating: 0, count: 2 * t)
        var before = [Float](repeating: 0, count: t * 8), after = before
        attention.forward(q: q, k: k, v: v, mask: mask, batch: 1, length: t, into: &before, lse: &lse, scratch: &scratch)
        for d in 0..<4 { v[d] += 100 }
        attention.forward(q: q, k: k, v: v, mask: mask, batch: 1, length: t, into: &after, lse: &lse, scratch: &scratch)
        #expect(before == after)
        #expect(before[0..<8].allSatisfy { $0 == 0 }) // the padded query sees no key
    }

    @Test mutating func swiGLU() {
        let count = 11
        let g = random.gaussian(count: count, std: 2), u = random.gaussian(count: count), probe = random.gaussian(count: count)
        func run(_ g: [Float], _ u: [Float]) -> Double {
            var a = [Float](repeating: 0, count: count)
            SwiGLU.forward(gate: g, up: u, count: count, into: &a)
            return dot(a, probe)
        }
        var dg = [Float](repeating: 0, count: count), du = dg
        SwiGLU.backward(probe, gate: g, up: u, count: count, gateGradient: &dg, upGradient: &du)
        expectClose(dg, numericalGradient(g) { run($0, u) }, "SwiGLU dg")
        expectClose(du, numericalGradient(u) { run(g, $0) }, "SwiGLU du")
    }

    @Test mutating func crossEntropy() {
        let n = 4, classes = 6
        let targets: [Int32] = [2, -100, 5, 0]
        let logits = random.gaussian(count: n * classes, std: 2)
        var lse = [Float](repeating: 0, count: n)
        func mean(_ logits: [Float]) -> Double {
            let (sum, count) = CrossEntropy.forward(logits: logits, targets: targets, rows: n, classes: classes, lse: &lse)
            return sum / Double(count)
        }
        let (_, count) = CrossEntropy.forward(logits: logits, targets: targets, rows: n, classes: classes, lse: &lse)
        #expect(count == 3)
        var gradient = logits
        CrossEntropy.backward(logits: &gradient, targets: targets, lse: lse, rows: n, classes: classes, scale: 1 / Float(count))
        expectClose(gradient, numericalGradient(logits, mean), "cross-entropy dlogits")
        #expect(gradient[classes..<(2 * classes)].allSatisfy { $0 == 0 }) // the ignored row
    }

    /// With dropout the mask comes from the generator, the same in every
    /// forward, so the differences see the function backward differentiates.
    @Test(arguments: [0, 0.4] as [Float])
    mutating func loraAdapter(dropout: Float) {
        let n = 3, inFeatures = 5, outFeatures = 4, rank = 2
        let base = DenseLinear(weight: random.gaussian(count: outFeatures * inFeatures), outFeatures: outFeatures, inFeatures: inFeatures)
        let parameters = TrainableParameters(tensors: [("a", [rank, inFeatures]), ("b", [outFeatures, rank])])
        let adapter = LoRAAdapter(parameters: parameters, a: parameters.entries[0], b: parameters.entries[1], scaling: 1.5,
                                  dropout: dropout)
        adapter.dropoutGenerator = Xoshiro256(seed: 3)
        let a = random.gaussian(count: rank * inFeatures), b = random.gaussian(count: outFeatures * rank)
        let x = random.gaussian(count: n * inFeatures), probe = random.gaussian(count: n * outFeatures)
        func loss(a: [Float], b: [Float], x: [Float]) -> Double {
            _ = parameters.values(of: parameters.entries[0]).update(fromContentsOf: a)
            _ = parameters.values(of: parameters.entries[1]).update(fromContentsOf: b)
            var y = [Float](repeating: 0, count: n * outFeatures)
            adapter.forward(base: base, x, rows: n, into: &y)
            return dot(y, probe)
        }
        _ = loss(a: a, b: b, x: x)
        var dx = [Float](repeating: 0, count: n * inFeatures)
        adapter.backward(base: base, probe, input: x, rows: n, into: &dx, accumulate: false)
        let da = Array(parameters.gradients(of: parameters.entries[0])), db = Array(parameters.gradients(of: parameters.entries[1]))
        expectClose(dx, numericalGradient(x) { loss(a: a, b: b, x: $0) }, "LoRA dx")
        expectClose(da, numericalGradient(a) { loss(a: $0, b: b, x: x) }, "LoRA dA")
        expectClose(db, numericalGradient(b) { loss(a: a, b: $0, x: x) }, "LoRA dB")
    }
}
