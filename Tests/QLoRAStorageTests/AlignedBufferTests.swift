import QLoRAStorage
import Testing

@Suite struct AlignedBufferTests {
    /// Sizes below, at and past a huge page, none a multiple of 4 KiB.
    static let counts = [1, 4_097, (2 << 20) - 1, 2 << 20, 9_080_001]

    @Test(arguments: counts)
    func zeroFilledWritableAndCacheLineAligned(count: Int) throws {
        for hugePages in [false, true] {
            let buffer = try #require(AlignedBuffer(count: count, hugePages: hugePages))
            let bytes = buffer.mutableBytes
            #expect(bytes.count == count)
            #expect(Int(bitPattern: buffer.base) % 64 == 0)
            #expect(bytes[0] == 0 && bytes[count - 1] == 0)
            // The whole range is mapped: the head and tail given back must lie outside it.
            bytes[count - 1] = 2
            bytes[0] = 1
            #expect(bytes[0] == 1 && bytes[count - 1] == (count == 1 ? 1 : 2))
        }
    }

    #if os(Linux)
    @Test func hugePageBuffersStartOnAHugePage() throws {
        // Several in a row, so that one landing aligned by chance proves nothing.
        let buffers = try (0..<4).map { i in try #require(AlignedBuffer(count: (5 << 20) + 4096 * i + 1, hugePages: true)) }
        for b in buffers { #expect(Int(bitPattern: b.base) % (2 << 20) == 0) }
        let small = try #require(AlignedBuffer(count: (2 << 20) - 1, hugePages: true))
        #expect(small.count == (2 << 20) - 1)
    }
    #endif
}
