import CQLoRAKernels
import QLoRAStorage
import Testing
import _TestSupport

/// The dispatching entry points (AVX2 on x86-64 machines that have it) return the
/// scalar reference's bits. Lengths are not multiples of the block or vector width.
@Suite struct FastPathTests {
    static let lengths = [1, 7, 31, 33, 257, 1000, 2048, 4097]

    @Test(arguments: QuantType.allCases, QuantSpec.blockSizes)
    func quantizeMatchesReference(type: QuantType, blockSize: Int) {
        for n in Self.lengths {
            for seed: UInt64 in 0..<3 {
                let x = awkwardData(count: n, type: type, blockSize: blockSize, seed: seed)
                let fast = Codec.quantize(x, type, blockSize: blockSize)
                let ref = Codec.quantize(x, type, blockSize: blockSize, reference: true)
                let codes = differences(fast.codes, ref.codes), scales = differences(fast.absmax.bits, ref.absmax.bits)
                #expect(codes.isEmpty, "\(type) B=\(blockSize) n=\(n) seed=\(seed): code bytes \(codes) differ")
                #expect(scales.isEmpty, "\(type) B=\(blockSize) n=\(n) seed=\(seed): absmax of blocks \(scales) differ")
            }
        }
    }

    @Test(arguments: QuantType.allCases, QuantSpec.blockSizes)
    func dequantizeMatchesReference(type: QuantType, blockSize: Int) {
        var rng = SeededGenerator(seed: 7)
        for blocks in [1, 3, 17] {
            // Every byte value, so every code and nibble pair; scales of all signs and sizes.
            let codes = (0..<blocks * qk_block_bytes(type.code, Int32(blockSize))).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let absmax = (0..<blocks).map { b in b == 0 ? 0 : Float.random(in: -3...3, using: &rng) * (b % 2 == 0 ? 1e-30 : 1) }
            let fast = Codec.dequantize(codes, absmax: absmax, type, blockSize: blockSize)
            let ref = Codec.dequantize(codes, absmax: absmax, type, blockSize: blockSize, reference: true)
            let wrong = differences(fast.bits, ref.bits)
            #expect(wrong.isEmpty, "\(type) B=\(blockSize) blocks=\(blocks): elements \(wrong) differ")
        }
    }

    @Test func halfAndBFloatToFloatMatchReference() {
        let all = (0...UInt16.max).map { $0 }
        for n in [0, 1, 7, 9, 65536] {
            let x = Array(all.prefix(n))
            var fast = [Float](repeating: 1, count: n), ref = [Float](repeating: 2, count: n)
            qk_f16_to_f32(&fast, x, Int64(n))
            qk_f16_to_f32_ref(&ref, x, Int64(n))
            #expect(differences(fast.bits, ref.bits).isEmpty, "f16 n=\(n)")
            qk_bf16_to_f32(&fast, x, Int64(n))
            qk_bf16_to_f32_ref(&ref, x, Int64(n))
            #expect(differences(fast.bits, ref.bits).isEmpty, "bf16 n=\(n)")
        }
    }

    @Test func floatToHalfMatchesReference() {
        // Random bit patterns (every class: NaN payloads, subnormals, overflow) plus
        // each float in a window around every half rounding boundary of one binade.
        var rng = SeededGenerator(seed: 3)
        var x = (0..<100_003).map { _ in Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng)) }
        for half in UInt32(0x3c00)...UInt32(0x3fff) {
            let boundary = (half << 13) + 0x3800_0000 + 0x1000  // halfway to the next half, as fp32 bits
            for d in -2...2 { x.append(Float(bitPattern: UInt32(Int(boundary) + d))) }
        }
        var fast = [UInt16](repeating: 0, count: x.count), ref = [UInt16](repeating: 1, count: x.count)
        qk_f32_to_f16(&fast, x, Int64(x.count))
        qk_f32_to_f16_ref(&ref, x, Int64(x.count))
        let wrong = differences(fast, ref)
        #expect(wrong.isEmpty, "floats \(wrong.map { String(x[$0].bitPattern, radix: 16) }) differ")
    }

    @Test func findNonfiniteMatchesReference() {
        var x = [Float](repeating: 1.5, count: 100)
        #expect(qk_find_nonfinite(x, 100) == -1)
        for bad in [Float.infinity, -.infinity, .nan, -.nan] {
            for at in 0..<100 {
                x[at] = bad
                for n in [at, at + 1, 100] {
                    let fast = qk_find_nonfinite(x, Int64(n))
                    #expect(fast == qk_find_nonfinite_ref(x, Int64(n)))
                    #expect(fast == (n > at ? Int64(at) : -1))
                }
                x[at] = .greatestFiniteMagnitude
            }
        }
    }
}
