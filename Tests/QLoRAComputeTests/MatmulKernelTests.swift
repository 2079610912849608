import COpenBLAS
import Foundation
import CQLoRAKernels
import QLoRACompute
import QLoRAStorage
import Testing
import _TestSupport

// The C products with a packed weight, checked three ways on random data of
// awkward shapes (rows not a multiple of the SIMD width, columns not a multiple
// of the block, so blocks straddle rows): the dispatched fast path against the
// scalar reference, the reference against cblas_sgemm on the dequantized
// weight, and the backward against the forward through the adjoint identity.

/// Every type, block size and scale storage.
let allSpecs: [QuantSpec] = QuantType.allCases.flatMap { type in
    QuantSpec.blockSizes.flatMap { block in
        ScaleKind.allCases.map { QuantSpec(type: type, blockSize: block, scaleKind: $0) }
    }
}

/// (out, in): aligned rows, rows straddling blocks, a single short row, and
/// rows of 21 or 42 blocks, whose runs of 16 block scales straddle the
/// 256-block groups of double-quantized scales.
let awkwardShapes = [(37, 512), (19, 100), (5, 33), (37, 1344)]
/// Around the path switches: fused decode up to 4 rows (AVX2) or 8 (AVX-512,
/// every type), the tiled GEMM above.
let batchSizes = [1, 3, 4, 5, 8, 9, 17]

/// ‖a − b‖ / ‖b‖ in double precision.
func relativeError(_ a: [Float], _ b: [Float]) -> Double {
    var num = 0.0, den = 0.0
    for (x, y) in zip(a, b) {
        num += Double(x - y) * Double(x - y)
        den += Double(y) * Double(y)
    }
    return den > 0 ? (num / den).squareRoot() : num.squareRoot()
}

/// A packed random weight plus everything needed to call the C kernels on it.
struct PackedCase {
    let layer: PackedLinear
    let rows: Int, cols: Int

    init(_ spec: QuantSpec, rows: Int, cols: Int, seed: UInt64) throws {
        var rng = SeededGenerator(seed: seed)
        let w = rng.gaussian(count: rows * cols, std: 0.05)
        layer = try PackedLinear(quantizing: w, outFeatures: rows, inFeatures: cols, spec: spec)
        self.rows = rows
        self.cols = cols
    }

    func scratch(_ n: Int) -> [Float] {
        layer.withView { w in
            let f = qk_matmul_scratch_floats(w, Int64(n), Int32(QK_DIRECTION_FORWARD.rawValue))
            let b = qk_matmul_scratch_floats(w, Int64(n), Int32(QK_DIRECTION_BACKWARD.rawValue))
            // NaN, not zeros: a kernel that reads scratch it never wrote shows.
            return [Float](repeating: .nan, count: Int(max(f, b)) + 16)
        }
    }

    /// Runs `kernel` over `extent` in `slices` grain-aligned slices, as ComputePool does.
    func sliced(
        extent: Int, grain: Int64, slices: Int, scratch: inout [Float],
        _ kernel: (Int64, Int64, UnsafeMutablePointer<Float>) -> Void
    ) {
        scratch.withUnsafeMutableBufferPointer { s in
            // The kernels want 64-byte aligned scratch.
            let raw = UnsafeMutableRawPointer(s.baseAddress!)
            let aligned = raw.alignedUp(toMultipleOf: 64).assumingMemoryBound(to: Float.self)
            for t in 0..<slices {
                let r = ComputePool.slice(t, of: slices, extent: extent, grain: Int(grain))
                kernel(Int64(r.lowerBound), Int64(r.upperBound), aligned)
            }
        }
    }

    func forward(_ x: [Float], n: Int, slices: Int, reference: Bool) -> [Float] {
        var y = [Float](repeating: .nan, count: n * rows)
        var s = scratch(n)
        layer.withView { w in
            let grain = qk_matmul_grain(w, Int64(n), Int32(QK_DIRECTION_FORWARD.rawValue))
            sliced(extent: rows, grain: grain, slices: slices, scratch: &s) { lo, hi, sp in
                if reference { qk_matmul_forward_ref(&y, x, Int64(n), w, lo, hi, sp) }
                else { qk_matmul_forward(&y, x, Int64(n), w, lo, hi, sp) }
            }
        }
        return y
    }

    func backward(_ dy: [Float], n: Int, slices: Int, reference: Bool, into dx: [Float]? = nil) -> [Float] {
        var dx = dx ?? [Float](repeating: .nan, count: n * cols)
        let accumulate: Int32 = dx.contains(where: \.isNaN) ? 0 : 1
        var s = scratch(n)
        layer.withView { w in
            let grain = qk_matmul_grain(w, Int64(n), Int32(QK_DIRECTION_BACKWARD.rawValue))
            sliced(extent: cols, grain: grain, slices: slices, scratch: &s) { lo, hi, sp in
                if reference { qk_matmul_backward_ref(&dx, dy, Int64(n), w, lo, hi, accumulate, sp) }
                else { qk_matmul_backward(&dx, dy, Int64(n), w, lo, hi, accumulate, sp) }
            }
        }
        return dx
    }
}

/// Guards the process-wide switch of the AVX-512 sub-path: tests that flip it
/// and tests that compare bits across calls must not interleave.
enum KernelVariant {
    static let lock = NSLock()

    /// Runs `body` with the AVX-512 sub-path off, then on (where the CPU has it).
    static func both(_ body: (String) throws -> Void) rethrows {
        try lock.withLock {
            defer { qk_matmul_allow_avx512(1) }
            for allow: Int32 in [0, 1] {
                qk_matmul_allow_avx512(allow)
                try body(allow == 0 ? "avx2" : "avx512 if available")
            }
        }
    }
}

@Suite struct MatmulKernelTests {
    static let tolerance = 1e-5

    @Test(arguments: allSpecs)
    func fastPathMatchesReference(spec: QuantSpec) throws {
        for (i, (rows, cols)) in awkwardShapes.enumerated() {
            let c = try PackedCase(spec, rows: rows, cols: cols, seed: UInt64(i + 1))
            for n in batchSizes {
                var rng = SeededGenerator(seed: UInt64(100 + n))
                let x = rng.gaussian(count: n * cols), dy = rng.gaussian(count: n * rows)
                let label = "\(spec) \(rows)x\(cols) n=\(n)"
                let yRef = c.forward(x, n: n, slices: 1, reference: true)
                let dxRef = c.backward(dy, n: n, slices: 1, reference: true)
                KernelVariant.both { variant in
                    let y = c.forward(x, n: n, slices: 3, reference: false)
                    #expect(relativeError(y, yRef) < Self.tolerance, "forward \(label) \(variant)")
                    let dx = c.backward(dy, n: n, slices: 3, reference: false)
                    #expect(relativeError(dx, dxRef) < Self.tolerance, "backward \(label) \(variant)")
                }
            }
        }
    }

    /// One row of x through a 4-bit weight (decode): AVX-512 reads each row's
    /// codes in 64-byte chunks, so rows of 17 and 19 blocks of 32 or 64 end in
    /// a chunk of 16, 32 or 48 bytes, a row of 1 block is nothing but such a
    /// chunk (stories260K's 64-wide projections), rows of 65 blocks refill
    /// the block steps mid-row (64 at a time) and make groups of rows share a
    /// group of 256 double-quantized scales with the rows before, and four
    /// rows of 300 blocks span six groups; 7 rows make a group of four rows, a
    /// pair and a single row.
    @Test(arguments: allSpecs.filter { $0.type != .int8 })
    func decodeRowMatchesReference(spec: QuantSpec) throws {
        for (c, var rng) in try Self.decodeCases(spec, seed: 40) {
            let x = rng.gaussian(count: c.cols)
            let yRef = c.forward(x, n: 1, slices: 1, reference: true)
            KernelVariant.both { variant in
                let y = c.forward(x, n: 1, slices: 3, reference: false)
                #expect(relativeError(y, yRef) < Self.tolerance, "\(spec) \(c.rows)x\(c.cols) \(variant)")
                #expect(c.forward(x, n: 1, slices: 1, reference: false) == y, "\(spec) \(c.rows)x\(c.cols) \(variant): slicing")
            }
        }
    }

    /// Seven rows of 17, 19, 65, 1 and 300 blocks of `spec`, each with its
    /// generator of inputs.
    static func decodeCases(_ spec: QuantSpec, seed: UInt64) throws -> [(PackedCase, SeededGenerator)] {
        try [17, 19, 65, 1, 300].enumerated().map { i, blocks in
            (try PackedCase(spec, rows: 7, cols: blocks * spec.blockSize, seed: seed + UInt64(i)),
             SeededGenerator(seed: seed + 10 + UInt64(i)))
        }
    }

    /// One row of dy through a 4-bit weight: AVX-512 keeps dx in chunk order,
    /// in tiles of at most 2048 (blocks of 32) or 4096 columns, so rows of 300
    /// blocks take several tiles, rows of 17 and 19 blocks end in a short
    /// chunk, and three slices start on a chunk or not (the natural-order
    /// path). The sums run over the rows of W in order whatever the path, so
    /// every slicing gives the same bits; with `accumulate`, dx is added to.
    @Test(arguments: allSpecs.filter { $0.type != .int8 })
    func decodeGradientMatchesReference(spec: QuantSpec) throws {
        for (c, var rng) in try Self.decodeCases(spec, seed: 60) {
            let dy = rng.gaussian(count: c.rows), prior = rng.gaussian(count: c.cols)
            let dxRef = c.backward(dy, n: 1, slices: 1, reference: true)
            let sumRef = c.backward(dy, n: 1, slices: 1, reference: true, into: prior)
            KernelVariant.both { variant in
                let label = "\(spec) \(c.rows)x\(c.cols) \(variant)"
                let dx = c.backward(dy, n: 1, slices: 3, reference: false)
                #expect(relativeError(dx, dxRef) < Self.tolerance, "\(label)")
                #expect(c.backward(dy, n: 1, slices: 1, reference: false) == dx, "\(label): slicing")
                let sum = c.backward(dy, n: 1, slices: 2, reference: false, into: prior)
                #expect(relativeError(sum, sumRef) < Self.tolerance, "\(label): accumulate")
            }
        }
    }

    /// The VBMI decoder of double-quantized scales gives the reference's bits
    /// for windows that start anywhere, end anywhere and straddle the
    /// 256-block groups (1400 blocks: six groups).
    @Test(.enabled(if: vbmiDecodes(), "the CPU has no AVX-512 VBMI"))
    func vbmiScaleDecodeIsExact() throws {
        let c = try PackedCase(QuantSpec(type: .nf4, blockSize: 32, scaleKind: .dq8), rows: 35, cols: 1280, seed: 12)
        let blocks = 35 * 1280 / 32
        var reference = [Float](repeating: 0, count: blocks)
        c.layer.withView { qk_scales_decode(&reference, $0, 0, Int64(blocks)) }
        try KernelVariant.lock.withLock {
            for first in stride(from: 0, to: blocks, by: 37) {
                for count in [1, 15, 16, 63, 64, 65, 130, 300] where first + count <= blocks {
                    var decoded = [Float](repeating: .nan, count: count + 1)
                    let ran = c.layer.withView { qk_scales_decode_vbmi(&decoded, $0, Int64(first), Int64(count)) }
                    try #require(ran == 1)
                    #expect(Array(decoded[0..<count]) == Array(reference[first..<(first + count)]), "blocks \(first)+\(count)")
                    #expect(decoded[count].isNaN, "blocks \(first)+\(count): wrote past the window")
                }
            }
        }
    }

    /// Many rows: more than one pass of the tiled GEMM over W (the passes take at
    /// most 516 rows with AVX2, 1032 with AVX-512), W tiles of 128 columns and
    /// narrower, partial last panels, (37 × 300) blocks that straddle rows, and
    /// rows of X (or dY) that the AVX-512 tile reads in place or, 1024 floats
    /// apart (37 × 1024 forward, 1024 × 40 backward), copies first. Slicing
    /// must not change the bits, and the AVX2 and AVX-512 tiles sum in the same
    /// order, so they must agree bit for bit too. (Arrays this large are
    /// compared outside #expect, whose failure report would print them.)
    @Test(arguments: QuantType.allCases, [(32, ScaleKind.f16), (64, .dq8), (256, .f32)])
    func manyRowsMatchReference(type: QuantType, scales: (block: Int, kind: ScaleKind)) throws {
        let spec = QuantSpec(type: type, blockSize: scales.block, scaleKind: scales.kind)
        for (i, (rows, cols, n)) in [(37, 300, 1040), (200, 512, 530), (37, 1024, 530), (1024, 40, 530)].enumerated() {
            let c = try PackedCase(spec, rows: rows, cols: cols, seed: UInt64(20 + i))
            var rng = SeededGenerator(seed: UInt64(30 + i))
            let x = rng.gaussian(count: n * cols), dy = rng.gaussian(count: n * rows)
            let label = "\(spec) \(rows)x\(cols) n=\(n)"
            let yRef = c.forward(x, n: n, slices: 1, reference: true)
            let dxRef = c.backward(dy, n: n, slices: 1, reference: true)
            var ys: [[Float]] = [], dxs: [[Float]] = []
            KernelVariant.both { variant in
                let y = c.forward(x, n: n, slices: 3, reference: false)
                #expect(relativeError(y, yRef) < Self.tolerance, "forward \(label) \(variant)")
                let dx = c.backward(dy, n: n, slices: 3, reference: false)
                #expect(relativeError(dx, dxRef) < Self.tolerance, "backward \(label) \(variant)")
                let sameY = c.forward(x, n: n, slices: 1, reference: false) == y
                let sameDX = c.backward(dy, n: n, slices: 1, reference: false) == dx
                #expect(sameY, "forward \(label) \(variant): 1 and 3 slices differ")
                #expect(sameDX, "backward \(label) \(variant): 1 and 3 slices differ")
                ys.append(y)
                dxs.append(dx)
            }
            let sameY = ys[0] == ys[1], sameDX = dxs[0] == dxs[1]
            #expect(sameY, "forward \(label): AVX2 and AVX-512 tiles differ")
            #expect(sameDX, "backward \(label): AVX2 and AVX-512 tiles differ")
        }
    }

    @Test(arguments: allSpecs)
    func referenceMatchesBLASOnDequantizedWeight(spec: QuantSpec) throws {
        let (rows, cols, n) = (19, 100, 17)
        let c = try PackedCase(spec, rows: rows, cols: cols, seed: 7)
        let w = c.layer.dequantized()
        var rng = SeededGenerator(seed: 8)
        let x = rng.gaussian(count: n * cols), dy = rng.gaussian(count: n * rows)

        var y = [Float](repeating: 0, count: n * rows)
        cblas_sgemm(
            CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(cols), 1, x, Int32(cols), w,
            Int32(cols), 0, &y, Int32(rows))
        #expect(relativeError(c.forward(x, n: n, slices: 1, reference: true), y) < Self.tolerance)
        #expect(relativeError(c.forward(x, n: n, slices: 2, reference: false), y) < Self.tolerance)

        var dx = [Float](repeating: 0, count: n * cols)
        cblas_sgemm(
            CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(cols), Int32(rows), 1, dy, Int32(rows), w,
            Int32(cols), 0, &dx, Int32(cols))
        #expect(relativeError(c.backward(dy, n: n, slices: 1, reference: true), dx) < Self.tolerance)
        #expect(relativeError(c.backward(dy, n: n, slices: 2, reference: false), dx) < Self.tolerance)
    }

    /// ⟨dY, X·Wᵀ⟩ = ⟨dY·W, X⟩: the backward is the forward's adjoint, which
    /// is what a finite-difference check of the linear map measures in every
    /// direction at once.
    @Test(arguments: [QuantType.nf4, .int8], [1, 17])
    func backwardIsAdjointOfForward(type: QuantType, n: Int) throws {
        let (rows, cols) = (37, 300)
        let c = try PackedCase(QuantSpec(type: type, blockSize: 64, scaleKind: .dq8), rows: rows, cols: cols, seed: 3)
        var rng = SeededGenerator(seed: 4)
        let x = rng.gaussian(count: n * cols), dy = rng.gaussian(count: n * rows)
        let y = c.forward(x, n: n, slices: 2, reference: false)
        let dx = c.backward(dy, n: n, slices: 2, reference: false)
        var lhs = 0.0, rhs = 0.0, scale = 0.0
        for i in 0..<(n * rows) {
            lhs += Double(dy[i]) * Double(y[i])
            scale += abs(Double(dy[i]) * Double(y[i]))
        }
        for i in 0..<(n * cols) { rhs += Double(dx[i]) * Double(x[i]) }
        #expect(abs(lhs - rhs) <= Self.tolerance * scale)
    }

    /// Any grain-aligned split gives the same bits, on both paths.
    @Test(arguments: [1, 3, 17])
    func slicingDoesNotChangeBits(n: Int) throws {
        let c = try PackedCase(QuantSpec(type: .nf4, blockSize: 32, scaleKind: .f16), rows: 70, cols: 256, seed: 5)
        var rng = SeededGenerator(seed: 6)
        let x = rng.gaussian(count: n * 256), dy = rng.gaussian(count: n * 70)
        KernelVariant.both { variant in
            let y1 = c.forward(x, n: n, slices: 1, reference: false)
            let dx1 = c.backward(dy, n: n, slices: 1, reference: false)
            for slices in [2, 3, 5] {
                #expect(c.forward(x, n: n, slices: slices, reference: false) == y1, "\(variant)")
                #expect(c.backward(dy, n: n, slices: slices, reference: false) == dx1, "\(variant)")
            }
        }
    }

    @Test(arguments: [1, 17])
    func backwardAccumulates(n: Int) throws {
        let (rows, cols) = (37, 512)
        let c = try PackedCase(QuantSpec(type: .int4, blockSize: 128, scaleKind: .f32), rows: rows, cols: cols, seed: 9)
        var rng = SeededGenerator(seed: 10)
        let dy = rng.gaussian(count: n * rows), base = rng.gaussian(count: n * cols)
        let plain = c.backward(dy, n: n, slices: 2, reference: true)
        let expected = zip(plain, base).map { $0 + $1 }
        KernelVariant.both { variant in
            let summed = c.backward(dy, n: n, slices: 2, reference: false, into: base)
            #expect(relativeError(summed, expected) < Self.tolerance, "\(variant)")
        }
    }

    /// The span decoder behind the tiles reproduces the codec reference bit for
    /// bit, for spans that start and end inside blocks.
    @Test(arguments: allSpecs)
    func spanDequantizationIsExact(spec: QuantSpec) throws {
        let c = try PackedCase(spec, rows: 9, cols: 75, seed: 11)
        let count = 9 * 75
        let whole = c.layer.dequantized()
        var blocks = [Float](repeating: 0, count: (count + spec.blockSize - 1) / spec.blockSize * spec.blockSize)
        c.layer.withView { w in
            let nb = blocks.count / spec.blockSize
            var absmax = [Float](repeating: 0, count: nb)
            qk_scales_decode(&absmax, w, 0, Int64(nb))
            qk_dequantize_ref(&blocks, w.pointee.codes, absmax, Int64(nb), spec.type.code, Int32(spec.blockSize))
        }
        #expect(whole == Array(blocks[0..<count]))
        var tmp = [Float](repeating: 0, count: 256)
        for (first, len) in [(3, 40), (31, 1), (64, 300), (count - 7, 7)] {
            var part = [Float](repeating: .nan, count: len)
            c.layer.withView { qk_dequantize_span(&part, $0, Int64(first), Int64(len), &tmp) }
            #expect(part == Array(blocks[first..<(first + len)]), "span \(first)+\(len)")
        }
    }
}

/// Whether qk_scales_decode_vbmi runs on this CPU (with AVX-512 allowed).
func vbmiDecodes() -> Bool {
    KernelVariant.lock.withLock {
        var one: Float = 0
        let q: UInt8 = 0
        let group: Float = 1
        // Both pointers must outlive `w`, not just its initializer.
        return withUnsafePointer(to: q) { q in
            withUnsafePointer(to: group) { group in
                var w = qk_packed(
                    type: QuantType.nf4.code, block_size: 64, scale_kind: Int32(QK_SCALE_DQ8.rawValue), reserved: 0,
                    rows: 1, cols: 64, codes: nil, scales: UnsafeRawPointer(q), group_scales: group, offset: 0)
                return qk_scales_decode_vbmi(&one, &w, 0, 1) == 1
            }
        }
    }
}
