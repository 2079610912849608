/// Elementwise fp32 math eight lanes at a time, for the activation, softmax
/// and cross-entropy passes of training (libm's scalar expf made them a
/// tenth of a training step).
///
/// Written with SIMD8 operations that lower to SSE2, the baseline Swift
/// compiles for, so no CPU dispatch is needed; inlinable, because a call per
/// eight lanes across modules would cost more than the math. Every lane is computed
/// independently by the same instructions, so a value does not depend on its
/// position in a buffer or on how work was split across threads.
public enum VectorMath {
    public typealias Vector = SIMD8<Float>

    /// e^x to within 1 ulp of libm's expf over the float range (Cephes'
    /// expf: x = n·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r,
    /// times 2^n). Exactly 0 below −87.34 (so −∞, a masked score, gives 0),
    /// and finite up to 88.38 (+∞ above would need a select; no caller passes one).
    @inlinable @inline(__always)
    public static func exp(_ x: Vector) -> Vector {
        let low: Float = -87.33654, high: Float = 88.37626
        let clamped = x.replacing(with: low, where: x .< low).replacing(with: high, where: x .> high)
        // Adding 1.5·2²³ rounds to the nearest integer in the low mantissa bits (SSE2 has no round instruction).
        let magic = Vector(repeating: 12_582_912)
        let shifted = clamped * 1.44269504088896341 + magic
        let n = shifted - magic
        // ln2 in two parts, so n·ln2 is exact enough for the reduction.
        let r = clamped - n * 0.693359375 + n * 2.12194440e-4
        var p = Vector(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let er = p * (r * r) + r + 1
        let exponent = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
        let twoToN = unsafeBitCast((exponent &+ 127) &<< 23, to: Vector.self)
        return (er * twoToN).replacing(with: 0, where: x .< low)
    }

    /// `lanes` (1...8) floats from `p`, any alignment; missing lanes are `fill`.
    @inlinable @inline(__always)
    public static func load(_ p: UnsafePointer<Float>, lanes: Int = 8, fill: Float = 0) -> Vector {
        if lanes == 8 { return UnsafeRawPointer(p).loadUnaligned(as: Vector.self) }
        var v = Vector(repeating: fill)
        for i in 0..<lanes { v[i] = p[i] }
        return v
    }

    /// Stores the first `lanes` (1...8) lanes of `v` at `p`, any alignment.
    @inlinable @inline(__always)
    public static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>, lanes: Int = 8) {
        if lanes == 8 { return UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vector.self) }
        for i in 0..<lanes { p[i] = v[i] }
    }

    /// Calls `body(offset, lanes)` for each run of eight elements of
    /// `range`, then once for the remainder (lanes < 8) if there is one.
    ///
    /// Pass a local `@inline(__always)` function, not a closure literal: the
    /// function is inlined at both calls, so the loop's copy sees lanes = 8
    /// and stays vector code, whereas a closure is compiled once for both and
    /// came out slower than scalar code.
    @inlinable @inline(__always)
    public static func forEachVector(in range: Range<Int>, _ body: (_ offset: Int, _ lanes: Int) -> Void) {
        var i = range.lowerBound
        while i + 8 <= range.upperBound {
            body(i, 8)
            i += 8
        }
        if i < range.upperBound { body(i, range.upperBound - i) }
    }

    /// The largest of x[0..<count] (−∞ when count is 0; NaNs are skipped).
    @inlinable
    public static func maximum(_ x: UnsafePointer<Float>, count: Int) -> Float {
        var maxima = Vector(repeating: -.infinity)
        @inline(__always) func body(_ i: Int, _ lanes: Int) {
            let v = load(x + i, lanes: lanes, fill: -.infinity)
            maxima.replace(with: v, where: v .> maxima)
        }
        forEachVector(in: 0..<count, body)
        return maxima.max()
    }

    /// x[i] *= factor for i in 0..<count.
    @inlinable
    public static func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        @inline(__always) func body(_ i: Int, _ lanes: Int) { store(load(x + i, lanes: lanes) * factor, x + i, lanes: lanes) }
        forEachVector(in: 0..<count, body)
    }

    /// y[i] = e^x[i] for i in 0..<count; y may be x.
    @inlinable
    public static func exp(_ x: UnsafePointer<Float>, count: Int, into y: UnsafeMutablePointer<Float>) {
        @inline(__always) func body(_ i: Int, _ lanes: Int) { store(exp(load(x + i, lanes: lanes)), y + i, lanes: lanes) }
        forEachVector(in: 0..<count, body)
    }
}
