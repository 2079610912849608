/// Elementwise fp32 reductions and scaling eight lanes at a time, for the
/// softmax and cross-entropy passes (their exponentials are in the C target,
/// `qk_exp_shifted`, where AVX2 is chosen at run time).
///
/// Written with SIMD8 operations that lower to SSE2, the baseline Swift
/// compiles for, so no CPU dispatch is needed; inlinable, because a call per
/// eight lanes across modules would cost more than the math. Every lane is computed
/// independently by the same instructions, so a value does not depend on its
/// position in a buffer or on how work was split across threads.
public enum VectorMath {
    public typealias Vector = SIMD8<Float>

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
}
