import COpenBLAS

/// How a matrix operand of `ComputePool.sgemm` is read.
public enum MatrixOperand: Sendable {
    /// As stored: row-major [rows, columns].
    case plain
    /// Transposed: stored [columns, rows].
    case transposed
}

extension ComputePool {
    /// C [m, n] = alpha · op(A) [m, k] · op(B) [k, n] + beta · C, row-major,
    /// with OpenBLAS, split across the pool's threads.
    ///
    /// The larger of m and n is cut into one slice per thread (boundaries on
    /// multiples of 16) and each slice is one single-threaded OpenBLAS call;
    /// k is never split, so each element is summed as one OpenBLAS call sums
    /// it and results depend only on the thread count. Products under about
    /// a million multiply-adds run whole on the calling thread.
    ///
    /// OpenBLAS's own threads are kept off (see `init`): after a call they
    /// spin in sched_yield for a while, stealing a core from the pool's
    /// threads that run the packed kernels next (on 2 cores, about a tenth
    /// of a training step).
    ///
    /// - Parameters:
    ///   - a: op(A) is [m, k]; stored [m, lda] plain or [k, lda] transposed.
    ///   - b: op(B) is [k, n]; stored [k, ldb] plain or [n, ldb] transposed.
    ///   - c: [m, ldc].
    public func sgemm(
        _ opA: MatrixOperand, _ opB: MatrixOperand, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        var call = GEMMCall(
            transposeA: opA == .transposed, transposeB: opB == .transposed, m: m, n: n, k: k, alpha: alpha,
            a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc, splitRows: m >= n)
        if threadCount == 1 || m * n * k < Self.gemmSplitThreshold {
            call.run(0..<(call.splitRows ? m : n))
            return
        }
        withUnsafePointer(to: &call) { call in
            run(extent: call.pointee.splitRows ? m : n, grain: 16, scratchFloats: 0, context: call) {
                context, lower, upper, _ in
                context.assumingMemoryBound(to: GEMMCall.self).pointee.run(lower..<upper)
            }
        }
    }

    /// Multiply-adds below which splitting costs more than it saves.
    static let gemmSplitThreshold = 1 << 20
}

/// Arguments of one `sgemm`, passed to the pool's threads by pointer.
private struct GEMMCall {
    let transposeA: Bool
    let transposeB: Bool
    let m: Int
    let n: Int
    let k: Int
    let alpha: Float
    let a: UnsafePointer<Float>
    let lda: Int
    let b: UnsafePointer<Float>
    let ldb: Int
    let beta: Float
    let c: UnsafeMutablePointer<Float>
    let ldc: Int
    /// Slices are rows of C (else columns).
    let splitRows: Bool

    /// The rows (or columns) `slice` of C.
    func run(_ slice: Range<Int>) {
        guard !slice.isEmpty else { return }
        var a = self.a, b = self.b, c = self.c, m = self.m, n = self.n
        if splitRows {
            // Rows of op(A): rows of A as stored, or its columns when transposed.
            a += transposeA ? slice.lowerBound : slice.lowerBound * lda
            c += slice.lowerBound * ldc
            m = slice.count
        } else {
            // Columns of op(B): columns of B as stored, or its rows when transposed.
            b += transposeB ? slice.lowerBound * ldb : slice.lowerBound
            c += slice.lowerBound
            n = slice.count
        }
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
