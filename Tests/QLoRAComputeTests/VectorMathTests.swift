import COpenBLAS
import Foundation
import QLoRACompute
import Testing
import _TestSupport

// VectorMath (eight-lane reductions) against plain loops, and
// ComputePool.sgemm (OpenBLAS split across threads) against one OpenBLAS call.

@Suite struct VectorMathTests {
    @Test func maximumAndScaleMatchPlainLoops() {
        var random = SeededGenerator(seed: 9)
        for count in [1, 7, 8, 9, 61] {
            var x = (0..<count).map { _ in Float.random(in: -5...5, using: &random) }
            #expect(VectorMath.maximum(x, count: count) == x.max()!)
            let expected = x.map { $0 * 0.37 }
            VectorMath.scale(&x, count: count, by: 0.37)
            #expect(x == expected)
        }
        #expect(VectorMath.maximum([Float](), count: 0) == -.infinity)
    }
}

@Suite struct PoolGEMMTests {
    /// Every operand layout, sizes that split unevenly (and one too small to split), with
    /// leading dimensions wider than the rows: the pool's result equals one OpenBLAS call's.
    @Test(arguments: [(1000, 37, 53), (37, 1000, 53), (64, 300, 16), (5, 9, 3)])
    func splitProductEqualsOneCall(shape: (m: Int, n: Int, k: Int)) {
        let (m, n, k) = shape
        var random = SeededGenerator(seed: UInt64(m * n + k))
        let pool = ComputePool(threadCount: 3)
        for opA in [MatrixOperand.plain, .transposed] {
            for opB in [MatrixOperand.plain, .transposed] {
                let (aRows, aCols) = opA == .plain ? (m, k) : (k, m)
                let (bRows, bCols) = opB == .plain ? (k, n) : (n, k)
                let lda = aCols + 3, ldb = bCols + 2, ldc = n + 1
                let a = random.gaussian(count: aRows * lda), b = random.gaussian(count: bRows * ldb)
                let c0 = random.gaussian(count: m * ldc)
                var expected = c0, found = c0
                cblas_sgemm(CblasRowMajor, opA == .plain ? CblasNoTrans : CblasTrans, opB == .plain ? CblasNoTrans : CblasTrans,
                            Int32(m), Int32(n), Int32(k), 0.5, a, Int32(lda), b, Int32(ldb), 0.25, &expected, Int32(ldc))
                pool.sgemm(opA, opB, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda, b: b, ldb: ldb, beta: 0.25, c: &found, ldc: ldc)
                var worst: Float = 0
                for i in 0..<(m * ldc) { worst = max(worst, abs(found[i] - expected[i]) / max(1, abs(expected[i]))) }
                #expect(worst < 1e-5, "\(opA) \(opB) \(shape): worst error \(worst)")
            }
        }
    }
}
