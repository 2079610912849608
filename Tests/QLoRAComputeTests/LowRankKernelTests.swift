import CQLoRAKernels
import Testing
import _TestSupport

/// qk_lora_b_gradients (LoRA's dB and du in one pass over dy): the reference
/// against the formulas in double precision, and the dispatched path (AVX-512,
/// AVX2, NEON, then single lanes for a rank's remainder) against the reference
/// on shapes that are not multiples of its row and column blocks, with row
/// strides wider than the rows.
@Suite struct LowRankKernelTests {
    struct Case {
        let n: Int, o: Int, r: Int
        let dy: [Float], u: [Float], b: [Float], db0: [Float]
        // Row strides: dy, u and du each have spare columns the kernel must not read or write.
        var ldy: Int { o + 3 }
        var ldu: Int { r + 2 }
        var lddu: Int { r + 5 }

        init(n: Int, o: Int, r: Int, seed: UInt64) {
            self.n = n
            self.o = o
            self.r = r
            var rng = SeededGenerator(seed: seed)
            dy = rng.gaussian(count: n * (o + 3))
            u = rng.gaussian(count: n * (r + 2))
            b = rng.gaussian(count: o * r)
            db0 = rng.gaussian(count: o * r)
        }

        /// (db, du) from db0 and a du full of a sentinel, through the reference or the dispatcher.
        func run(reference: Bool, scale: Float) -> (db: [Float], du: [Float]) {
            var db = db0, du = [Float](repeating: 7, count: n * lddu)
            let f = reference ? qk_lora_b_gradients_ref : qk_lora_b_gradients
            f(&db, &du, Int64(lddu), dy, Int64(ldy), u, Int64(ldu), b, Int64(n), Int64(o), Int64(r), scale)
            return (db, du)
        }
    }

    static let shapes: [(n: Int, o: Int, r: Int)] = [
        (1, 1, 1), (7, 9, 3), (19, 37, 8), (19, 37, 16), (9, 17, 20), (33, 13, 40), (5, 70, 64),
    ]

    @Test func referenceMatchesTheFormulas() {
        for (i, s) in Self.shapes.enumerated() {
            let c = Case(n: s.n, o: s.o, r: s.r, seed: UInt64(i + 1)), scale: Float = 0.75
            let (db, du) = c.run(reference: true, scale: scale)
            for t in 0..<c.n {
                for q in 0..<c.r {
                    let sum = (0..<c.o).reduce(0.0) { $0 + Double(c.dy[t * c.ldy + $1]) * Double(c.b[$1 * c.r + q]) }
                    #expect(abs(Double(du[t * c.lddu + q]) - Double(scale) * sum) <= 1e-5 * (1 + abs(sum)), "du[\(t), \(q)] \(s)")
                }
                for q in c.r..<c.lddu { #expect(du[t * c.lddu + q] == 7, "du's spare column \(q) was written, \(s)") }
            }
            for j in 0..<c.o {
                for q in 0..<c.r {
                    let sum = (0..<c.n).reduce(0.0) { $0 + Double(c.dy[$1 * c.ldy + j]) * Double(c.u[$1 * c.ldu + q]) }
                    let expected = Double(c.db0[j * c.r + q]) + Double(scale) * sum
                    #expect(abs(Double(db[j * c.r + q]) - expected) <= 1e-5 * (1 + abs(expected)), "db[\(j), \(q)] \(s)")
                }
            }
        }
    }

    @Test func fastPathMatchesReference() {
        for (i, s) in Self.shapes.enumerated() {
            let c = Case(n: s.n, o: s.o, r: s.r, seed: UInt64(100 + i))
            let expected = c.run(reference: true, scale: 2)
            KernelVariant.both { variant in
                let got = c.run(reference: false, scale: 2)
                #expect(relativeError(got.db, expected.db) <= 1e-5, "db \(s) \(variant)")
                // Spare columns keep the sentinel on both paths, so the whole buffers compare.
                #expect(relativeError(got.du, expected.du) <= 1e-5, "du \(s) \(variant)")
            }
        }
    }

    @Test func lanesDivideTheWidestVector() {
        let lanes = qk_lora_b_lanes()
        #expect([1, 4, 8].contains(lanes))
        #if arch(x86_64)
        #expect(lanes == 8 || qk_isa_active() == QK_ISA_SCALAR)
        #endif
    }
}
