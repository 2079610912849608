import COpenBLAS
import CQLoRAKernels
import Dispatch
import Foundation
import Synchronization
import QLoRAStorage

/// Side-by-side timing of the packed products against OpenBLAS on fp32
/// weights, the scalar reference, and the machine's memory bandwidth: what
/// `qlora bench kernels` prints.
///
/// Honesty rules: every method runs in this one process, interleaved (three
/// rounds of blocks, `batchOneRounds` at batch 1), after a warm-up; times are
/// medians; batch-1 rows are set against the read bandwidth of their own
/// rounds; weights rotate through enough copies to exceed 8 × the last-level
/// cache, so no method reads its weights from cache when a real model would
/// not; OpenBLAS gets the same thread count as the packed kernels.
public final class KernelBenchmark {
    /// One product to time.
    public struct Case: Sendable, Hashable {
        public var spec: QuantSpec
        public var outFeatures: Int
        public var inFeatures: Int
        public var n: Int
        public var direction: Direction

        public init(spec: QuantSpec, outFeatures: Int, inFeatures: Int, n: Int, direction: Direction) {
            self.spec = spec
            self.outFeatures = outFeatures
            self.inFeatures = inFeatures
            self.n = n
            self.direction = direction
        }

        /// Multiply-adds count two flops.
        public var flops: Double { 2 * Double(n) * Double(outFeatures) * Double(inFeatures) }
        public var packedBytes: Int { PackedLayout(spec: spec, count: outFeatures * inFeatures).totalBytes }
        public var fp32Bytes: Int { 4 * outFeatures * inFeatures }
    }

    public enum Direction: String, Sendable, Hashable, CaseIterable {
        case forward, backward
    }

    /// Median seconds of each method on one case.
    public struct Result: Sendable {
        public let benchCase: Case
        public let seconds: Double
        public let openBLASSeconds: Double
        /// nil when the reference was not timed for this case.
        public let referenceSeconds: Double?
        /// Batch 1: the streaming read bandwidth (bytes/s), median of the
        /// samples taken just before and after each of this case's rounds of
        /// the packed kernel; nil for larger batches.
        public let readBandwidth: Double?
        /// Batch 1: the share of the read bandwidth the packed kernel reads
        /// at, round by round (`bandwidthShare`); nil for larger batches.
        public let bandwidthFraction: Double?

        public var gflops: Double { benchCase.flops / seconds / 1e9 }
        /// Packed bytes read per second.
        public var gbps: Double { Double(benchCase.packedBytes) / seconds / 1e9 }
        public var openBLASGFlops: Double { benchCase.flops / openBLASSeconds / 1e9 }
        public var openBLASGBps: Double { Double(benchCase.fp32Bytes) / openBLASSeconds / 1e9 }
        /// OpenBLAS time ÷ ours: above 1 means the packed kernel is faster.
        public var ratioVsOpenBLAS: Double { openBLASSeconds / seconds }
    }

    /// What the numbers were measured on.
    public struct Machine: Sendable {
        public let cpu: String
        public let logicalCPUs: Int
        public let threads: Int
        public let isa: String
        public let openBLAS: String
        public let lastLevelCacheBytes: Int
        public let loadAverage: String
    }

    public let threads: Int
    /// Seconds of timed runs to aim for per method and case (reps are clamped to 5...101).
    public let targetSeconds: Double
    public let machine: Machine
    private let pool: ComputePool
    /// The buffer batch-1 cases sample the read bandwidth from, made at the first one.
    private var read: StreamingRead?

    public init(threads: Int, targetSeconds: Double = 0.6) {
        self.threads = max(1, threads)
        self.targetSeconds = targetSeconds
        pool = ComputePool(threadCount: self.threads)
        machine = Machine(
            cpu: Self.cpuName(), logicalCPUs: ProcessInfo.processInfo.activeProcessorCount, threads: self.threads,
            isa: Self.isaName(qk_isa_active(), cpuFlags: Self.cpuFlags()), openBLAS: Self.openBLASName(),
            lastLevelCacheBytes: Self.lastLevelCacheBytes(), loadAverage: Self.loadAverage())
    }

    /// The current 1/5/15-minute load averages, as /proc/loadavg prints them.
    public static func loadAverage() -> String {
        guard let s = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return "unknown" }
        return s.split(separator: " ").prefix(3).joined(separator: " ")
    }

    // MARK: - Memory bandwidth

    /// A buffer of max(1 GiB, 8 × last-level cache), written once, that
    /// `sample()` reads through on all threads: one measurement of the
    /// sustained read bandwidth per call, so that a benchmark can take its
    /// samples between the runs it compares them with.
    public final class StreamingRead {
        private let pool: ComputePool
        private let storage: AlignedBuffer
        public let bytes: Int

        init(pool: ComputePool, bytes: Int) {
            self.pool = pool
            self.bytes = bytes
            // The weights' pages (RandomPackedWeight); the read measured the same with small ones.
            storage = .required(bytes, hugePages: true, for: "KernelBenchmark")
            memset(storage.base, 1, bytes)
        }

        /// Bytes per second of one pass over the buffer.
        public func sample() -> Double {
            let chunks = UnsafeRawPointer(storage.base).assumingMemoryBound(to: SIMD8<UInt64>.self)
            let sink = Mutex<UInt64>(0)
            let start = DispatchTime.now().uptimeNanoseconds
            pool.run(extent: bytes / 64, grain: 1024, scratchFloats: 1) { range, _ in
                let s = KernelBenchmark.sum(chunks + range.lowerBound, count: range.count)
                sink.withLock { $0 &+= s }
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            precondition(sink.withLock { $0 } != 0, "[KernelBenchmark] stream read was optimized away")
            return Double(bytes) / seconds
        }
    }

    /// The buffer `memoryBandwidth` reads, to sample on demand.
    public func streamingRead() -> StreamingRead {
        StreamingRead(pool: pool, bytes: max(1 << 30, 8 * machine.lastLevelCacheBytes) / 4096 * 4096)
    }

    /// Sustained read bandwidth (bytes/s): the median of `reps` passes over
    /// `streamingRead()`'s buffer after one untimed pass.
    public func memoryBandwidth(reps: Int = 7) -> Double {
        let read = streamingRead()
        _ = read.sample()
        return Self.median((0..<reps).map { _ in read.sample() })
    }

    // MARK: - Multiply-add peak

    /// fp32 flops per second (median of reps) when every thread runs nothing
    /// but independent multiply-adds: the ceiling the products' GFLOP/s, and
    /// a training step's, can be read against.
    public func fmaPeak(reps: Int = 7) -> Double {
        let iterations: Int64 = 25_000_000
        var flops = 0.0, sink: Float = 0
        let lock = NSLock()
        var times: [Double] = []
        for rep in 0..<(reps + 1) {
            flops = 0
            let start = DispatchTime.now().uptimeNanoseconds
            pool.run(extent: threads, grain: 1, scratchFloats: 1) { range, _ in
                for _ in range {
                    var s: Float = 0
                    let f = qk_fma_probe(iterations, &s)
                    lock.lock()
                    flops += f
                    sink += s
                    lock.unlock()
                }
            }
            if rep > 0 { times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9) }
        }
        precondition(sink.isFinite, "[KernelBenchmark] multiply-add probe overflowed")
        return flops / Self.median(times)
    }

    fileprivate static func sum(_ p: UnsafePointer<SIMD8<UInt64>>, count: Int) -> UInt64 {
        var a = SIMD8<UInt64>(), b = SIMD8<UInt64>()
        var i = 0
        while i + 1 < count {
            a &+= p[i]
            b &+= p[i + 1]
            i += 2
        }
        if i < count { a &+= p[i] }
        return (a &+ b).wrappedSum()
    }

    // MARK: - Products

    /// Times every batch size and direction of one weight shape and spec.
    /// The scalar reference is timed for batch sizes up to `referenceUpTo`.
    public func measure(
        spec: QuantSpec, outFeatures: Int, inFeatures: Int, batchSizes: [Int], directions: [Direction],
        referenceUpTo: Int, progress: (Result) -> Void = { _ in }
    ) throws -> [Result] {
        let probe = Case(spec: spec, outFeatures: outFeatures, inFeatures: inFeatures, n: 1, direction: .forward)
        let packedCopies = Self.copies(of: probe.packedBytes, lastLevelCache: machine.lastLevelCacheBytes)
        let denseCopies = Self.copies(of: probe.fp32Bytes, lastLevelCache: machine.lastLevelCacheBytes)
        var rng = FastRandom(seed: 0x5eed)
        let layers = try (0..<packedCopies).map { i in
            try RandomPackedWeight(spec: spec, rows: outFeatures, cols: inFeatures, rng: &rng)
                .layer(name: "bench\(i)", pool: pool)
        }
        let dense = (0..<denseCopies).map { _ in rng.floats(outFeatures * inFeatures, scale: 0.05) }
        var results: [Result] = []
        for n in batchSizes {
            let x = rng.floats(n * max(inFeatures, outFeatures), scale: 1)
            var out = [Float](repeating: 0, count: n * max(inFeatures, outFeatures))
            for direction in directions {
                let c = Case(spec: spec, outFeatures: outFeatures, inFeatures: inFeatures, n: n, direction: direction)
                let result = x.withUnsafeBufferPointer { xb in
                    out.withUnsafeMutableBufferPointer { ob in
                        time(c, layers: layers, dense: dense, x: xb.baseAddress!, y: ob.baseAddress!,
                             reference: n <= referenceUpTo)
                    }
                }
                results.append(result)
                progress(result)
            }
        }
        return results
    }

    /// How many copies of a weight of `bytes` the timed calls rotate through:
    /// together more than 8 × the last-level cache (at most 64 copies). Less
    /// left part of a weight cached for its next call on a 32 MB victim L3
    /// (Zen 4), which a real model's weights never are: sgemv on 4096×4096
    /// read 41-47 GB/s over one 64 MB copy, 34-40 over two, 35-37 over four
    /// and eight, against a 36 GB/s streaming read.
    public static func copies(of bytes: Int, lastLevelCache: Int) -> Int {
        min(64, 8 * lastLevelCache / max(bytes, 1) + 1)
    }

    private func time(
        _ c: Case, layers: [PackedLinear], dense: [[Float]], x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
        reference: Bool
    ) -> Result {
        // OpenBLAS gets the threads for its baseline only: everything else in the
        // process (a decode benchmark's attention, say) runs it single-threaded
        // inside the pools' slices, as `ComputePool` sets it.
        openblas_set_num_threads(Int32(threads))
        defer { openblas_set_num_threads(1) }
        var copy = 0, denseCopy = 0
        func ours() {
            let layer = layers[copy % layers.count]
            copy += 1
            switch c.direction {
            case .forward: layer.forward(x, rows: c.n, into: y)
            case .backward: layer.backwardInput(x, rows: c.n, into: y, accumulate: false)
            }
        }
        func blas() {
            dense[denseCopy % dense.count].withUnsafeBufferPointer { w in
                Self.openBLAS(c, w: w.baseAddress!, x: x, y: y)
            }
            denseCopy += 1
        }
        func scalar() {
            let active = qk_isa_active()
            qk_isa_set(QK_ISA_SCALAR)
            ours()
            qk_isa_set(active)
        }
        func seconds(_ body: () -> Void) -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        // Warm-up (thread start-up, OpenBLAS buffers; every copy was written
        // when made, so its pages are in), then one timed probe of each to
        // size the reps.
        for _ in 0..<min(max(layers.count, dense.count, 2), 8) {
            ours()
            blas()
        }
        let probe = seconds(ours) + seconds(blas)
        let reps = Self.oddClamp(Int(targetSeconds * 2 / max(probe, 1e-9)), 5, 101)
        var refReps = 0
        if reference {
            let refProbe = seconds(scalar)
            refReps = Self.oddClamp(Int(targetSeconds / max(refProbe, 1e-9)), 3, reps)
        }
        // Interleaved in rounds of blocks, not rep by rep: after a call,
        // OpenBLAS's worker threads busy-wait for about 2^28 cycles before
        // sleeping, so a packed product started right after one shares a core
        // with them (measured: exactly half speed in about half the cases).
        // Each block of ours starts after that spin has run out.
        // At batch 1 the streaming read is sampled just before and after each
        // round of ours: the shared machine's bandwidth moves by tens of
        // percent within seconds, so each round is set against its own.
        if c.n == 1 && read == nil { read = streamingRead() }
        let bandwidth = c.n == 1 ? read : nil
        var tOurs: [Double] = [], tBLAS: [Double] = [], tRef: [Double] = []
        var paired: [Round] = []
        let rounds = bandwidth == nil ? 3 : Self.batchOneRounds
        for round in 0..<rounds {
            Thread.sleep(forTimeInterval: Self.openBLASSpinSeconds)
            let before = bandwidth?.sample()
            let times = (reps * round / rounds..<reps * (round + 1) / rounds).map { _ in seconds(ours) }
            tOurs += times
            if let bandwidth, let before { paired.append(Round(seconds: times, readBefore: before, readAfter: bandwidth.sample())) }
            for _ in (refReps * round / rounds)..<(refReps * (round + 1) / rounds) { tRef.append(seconds(scalar)) }
            for _ in (reps * round / rounds)..<(reps * (round + 1) / rounds) { tBLAS.append(seconds(blas)) }
        }
        return Result(
            benchCase: c, seconds: Self.median(tOurs), openBLASSeconds: Self.median(tBLAS),
            referenceSeconds: refReps > 0 ? Self.median(tRef) : nil,
            readBandwidth: paired.isEmpty ? nil : Self.median(paired.flatMap { [$0.readBefore, $0.readAfter] }),
            bandwidthFraction: paired.isEmpty ? nil : Self.bandwidthShare(bytes: c.packedBytes, rounds: paired))
    }

    /// Rounds of a batch-1 case, each with its own reads of the bandwidth.
    public static let batchOneRounds = 5

    /// One round of a batch-1 case: the packed kernel's call times and the
    /// streaming read (bytes/s) sampled just before and just after them.
    public struct Round: Sendable {
        public var seconds: [Double]
        public var readBefore: Double
        public var readAfter: Double

        public init(seconds: [Double], readBefore: Double, readAfter: Double) {
            self.seconds = seconds
            self.readBefore = readBefore
            self.readAfter = readAfter
        }
    }

    /// The median over rounds of (bytes ÷ the round's median call time) ÷
    /// the mean of the reads around it. A ratio of medians over the whole
    /// case would set calls timed in one of the host's fast spells against
    /// reads from a slow one (or the reverse): shares of 41-127 % in one run.
    public static func bandwidthShare(bytes: Int, rounds: [Round]) -> Double {
        median(rounds.map { r in Double(bytes) / median(r.seconds) / ((r.readBefore + r.readAfter) / 2) })
    }

    /// Longer than OpenBLAS's default thread time-out (2^28 cycles) at 2.5 GHz and up.
    static let openBLASSpinSeconds = 0.12

    /// The fp32 baseline: cblas_sgemv for one row, cblas_sgemm otherwise.
    private static func openBLAS(_ c: Case, w: UnsafePointer<Float>, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let n = Int32(c.n), o = Int32(c.outFeatures), i = Int32(c.inFeatures)
        switch (c.direction, c.n) {
        case (.forward, 1): cblas_sgemv(CblasRowMajor, CblasNoTrans, o, i, 1, w, i, x, 1, 0, y, 1)
        case (.backward, 1): cblas_sgemv(CblasRowMajor, CblasTrans, o, i, 1, w, i, x, 1, 0, y, 1)
        case (.forward, _): cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, o, i, 1, x, i, w, i, 0, y, o)
        case (.backward, _): cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, i, o, 1, x, o, w, i, 0, y, i)
        }
    }

    // MARK: - Helpers

    public static func median(_ values: [Double]) -> Double {
        let s = values.sorted()
        return s.isEmpty ? .nan : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    private static func oddClamp(_ v: Int, _ lo: Int, _ hi: Int) -> Int {
        let c = min(hi, max(lo, v))
        return c % 2 == 1 ? c : c + 1 <= hi ? c + 1 : c - 1
    }

    /// The first /proc/cpuinfo line starting with `key`, after its colon.
    private static func cpuInfo(_ key: String) -> String? {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in info.split(separator: "\n") where line.hasPrefix(key) {
            if let colon = line.firstIndex(of: ":") {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }

    private static func cpuName() -> String { cpuInfo("model name") ?? "unknown CPU" }

    private static func cpuFlags() -> Set<Substring> { Set((cpuInfo("flags") ?? "").split(separator: " ")) }

    private static func isaName(_ isa: qk_isa, cpuFlags: Set<Substring>) -> String {
        switch isa {
        case QK_ISA_AVX2:
            !cpuFlags.contains("avx512f") ? "AVX2+FMA"
                : cpuFlags.contains("avx512vbmi") ? "AVX2+FMA, AVX-512F products, AVX-512 VBMI scale decoding"
                : "AVX2+FMA, AVX-512F products"
        case QK_ISA_NEON: "NEON"
        default: "scalar"
        }
    }

    private static func openBLASName() -> String {
        let config = openblas_get_config().map { String(cString: $0) } ?? "OpenBLAS"
        let core = openblas_get_corename().map { String(cString: $0) } ?? "?"
        return "\(config.trimmingCharacters(in: .whitespaces)) (core \(core))"
    }

    private static func lastLevelCacheBytes() -> Int {
        for index in (0...4).reversed() {
            let path = "/sys/devices/system/cpu/cpu0/cache/index\(index)/size"
            guard let s = try? String(contentsOfFile: path, encoding: .utf8) else { continue }
            let t = s.trimmingCharacters(in: .whitespacesAndNewlines)
            if t.hasSuffix("K"), let v = Int(t.dropLast()) { return v << 10 }
            if t.hasSuffix("M"), let v = Int(t.dropLast()) { return v << 20 }
            if let v = Int(t) { return v }
        }
        return 32 << 20
    }
}

/// Packed weights with random codes and plausible scales: kernel speed does
/// not depend on the values, and quantizing gigabytes of fp32 would dominate
/// a benchmark run.
public struct RandomPackedWeight {
    let buffers: RandomBuffers
    let view: qk_packed

    /// In huge pages where the system has them, as checkpoints are mapped.
    final class RandomBuffers {
        let storage: AlignedBuffer
        var bytes: UnsafeMutableRawBufferPointer { storage.mutableBytes }
        init(count: Int) { storage = .required(max(count, 64), hugePages: true, for: "KernelBenchmark") }
    }

    public init(spec: QuantSpec, rows: Int, cols: Int, rng: inout FastRandom) {
        let layout = PackedLayout(spec: spec, count: rows * cols)
        let groups = spec.scaleKind == .dq8 ? (layout.blocks + QuantSpec.doubleQuantGroup - 1) / QuantSpec.doubleQuantGroup : 0
        let scaleOffset = (layout.codeBytes + 63) / 64 * 64
        let groupOffset = scaleOffset + (layout.scaleBytes + 63) / 64 * 64
        buffers = RandomBuffers(count: groupOffset + groups * 4)
        let base = buffers.bytes.baseAddress!
        rng.fill(UnsafeMutableRawBufferPointer(start: base, count: layout.codeBytes))
        let scales = rng.floats(layout.blocks, scale: 0.02).map { abs($0) + 0.01 }
        switch spec.scaleKind {
        case .f32: scales.withUnsafeBytes { (base + scaleOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        case .f16: qk_f32_to_f16((base + scaleOffset).assumingMemoryBound(to: UInt16.self), scales, Int64(layout.blocks))
        case .dq8:
            rng.fill(UnsafeMutableRawBufferPointer(start: base + scaleOffset, count: layout.blocks))
            let g = (base + groupOffset).assumingMemoryBound(to: Float.self)
            for i in 0..<groups { g[i] = 0.01 }
        }
        view = qk_packed(
            spec: spec, rows: rows, cols: cols, codes: UnsafeRawPointer(base), scales: UnsafeRawPointer(base + scaleOffset),
            groupScales: groups > 0 ? UnsafeRawPointer(base + groupOffset) : nil, offset: 0.03)
    }

    /// A layer over these bytes (the layer keeps them alive).
    public func layer(name: String, pool: ComputePool) throws -> PackedLinear {
        try PackedLinear(view: view, owner: buffers, name: name, pool: pool)
    }
}

/// xorshift64*: fast bulk random data for benchmarks (not for statistics).
public struct FastRandom {
    private var state: UInt64

    public init(seed: UInt64) { state = seed | 1 }

    public mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }

    public mutating func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        var i = 0
        while i + 8 <= buffer.count {
            buffer.storeBytes(of: next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < buffer.count {
            buffer[i] = UInt8(truncatingIfNeeded: next())
            i += 1
        }
    }

    /// Uniform in [-scale, scale).
    public mutating func floats(_ count: Int, scale: Float) -> [Float] {
        (0..<count).map { _ in (Float(next() >> 40) / Float(1 << 24) * 2 - 1) * scale }
    }
}
