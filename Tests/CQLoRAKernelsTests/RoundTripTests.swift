import CQLoRAKernels
import QLoRAStorage
import Testing
import _TestSupport

/// dequantize(quantize(x)) stays within each type's rounding error of x.
@Suite struct RoundTripTests {
    @Test(arguments: QuantType.allCases, QuantSpec.blockSizes)
    func errorWithinHalfAStep(type: QuantType, blockSize: Int) {
        var rng = SeededGenerator(seed: 5)
        var x = rng.gaussian(count: 1000, std: 0.1)
        for i in 0..<blockSize { x[blockSize + i] = 0 }  // a zero block
        x[3] = -0.0
        let q = Codec.quantize(x, type, blockSize: blockSize)
        let y = Codec.dequantize(q.codes, absmax: q.absmax, type, blockSize: blockSize)
        let table = (0..<16).map { Codec.value(of: UInt8($0), type) }
        for (i, v) in x.enumerated() {
            let m = q.absmax[i / blockSize], err = abs(y[i] - v)
            switch type {
            case .int8: #expect(err <= m / 254 * (1 + 1e-4), "element \(i)")
            case .int4: #expect(err <= m / 14 * (1 + 1e-4), "element \(i)")
            case .nf4, .fp4:
                // The nearest code: no table value is closer to x than the decoded one.
                let best = table.map { abs($0 * m - v) }.min()!
                #expect(err <= best + m * 1e-6, "element \(i)")
                if abs(v) == m { #expect(y[i] == v, "±absmax comes back exactly, element \(i)") }
            }
            if v == 0 { #expect(y[i] == 0, "zero comes back exactly, element \(i)") }
        }
    }

    @Test(arguments: [1, 255, 256, 257, 1000])
    func doubleQuantizedScalesDecodeClose(count: Int) {
        var rng = SeededGenerator(seed: UInt64(count))
        let absmax = (0..<count).map { _ in Float.random(in: 0.01...0.3, using: &rng) }
        let (q, scales, offset) = Codec.doubleQuantize(absmax)
        let decoded = Codec.decodeDoubleQuantized(q, groupScales: scales, offset: offset)
        // Largest half gap of the dynamic map, plus the 2/65535 grid bitsandbytes snaps to.
        let map = (0..<256).map { Codec.dynamic8($0) }
        let halfGap = zip(map, map.dropFirst()).map { ($1 - $0) / 2 }.max()! + 2 / 65535
        for i in 0..<count {
            #expect(abs(decoded[i] - absmax[i]) <= scales[i / 256] * halfGap * (1 + 1e-4) + 1e-7, "block \(i)")
        }
        if count == 1 { #expect(decoded[0] == absmax[0] && offset == absmax[0]) }
    }
}
