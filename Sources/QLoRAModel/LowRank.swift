import Foundation
import QLoRACompute

/// The best rank-r approximation of a matrix, U·diag(σ)·Vᵀ with the r largest
/// singular values, by randomized subspace iteration (Halko, Martinsson and
/// Tropp, 2011): a Gaussian sketch of the column space, refined by power
/// iterations, then the exact SVD of the small projected matrix. It costs a
/// few products of the matrix with thin [·, r + oversampling] blocks, so it
/// scales to Llama projections where a full SVD would take minutes each.
///
/// The large products run in fp32 on the shared pool; the orthonormalization
/// and the small eigenproblem run in double precision.
public enum LowRank {
    public struct Factors: Sendable {
        /// [rows, rank], orthonormal columns.
        public var u: [Float]
        /// [rank], descending.
        public var singularValues: [Float]
        /// [rank, columns], orthonormal rows.
        public var vt: [Float]
    }

    /// Rank-`rank` truncated SVD of `m` [rows, columns], row-major. `rank` is
    /// clamped to min(rows, columns). Deterministic for a fixed seed.
    public static func truncatedSVD(_ m: [Float], rows: Int, columns: Int, rank: Int, oversampling: Int = 8,
                                    powerIterations: Int = 4, seed: UInt64) -> Factors {
        precondition(m.count == rows * columns, "[LowRank] \(m.count) values for a \(rows)×\(columns) matrix")
        let r = max(0, min(rank, rows, columns)), k = min(r + oversampling, rows, columns)
        guard r > 0 else { return Factors(u: [], singularValues: [], vt: []) }
        let pool = ComputePool.shared
        // Ω [columns, k] standard normal (Box–Muller).
        var generator = SplitMix64(seed: seed)
        var omega = [Float](repeating: 0, count: columns * k)
        for i in 0..<omega.count {
            let u1 = 1 - generator.nextUniform(), u2 = generator.nextUniform()
            omega[i] = Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
        }
        // Q [rows, k] spans M·Ω; each power iteration replaces it by an orthonormal basis of M·Mᵀ·Q.
        var q = [Float](repeating: 0, count: rows * k), z = [Float](repeating: 0, count: columns * k)
        pool.sgemm(.plain, .plain, m: rows, n: k, k: columns, alpha: 1, a: m, lda: columns, b: omega, ldb: k,
                   beta: 0, c: &q, ldc: k)
        orthonormalizeColumns(&q, rows: rows, columns: k)
        for _ in 0..<powerIterations {
            pool.sgemm(.transposed, .plain, m: columns, n: k, k: rows, alpha: 1, a: m, lda: columns, b: q, ldb: k,
                       beta: 0, c: &z, ldc: k)
            orthonormalizeColumns(&z, rows: columns, columns: k)
            pool.sgemm(.plain, .plain, m: rows, n: k, k: columns, alpha: 1, a: m, lda: columns, b: z, ldb: k,
                       beta: 0, c: &q, ldc: k)
            orthonormalizeColumns(&q, rows: rows, columns: k)
        }
        // B = Qᵀ·M [k, columns]; its SVD from the eigenvectors W of B·Bᵀ: σᵢ = √λᵢ,
        // U = Q·W, and row i of Vᵀ is wᵢᵀ·B / σᵢ.
        var b = [Float](repeating: 0, count: k * columns)
        pool.sgemm(.transposed, .plain, m: k, n: columns, k: rows, alpha: 1, a: q, lda: k, b: m, ldb: columns,
                   beta: 0, c: &b, ldc: columns)
        var gram = [Double](repeating: 0, count: k * k)
        for i in 0..<k {
            for j in i..<k {
                var s = 0.0
                for c in 0..<columns { s += Double(b[i * columns + c]) * Double(b[j * columns + c]) }
                gram[i * k + j] = s
                gram[j * k + i] = s
            }
        }
        let (values, vectors) = symmetricEigen(gram, size: k)
        var factors = Factors(u: [Float](repeating: 0, count: rows * r), singularValues: [], vt: [Float](repeating: 0, count: r * columns))
        for (slot, i) in values.indices.sorted(by: { values[$0] > values[$1] }).prefix(r).enumerated() {
            let sigma = max(values[i], 0).squareRoot()
            factors.singularValues.append(Float(sigma))
            for row in 0..<rows {
                var s = 0.0
                for j in 0..<k { s += Double(q[row * k + j]) * vectors[j * k + i] }
                factors.u[row * r + slot] = Float(s)
            }
            guard sigma > 0 else { continue } // a zero singular value leaves its row of Vᵀ at zero
            for c in 0..<columns {
                var s = 0.0
                for j in 0..<k { s += vectors[j * k + i] * Double(b[j * columns + c]) }
                factors.vt[slot * columns + c] = Float(s / sigma)
            }
        }
        return factors
    }

    /// Gram–Schmidt twice over the columns of a [rows, columns] row-major
    /// matrix, in double precision ("twice is enough": orthogonal to working
    /// precision). A column that vanishes (rank deficiency) becomes zero.
    static func orthonormalizeColumns(_ a: inout [Float], rows: Int, columns: Int) {
        var column = [Double](repeating: 0, count: rows)
        var done: [[Double]] = []
        for j in 0..<columns {
            for i in 0..<rows { column[i] = Double(a[i * columns + j]) }
            let norm0 = column.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for _ in 0..<2 {
                for e in done {
                    var dot = 0.0
                    for i in 0..<rows { dot += e[i] * column[i] }
                    for i in 0..<rows { column[i] -= dot * e[i] }
                }
            }
            let norm = column.reduce(0) { $0 + $1 * $1 }.squareRoot()
            let keep = norm > 1e-12 * max(norm0, .leastNormalMagnitude)
            for i in 0..<rows { column[i] = keep ? column[i] / norm : 0 }
            done.append(column)
            for i in 0..<rows { a[i * columns + j] = Float(column[i]) }
        }
    }

    /// Eigenvalues and eigenvectors (columns of the [size, size] row-major
    /// result) of a symmetric matrix by cyclic Jacobi rotations.
    static func symmetricEigen(_ matrix: [Double], size n: Int) -> (values: [Double], vectors: [Double]) {
        var a = matrix
        var v = [Double](repeating: 0, count: n * n)
        for i in 0..<n { v[i * n + i] = 1 }
        let scale = a.reduce(0) { $0 + $1 * $1 }.squareRoot()
        for _ in 0..<60 {
            var off = 0.0
            for i in 0..<n { for j in 0..<n where j != i { off += a[i * n + j] * a[i * n + j] } }
            if off.squareRoot() <= 1e-15 * scale { break }
            for p in 0..<n {
                for r in (p + 1)..<n where a[p * n + r] != 0 {
                    // The rotation that zeroes a[p][r] (Golub & Van Loan, 8.5.2).
                    let theta = (a[r * n + r] - a[p * n + p]) / (2 * a[p * n + r])
                    let t = (theta >= 0 ? 1.0 : -1.0) / (abs(theta) + (theta * theta + 1).squareRoot())
                    let c = 1 / (t * t + 1).squareRoot(), s = t * c
                    for i in 0..<n {
                        let ip = a[i * n + p], ir = a[i * n + r]
                        a[i * n + p] = c * ip - s * ir
                        a[i * n + r] = s * ip + c * ir
                    }
                    for i in 0..<n {
                        let pi = a[p * n + i], ri = a[r * n + i]
                        a[p * n + i] = c * pi - s * ri
                        a[r * n + i] = s * pi + c * ri
                    }
                    for i in 0..<n {
                        let ip = v[i * n + p], ir = v[i * n + r]
                        v[i * n + p] = c * ip - s * ir
                        v[i * n + r] = s * ip + c * ir
                    }
                }
            }
        }
        return ((0..<n).map { a[$0 * n + $0] }, v)
    }
}
