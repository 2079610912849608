import CQLoRAKernels
import QLoRACompute
import QLoRAStorage
import Testing
import _TestSupport

// PackedLinear: the Swift face of the kernels (threads, scratch, ownership of
// the packed bytes, validation of views).

/// Keeps quantized buffers alive the way a mapped checkpoint would.
final class FakeMapping {
    let codes: UnsafeMutableRawBufferPointer
    let scales: UnsafeMutableBufferPointer<Float>

    init(weights: [Float], spec: QuantSpec) {
        let layout = PackedLayout(spec: spec, count: weights.count)
        codes = .allocate(byteCount: layout.codeBytes, alignment: 64)
        scales = .allocate(capacity: layout.blocks)
        qk_quantize_ref(
            codes.baseAddress!.assumingMemoryBound(to: UInt8.self), scales.baseAddress!, weights,
            Int64(weights.count), spec.type.code, Int32(spec.blockSize))
    }

    func view(rows: Int, cols: Int, spec: QuantSpec) -> qk_packed {
        qk_packed(
            spec: spec, rows: rows, cols: cols, codes: UnsafeRawPointer(codes.baseAddress!),
            scales: UnsafeRawPointer(scales.baseAddress!))
    }

    deinit {
        codes.deallocate()
        scales.deallocate()
    }
}

@Suite struct PackedLinearTests {
    /// Dense reference: y = x · Wᵀ in double over the dequantized weight.
    static func denseForward(_ w: [Float], _ x: [Float], n: Int, rows: Int, cols: Int) -> [Float] {
        (0..<(n * rows)).map { idx in
            let (i, o) = idx.quotientAndRemainder(dividingBy: rows)
            var s = 0.0
            for k in 0..<cols { s += Double(w[o * cols + k]) * Double(x[i * cols + k]) }
            return Float(s)
        }
    }

    @Test(arguments: [1, 3, 17])
    func resultsDoNotDependOnThreadCount(n: Int) throws {
        let (rows, cols) = (70, 320)
        var rng = SeededGenerator(seed: 21)
        let w = rng.gaussian(count: rows * cols, std: 0.05)
        let x = rng.gaussian(count: n * cols), dy = rng.gaussian(count: n * rows)
        var outputs: [[Float]] = []
        KernelVariant.lock.lock()
        defer { KernelVariant.lock.unlock() }
        for threads in [1, 2, 3] {
            let layer = try PackedLinear(
                quantizing: w, outFeatures: rows, inFeatures: cols, spec: QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8),
                pool: ComputePool(threadCount: threads))
            var y = [Float](repeating: 0, count: n * rows), dx = [Float](repeating: 0, count: n * cols)
            layer.forward(x, rows: n, into: &y)
            layer.backwardInput(dy, rows: n, into: &dx, accumulate: false)
            outputs.append(y + dx)
        }
        #expect(outputs[1] == outputs[0])
        #expect(outputs[2] == outputs[0])
    }

    @Test func forwardMatchesDenseProductOfDequantizedWeight() throws {
        let (rows, cols, n) = (33, 130, 6)
        var rng = SeededGenerator(seed: 22)
        let layer = try PackedLinear(
            quantizing: rng.gaussian(count: rows * cols), outFeatures: rows, inFeatures: cols,
            spec: QuantSpec(type: .fp4, blockSize: 32, scaleKind: .f16), pool: ComputePool(threadCount: 2))
        let x = rng.gaussian(count: n * cols)
        var y = [Float](repeating: 0, count: n * rows)
        layer.forward(x, rows: n, into: &y)
        let expected = Self.denseForward(layer.dequantized(), x, n: n, rows: rows, cols: cols)
        #expect(relativeError(y, expected) < 1e-5)
    }

    @Test func backwardAccumulateAddsToExistingGradient() throws {
        let (rows, cols, n) = (24, 256, 2)
        var rng = SeededGenerator(seed: 23)
        let layer = try PackedLinear(
            quantizing: rng.gaussian(count: rows * cols), outFeatures: rows, inFeatures: cols,
            spec: QuantSpec(type: .int8, blockSize: 64))
        let dy = rng.gaussian(count: n * rows), start = rng.gaussian(count: n * cols)
        var fresh = [Float](repeating: 0, count: n * cols), summed = start
        layer.backwardInput(dy, rows: n, into: &fresh, accumulate: false)
        layer.backwardInput(dy, rows: n, into: &summed, accumulate: true)
        #expect(relativeError(summed, zip(fresh, start).map { $0 + $1 }) < 1e-6)
    }

    @Test func viewKeepsItsOwnerAlive() throws {
        let (rows, cols) = (16, 128)
        let spec = QuantSpec(type: .nf4, blockSize: 64)
        var rng = SeededGenerator(seed: 24)
        let w = rng.gaussian(count: rows * cols)
        var mapping: FakeMapping? = FakeMapping(weights: w, spec: spec)
        weak let weakMapping = mapping
        var layer: PackedLinear? = try PackedLinear(
            view: mapping!.view(rows: rows, cols: cols, spec: spec), owner: mapping!, name: "q_proj")
        mapping = nil
        #expect(weakMapping != nil)
        let x = rng.gaussian(count: cols)
        var y = [Float](repeating: 0, count: rows)
        layer!.forward(x, rows: 1, into: &y)
        #expect(relativeError(y, Self.denseForward(layer!.dequantized(), x, n: 1, rows: rows, cols: cols)) < 1e-5)
        layer = nil
        #expect(weakMapping == nil)
    }

    @Test func invalidViewsAreRejectedWithTheTensorName() {
        let spec = QuantSpec(type: .int4, blockSize: 32)
        let mapping = FakeMapping(weights: [Float](repeating: 1, count: 64), spec: spec)
        let good = mapping.view(rows: 2, cols: 32, spec: spec)

        var v = good
        v.type = 9
        #expect(throws: PackedLinearError.unknownType("w", code: 9)) { try PackedLinear(view: v, owner: mapping, name: "w") }
        v = good
        v.block_size = 48
        #expect(throws: PackedLinearError.unsupportedBlockSize("w", 48)) {
            try PackedLinear(view: v, owner: mapping, name: "w")
        }
        v = good
        v.scale_kind = 2
        #expect(throws: PackedLinearError.missingBuffer("w", "group scales")) {
            try PackedLinear(view: v, owner: mapping, name: "w")
        }
        v = good
        v.rows = 0
        #expect(throws: PackedLinearError.invalidShape("w", rows: 0, cols: 32)) {
            try PackedLinear(view: v, owner: mapping, name: "w")
        }
        #expect(throws: PackedLinearError.weightCount("w", expected: 6, found: 5)) {
            try PackedLinear(quantizing: [Float](repeating: 0, count: 5), outFeatures: 2, inFeatures: 3, spec: spec, name: "w")
        }
        #expect(PackedLinearError.unsupportedBlockSize("layers.0.q_proj", 48).description.contains("layers.0.q_proj"))
    }
}
