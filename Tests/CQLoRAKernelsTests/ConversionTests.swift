import CQLoRAKernels
import Testing
import _TestSupport

// Swift has no Float16 on Intel Macs; everywhere else it is an independent
// IEEE implementation to check the half conversions against.
#if !(os(macOS) && arch(x86_64))
@Suite struct ConversionTests {
    @Test func halfToFloatAgreesWithSwiftFloat16() {
        let halves = (0...UInt16.max).map { $0 }
        for reference in [false, true] {
            var y = [Float](repeating: 0, count: halves.count)
            (reference ? qk_f16_to_f32_ref : qk_f16_to_f32)(&y, halves, Int64(halves.count))
            let wrong = zip(halves, y).filter { h, f in
                let expected = Float(Float16(bitPattern: h))
                // NaNs: quieted, sign and payload kept (what F16C does).
                let bits = expected.isNaN ? UInt32(h & 0x8000) << 16 | 0x7fc0_0000 | UInt32(h & 0x3ff) << 13
                                          : expected.bitPattern
                return f.bitPattern != bits
            }.prefix(8).map { String($0.0, radix: 16) }
            #expect(wrong.isEmpty, "reference=\(reference): halves \(wrong) convert wrongly")
        }
    }

    @Test func floatToHalfAgreesWithSwiftFloat16() {
        var rng = SeededGenerator(seed: 11)
        var x: [Float] = [0, -0.0, 1, -1, 65504, 65519.996, 65520, -65520, 1e9, .infinity, -.infinity,
                          .nan, 0x1p-24, 0x1p-25, 0x1.000002p-25, 0x1.8p-24, 0x1p-14, 0x1.ff8p-15,
                          .leastNonzeroMagnitude, .leastNormalMagnitude, .greatestFiniteMagnitude]
        x += (0..<50_000).map { _ in Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng)) }
        // Dense coverage of the half subnormal range and the overflow edge.
        x += (0..<20_000).map { _ in Float.random(in: -0x1p-13...0x1p-13, using: &rng) }
        x += (0..<5_000).map { _ in Float.random(in: 65000...66000, using: &rng) }
        for reference in [false, true] {
            var y = [UInt16](repeating: 0, count: x.count)
            (reference ? qk_f32_to_f16_ref : qk_f32_to_f16)(&y, x, Int64(x.count))
            let wrong = zip(x, y).filter { f, h in
                let b = f.bitPattern
                let expected = f.isNaN ? UInt16(b >> 16 & 0x8000) | 0x7e00 | UInt16(b >> 13 & 0x3ff) : Float16(f).bitPattern
                return h != expected
            }.prefix(8).map { String($0.0.bitPattern, radix: 16) }
            #expect(wrong.isEmpty, "reference=\(reference): floats \(wrong) convert wrongly")
        }
    }
}
#endif
