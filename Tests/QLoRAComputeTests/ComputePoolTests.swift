import QLoRACompute
import Testing

@Suite struct ComputePoolTests {
    /// Slices taken dynamically (several per thread) still cover the range
    /// exactly once, each starting on the grain.
    @Test(arguments: [1, 2, 5])
    func chunkedRunCoversEveryIndexOnce(chunksPerThread: Int) {
        struct Context {
            let hits: UnsafeMutablePointer<Int>
            let starts: UnsafeMutablePointer<Int>
        }
        let pool = ComputePool(threadCount: 3)
        for (extent, grain) in [(1000, 7), (5, 1), (64, 16)] {
            var hits = [Int](repeating: 0, count: extent), starts = hits
            hits.withUnsafeMutableBufferPointer { h in
                starts.withUnsafeMutableBufferPointer { s in
                    var context = Context(hits: h.baseAddress!, starts: s.baseAddress!)
                    for _ in 0..<3 {
                        pool.run(extent: extent, grain: grain, scratchFloats: 1, chunksPerThread: chunksPerThread,
                                 context: &context) { context, lower, upper, _ in
                            let c = context.assumingMemoryBound(to: Context.self).pointee
                            c.starts[lower] += 1
                            for i in lower..<upper { c.hits[i] += 1 }
                        }
                    }
                }
            }
            #expect(hits.allSatisfy { $0 == 3 }, "extent \(extent) grain \(grain)")
            #expect(starts.indices.allSatisfy { starts[$0] == 0 || $0 % grain == 0 }, "extent \(extent) grain \(grain)")
        }
    }
}

/// The shared pool's thread count: QLORA_THREADS must be a positive integer, and the count can
/// be set only while it would not change a pool that already runs.
@Suite struct SharedThreadCountTests {
    @Test func environmentValue() throws {
        #expect(try ComputePool.environmentThreadCount([:]) == nil)
        #expect(try ComputePool.environmentThreadCount(["QLORA_THREADS": " 3 "]) == 3)
        for bad in ["0", "-2", "two", ""] {
            #expect(throws: ThreadCountError.invalid(bad, source: "QLORA_THREADS")) {
                try ComputePool.environmentThreadCount(["QLORA_THREADS": bad])
            }
        }
    }

    @Test func fixedOnceTheSharedPoolRuns() throws {
        let running = ComputePool.shared.threadCount
        try ComputePool.setSharedThreadCount(running)
        #expect(throws: ThreadCountError.alreadyRunning(running)) { try ComputePool.setSharedThreadCount(running + 1) }
        #expect(throws: ThreadCountError.invalid("0", source: "the thread count")) { try ComputePool.setSharedThreadCount(0) }
        #expect(ComputePool.shared.threadCount == running)
    }
}
