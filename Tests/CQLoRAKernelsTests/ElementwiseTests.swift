import CQLoRAKernels
import Foundation
import Testing
import _TestSupport

/// The elementwise passes (SwiGLU, shifted exponentials): the scalar reference
/// against libm and double-precision formulas, and the dispatching entry points
/// (AVX2 or NEON where the CPU has it) against the reference on lengths that are
/// not multiples of the vector width or of the 64-element runs of the sums.
@Suite struct ElementwiseTests {
    static let lengths = [1, 7, 9, 63, 64, 65, 1000, 4097]

    /// |a − b| / max(|b|, tiny) over the arrays.
    func worstRelative(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-30) }.max() ?? 0
    }

    /// ‖a − b‖ / ‖b‖: dg cancels to ~0 near g ≈ −1.28 (silu′ = 0), where one
    /// element's relative error means nothing.
    func frobeniusRelative(_ a: [Float], _ b: [Float]) -> Float {
        let diff = zip(a, b).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
        return Float((diff / b.reduce(0.0) { $0 + Double($1) * Double($1) }).squareRoot())
    }

    @Test func referenceExpIsWithinTwoUlpOfLibm() {
        var random = SeededGenerator(seed: 7)
        var x = (0..<20_000).map { _ in Float.random(in: -90...89, using: &random) }
        x += [-.infinity, -87.5, 0, 100, .nan]
        var y = [Float](repeating: 0, count: x.count)
        _ = qk_exp_shifted_ref(&y, x, Int64(x.count), 0, 1)
        let tail = y.suffix(5)
        // −∞ and anything below the cut give exactly 0 (a masked score), e^0 = 1, large x stays finite, NaN stays NaN.
        #expect(Array(tail.prefix(3)) == [0, 0, 1])
        #expect(tail[tail.startIndex + 3].isFinite && tail[tail.startIndex + 3] > 1e38 && tail.last!.isNaN)
        var worst: Float = 0
        for i in 0..<20_000 where x[i] > -87 && x[i] < 88 {
            let reference = Foundation.exp(Double(x[i]))
            worst = max(worst, Float(abs(Double(y[i]) - reference) / reference))
        }
        #expect(worst <= 2 * Float.ulpOfOne, "worst relative error \(worst)")
    }

    @Test func referenceSwiGLUMatchesItsFormulas() {
        var random = SeededGenerator(seed: 8)
        let n = 1001
        let g = random.gaussian(count: n, std: 4), u = random.gaussian(count: n), da = random.gaussian(count: n)
        var a = [Float](repeating: 0, count: n), dg = a, du = a
        qk_swiglu_forward_ref(&a, g, u, Int64(n))
        qk_swiglu_backward_ref(&dg, &du, da, g, u, Int64(n))
        for i in 0..<n {
            let x = Double(g[i]), s = 1 / (1 + Foundation.exp(-x))
            #expect(abs(Double(a[i]) - x * s * Double(u[i])) <= 1e-6 * max(1, abs(x * s * Double(u[i]))))
            #expect(abs(Double(du[i]) - Double(da[i]) * x * s) <= 1e-6 * max(1, abs(Double(da[i]) * x)))
            let dgExact = Double(da[i]) * Double(u[i]) * s * (1 + x * (1 - s))
            #expect(abs(Double(dg[i]) - dgExact) <= 1e-6 * max(1, abs(dgExact)))
        }
    }

    /// LoRA dropout's passes give the reference's bits on every path (no FMA contraction), on
    /// lengths that end inside a mask word or a vector; the reference keeps x·keep where the
    /// element's bit is set and 0 elsewhere, and adds g·keep into dx the same way.
    @Test(arguments: lengths)
    func fastDropoutMatchesReferenceBitForBit(n: Int) {
        var random = SeededGenerator(seed: 9)
        let x = random.gaussian(count: n), g = random.gaussian(count: n), start = random.gaussian(count: n)
        let bits = (0..<((n + 63) / 64)).map { _ in random.next() }
        let keep: Float = 1 / (1 - 0.1)
        var fast = [Float](repeating: 7, count: n), reference = fast
        qk_dropout_apply(&fast, x, bits, Int64(n), keep)
        qk_dropout_apply_ref(&reference, x, bits, Int64(n), keep)
        #expect(fast.map(\.bitPattern) == reference.map(\.bitPattern))
        var dxFast = start, dxReference = start
        qk_dropout_accumulate(&dxFast, g, bits, Int64(n), keep)
        qk_dropout_accumulate_ref(&dxReference, g, bits, Int64(n), keep)
        #expect(dxFast.map(\.bitPattern) == dxReference.map(\.bitPattern))
        for i in 0..<n {
            let kept = (bits[i / 64] >> UInt64(i % 64)) & 1 == 1
            #expect(reference[i] == (kept ? x[i] * keep : 0))
            #expect(dxReference[i] == start[i] + (kept ? g[i] * keep : 0))
        }
    }

    @Test(arguments: lengths)
    func fastSwiGLUMatchesReference(n: Int) {
        var random = SeededGenerator(seed: UInt64(n))
        let g = random.gaussian(count: n, std: 6), u = random.gaussian(count: n), da = random.gaussian(count: n)
        var a = [Float](repeating: .nan, count: n), aRef = a
        qk_swiglu_forward(&a, g, u, Int64(n))
        qk_swiglu_forward_ref(&aRef, g, u, Int64(n))
        #expect(worstRelative(a, aRef) < 1e-6, "forward n=\(n)")
        var du = [Float](repeating: .nan, count: n), duRef = du, dgRef = du
        // dg written over da, as the decoder layer calls it.
        var dg = da
        dg.withUnsafeMutableBufferPointer { qk_swiglu_backward($0.baseAddress, &du, $0.baseAddress, g, u, Int64(n)) }
        qk_swiglu_backward_ref(&dgRef, &duRef, da, g, u, Int64(n))
        #expect(worstRelative(du, duRef) < 1e-6 && frobeniusRelative(dg, dgRef) < 1e-6, "backward n=\(n)")
    }

    @Test(arguments: lengths)
    func fastShiftedExpMatchesReference(n: Int) {
        var random = SeededGenerator(seed: 100 + UInt64(n))
        var x = (0..<n).map { _ in Float.random(in: -30...10, using: &random) }
        if n > 5 { x[5] = -.infinity }
        let shift: Float = 3.5, scale: Float = 0.125
        var y = [Float](repeating: .nan, count: n), yRef = y
        let sum = qk_exp_shifted(&y, x, Int64(n), shift, scale)
        let sumRef = qk_exp_shifted_ref(&yRef, x, Int64(n), shift, scale)
        #expect(worstRelative(y, yRef) < 1e-6, "values n=\(n)")
        #expect(abs(sum - sumRef) <= 1e-6 * sumRef, "sum n=\(n): \(sum) vs \(sumRef)")
        if n > 5 { #expect(y[5] == 0) }
        // Without an output only the sum is computed, the same one.
        #expect(qk_exp_shifted(nil, x, Int64(n), shift, scale) == sum)
        // In place gives the same values as out of place.
        var inPlace = x
        _ = qk_exp_shifted(&inPlace, inPlace, Int64(n), shift, scale)
        #expect(inPlace == y)
    }

    @Test func fastValuesDoNotDependOnPosition() {
        // An element alone (the partial-vector path) gets the bits it gets inside a long buffer.
        var random = SeededGenerator(seed: 9)
        let x = (0..<37).map { _ in Float.random(in: -20...20, using: &random) }, u = [Float](repeating: 1.5, count: 37)
        var whole = [Float](repeating: 0, count: 37), silu = whole
        _ = qk_exp_shifted(&whole, x, 37, 0.25, 1)
        qk_swiglu_forward(&silu, x, u, 37)
        for i in 0..<37 {
            var one: Float = 0, a: Float = 0
            _ = qk_exp_shifted(&one, [x[i]], 1, 0.25, 1)
            qk_swiglu_forward(&a, [x[i]], [u[i]], 1)
            #expect(one == whole[i] && a == silu[i], "element \(i)")
        }
    }
}
