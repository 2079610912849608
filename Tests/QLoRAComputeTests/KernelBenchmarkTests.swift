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

@Suite struct BandwidthShareTests {
    typealias Round = KernelBenchmark.Round

    /// A kernel at 80 % of whatever the machine gives, in rounds where the
    /// read halves and doubles: 80 % paired round by round, where medians of
    /// the whole case would set a slow round's calls against a fast read.
    @Test func eachRoundAgainstItsOwnRead() {
        let bytes = 8_000_000
        let reads = [34e9, 68e9, 68e9, 34e9, 33e9]
        let rounds = reads.map { read in
            Round(seconds: [0.9, 1.0, 1.3].map { Double(bytes) / (0.8 * read) * $0 }, readBefore: read * 0.95, readAfter: read * 1.05)
        }
        let share = KernelBenchmark.bandwidthShare(bytes: bytes, rounds: rounds)
        #expect(abs(share - 0.8) < 1e-12)
        let callTimes = rounds.flatMap(\.seconds), allReads = rounds.flatMap { [$0.readBefore, $0.readAfter] }
        let ratioOfMedians = Double(bytes) / KernelBenchmark.median(callTimes) / KernelBenchmark.median(allReads)
        #expect(abs(ratioOfMedians - 0.8) > 0.04)
    }

    /// One slow round among five moves the median little.
    @Test func aDipInOneRoundIsOutvoted() {
        let bytes = 1 << 20
        var rounds = (0..<5).map { _ in Round(seconds: [Double(bytes) / 27e9], readBefore: 34e9, readAfter: 34e9) }
        rounds[2].seconds = [Double(bytes) / 10e9]
        #expect(abs(KernelBenchmark.bandwidthShare(bytes: bytes, rounds: rounds) - 27.0 / 34) < 1e-12)
    }
}
