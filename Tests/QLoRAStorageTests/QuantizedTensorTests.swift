import Foundation
import QLoRAStorage
import Testing
import _TestSupport

/// The worked example of formats/packed-checkpoint.md: shape [2, 24], row 1 at half scale.
let specExample: [Float] = (0..<48).map { i in Float((i * 5) % 17 - 8) / (i < 24 ? 8 : 16) }

@Suite struct QuantizedTensorTests {
    static let specs: [QuantSpec] = QuantType.allCases.flatMap { t in
        ScaleKind.allCases.map { QuantSpec(type: t, blockSize: 32, scaleKind: $0) }
    }

    @Test func workedExampleMatchesTheSpecByteForByte() throws {
        let f32 = try BlockCodec.quantize(specExample, shape: [2, 24], spec: QuantSpec(type: .nf4, blockSize: 32))
        let codes: [UInt8] = [0xc0, 0x03, 0x3a, 0xaf, 0xf1, 0x17, 0x7d, 0xd0, 0x34, 0x6b, 0x9f, 0xc2, 0x49, 0x8e, 0xb1, 0x36,
                              0x76, 0x7c, 0x70, 0x73, 0x7a, 0x7f, 0x71, 0x77, 0x7d, 0x70, 0x74, 0x7b, 0x7f, 0x72, 0x79, 0x7e]
        let a = f32.regionBytes
        #expect(a.count == 72)
        #expect(Array(a[0..<32]) == codes)
        #expect(a[32..<64].allSatisfy { $0 == 0 })
        #expect(Array(a[64..<72]) == [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x3f])

        let dq = try BlockCodec.quantize(specExample, shape: [2, 24], spec: QuantSpec(type: .nf4, blockSize: 32, scaleKind: .dq8))
        let b = dq.regionBytes
        #expect(b.count == 136)
        #expect(Array(b[0..<32]) == codes)
        #expect(dq.parts == PackedParts(layout: dq.layout))
        #expect(dq.parts.scales == 64..<66 && dq.parts.groupScales == 128..<136)
        #expect(Array(b[64..<66]) == [0xff, 0x00] && b[66..<128].allSatisfy { $0 == 0 })
        #expect(Array(b[128..<136]) == [0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x40, 0x3f])
        #expect(dq.offset == 0.75)
        #expect(dq.decodedScales() == [1.0, 0.25 * -0.99296875 + 0.75])
        #expect(dq.dequantized()[0] == -1)
    }

    @Test(arguments: specs)
    func roundTripStaysWithinHalfAStep(spec: QuantSpec) throws {
        // 7 × 45: blocks straddle rows and the last block is padded.
        var rng = SeededGenerator(seed: 7)
        let x = rng.gaussian(count: 7 * 45, std: 0.05)
        let q = try BlockCodec.quantize(x, shape: [7, 45], spec: spec)
        let y = q.dequantized()
        #expect(y.count == x.count)
        #expect(q.rows == 7 && q.cols == 45)
        // The widest gap between neighbouring code values, relative to absmax
        // (NF4: between -1 and the next value; FP4: between its two largest).
        let step: Float = switch spec.type {
        case .int8: 1.0 / 127
        case .int4: 1.0 / 7
        case .nf4: 1 - 0.6961928
        case .fp4: 1.0 / 3
        }
        let stored = q.decodedScales()
        for i in x.indices {
            let b = i / spec.blockSize
            let exact = x[(b * spec.blockSize)..<min(x.count, (b + 1) * spec.blockSize)].map(abs).max()!
            // Codes are chosen against the exact absmax; a stored scale may be rounded
            // (F16) or double quantized, which moves every value by at most the difference.
            let bound = step / 2 * exact + abs(stored[b] - exact) + 1e-6
            #expect(abs(y[i] - x[i]) <= bound, "element \(i): \(x[i]) came back as \(y[i])")
        }
        // Parts start on 64-byte boundaries; the padding between them is zero.
        #expect(q.parts.scales.lowerBound % 64 == 0)
        #expect(q.parts.groupScales.isEmpty == (spec.scaleKind != .dq8))
        #expect(q.parts.groupScales.isEmpty || q.parts.groupScales.lowerBound % 64 == 0)
        #expect(q.regionBytes[q.parts.codes.upperBound..<q.parts.scales.lowerBound].allSatisfy { $0 == 0 })
    }

    @Test(arguments: specs)
    func chunkedEncodingEqualsOneCall(spec: QuantSpec) throws {
        var rng = SeededGenerator(seed: 11)
        let x = rng.gaussian(count: 1000)
        let whole = try BlockCodec.quantize(x, shape: [1000], spec: spec)
        let encoder = try BlockEncoder(spec: spec, shape: [1000])
        x.withUnsafeBufferPointer { p in
            // Out of order, as the quantizer's threads may finish.
            for start in stride(from: 0, to: 1000, by: 96).reversed() {
                encoder.encode(UnsafeBufferPointer(rebasing: p[start..<min(1000, start + 96)]), at: start)
            }
        }
        let pieces = encoder.finish()
        #expect(pieces.regionBytes == whole.regionBytes)
    }

    @Test func zeroTensorComesBackAsZeros() throws {
        for spec in Self.specs {
            let q = try BlockCodec.quantize([Float](repeating: 0, count: 64), shape: [64], spec: spec)
            #expect(q.dequantized().allSatisfy { $0 == 0 }, "\(spec)")
        }
    }

    @Test func reconstructionErrorMatchesADirectComputation() throws {
        var rng = SeededGenerator(seed: 3)
        let x = rng.gaussian(count: 300, std: 0.1)
        let q = try BlockCodec.quantize(x, shape: [300], spec: QuantSpec(type: .int4, blockSize: 64, scaleKind: .f16))
        let y = q.dequantized()
        let stats = x.withUnsafeBufferPointer { BlockCodec.error(of: q, reference: $0) }
        let diffs = zip(x, y).map { Double($1 - $0) }
        let rms = (diffs.map { $0 * $0 }.reduce(0, +) / 300).squareRoot()
        let worst = diffs.indices.max { abs(diffs[$0]) < abs(diffs[$1]) }!
        let ref = (x.map { Double($0 * $0) }.reduce(0, +) / 300).squareRoot()
        #expect(stats.count == 300)
        #expect(abs(stats.rms - rms) < 1e-9)
        #expect(abs(stats.relativeRMS - rms / ref) < 1e-6)
        #expect(stats.maxAbsIndex == worst && Double(stats.maxAbs) == abs(diffs[worst]))

        var halves = ReconstructionError()
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                var a = ReconstructionError(), b = ReconstructionError()
                a.add(reference: UnsafeBufferPointer(rebasing: xp[0..<100]), approximation: UnsafeBufferPointer(rebasing: yp[0..<100]), firstIndex: 0)
                b.add(reference: UnsafeBufferPointer(rebasing: xp[100...]), approximation: UnsafeBufferPointer(rebasing: yp[100...]), firstIndex: 100)
                halves.merge(a)
                halves.merge(b)
            }
        }
        #expect(halves.maxAbsIndex == stats.maxAbsIndex && abs(halves.rms - stats.rms) < 1e-12)
    }

    @Test func badSpecOrEmptyShapeIsAnError() {
        #expect(throws: BlockCodecError.invalidSpec(QuantSpec(type: .nf4, blockSize: 48))) {
            try BlockCodec.quantize([Float](repeating: 1, count: 48), shape: [48], spec: QuantSpec(type: .nf4, blockSize: 48))
        }
        #expect(throws: BlockCodecError.emptyTensor(shape: [0, 4])) {
            try BlockCodec.quantize([], shape: [0, 4], spec: QuantSpec(type: .nf4, blockSize: 64))
        }
    }
}
