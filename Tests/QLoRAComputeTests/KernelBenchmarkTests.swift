import QLoRACompute
import Testing

@Suite struct KernelBenchmarkTests {
    static let mib = 1 << 20

    /// The weights a timed call reads must not be left in the last-level
    /// cache by the previous call, as they would not be in a real model.
    @Test(arguments: [
        [64 * mib, 32 * mib],  // fp32 4096×4096
        [256 * mib, 32 * mib],  // exactly 8 × LLC on its own
        [300 * mib, 32 * mib],  // one copy is enough
        [8_650_752, 32 * mib],  // NF4/64/DQ8 4096×4096
        [3 * mib, 32 * mib],
        [1000, mib],  // capped at 64 copies
    ] as [[Int]])
    func rotatedWeightsOutgrowTheCache(sizes: [Int]) {
        let bytes = sizes[0], llc = sizes[1]
        let copies = KernelBenchmark.copies(of: bytes, lastLevelCache: llc)
        #expect(copies >= 1 && copies <= 64)
        #expect(copies == 64 || copies * bytes > 8 * llc)
        // No more copies than needed: one fewer would not outgrow it.
        #expect(copies == 1 || (copies - 1) * bytes <= 8 * llc)
    }
}
