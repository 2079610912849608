import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora bench`: measurements on this machine.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the engine on this machine.",
        subcommands: [BenchKernels.self, BenchGenerateCommand.self, BenchTrainCommand.self, BenchAccuracyCommand.self]
    )
}

/// `qlora bench kernels`: the packed products against OpenBLAS on fp32
/// weights, the scalar reference and the memory bandwidth, in one process.
struct BenchKernels: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Time the packed GEMV/GEMM kernels against OpenBLAS fp32, the scalar reference and memory bandwidth.",
        discussion: """
            Real Llama projection shapes (4096×4096, 11008×4096, 4096×11008, 2048×2048) at batch sizes \
            1, 8, 64 and 512, forward (Y = X·Wᵀ) and backward (dX = dY·W). Methods run interleaved \
            after a warm-up; times are medians. The default run (NF4/64 with double quantization \
            everywhere, int4, int8 and fp4 at batch 1) takes a few minutes; --full times every type \
            and block size and takes much longer.
            """
    )

    @Flag(help: "Print a JSON array of records instead of the table (machine details go to stderr).")
    var json = false

    @Flag(help: "Every type, block size 32–256, f32 and dq8 scales, and the scalar reference at every batch size.")
    var full = false

    @Option(help: "Threads for the packed kernels and OpenBLAS (default: every CPU).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(help: "Weight shapes to time instead of the defaults, OUTxIN, comma-separated (e.g. 4096x4096,11008x4096).")
    var shapes: String?

    @Option(help: "Batch sizes to time instead of the defaults, comma-separated (e.g. 1,512).")
    var batch: String?

    static let llamaShapes = [(4096, 4096), (11008, 4096), (4096, 11008), (2048, 2048)]
    static let batchSizes = [1, 8, 64, 512]

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        _ = try shapeFilter()
        _ = try batchFilter()
    }

    private func shapeFilter() throws -> [(Int, Int)]? {
        try shapes.map { list in
            try list.split(separator: ",").map { item in
                let parts = item.split(separator: "x").compactMap { Int($0) }
                guard parts.count == 2, parts[0] > 0, parts[1] > 0 else {
                    throw ValidationError("--shapes: '\(item)' is not OUTxIN, e.g. 4096x11008")
                }
                return (parts[0], parts[1])
            }
        }
    }

    private func batchFilter() throws -> [Int]? {
        try batch.map { list in
            try list.split(separator: ",").map { item in
                guard let n = Int(item), n > 0 else { throw ValidationError("--batch: '\(item)' is not a positive integer") }
                return n
            }
        }
    }

    func run() throws {
        let bench = KernelBenchmark(threads: threads)
        let m = bench.machine
        let bandwidth = bench.memoryBandwidth(), peak = bench.fmaPeak()
        let header = """
            qlora bench kernels: \(m.cpu), \(m.logicalCPUs) logical CPUs, \(m.threads) threads, kernels \(m.isa)
            OpenBLAS: \(m.openBLAS), \(m.threads) threads; last-level cache \(m.lastLevelCacheBytes >> 20) MiB
            load average at start: \(m.loadAverage)
            memory read bandwidth (streaming \(max(1024, 8 * (m.lastLevelCacheBytes >> 20))) MiB, \(m.threads) threads): \
            \(String(format: "%.1f", bandwidth / 1e9)) GB/s at start; each batch-1 row's %BW is the median over its \
            \(KernelBenchmark.batchOneRounds) rounds of the round's rate against the same read sampled just before and \
            after it
            fp32 multiply-add peak (\(m.threads) threads, nothing but independent FMAs): \(String(format: "%.0f", peak / 1e9)) GFLOP/s
            """
        if json { FileHandle.standardError.write(Data((header + "\n").utf8)) } else { print(header + "\n" + Self.tableHeader) }

        var records: [[String: Any]] = []
        for plan in try plans() {
            for (out, inFeatures) in plan.shapes {
                let results = try bench.measure(
                    spec: plan.spec, outFeatures: out, inFeatures: inFeatures, batchSizes: plan.batchSizes,
                    directions: KernelBenchmark.Direction.allCases, referenceUpTo: full ? Int.max : 8
                ) { r in
                    if !json { print(Self.row(r)) }
                }
                records += results.map(Self.record)
            }
        }
        let end = "load average at end: \(KernelBenchmark.loadAverage())"
        if json {
            let data = try JSONSerialization.data(withJSONObject: records, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
            FileHandle.standardError.write(Data((end + "\n").utf8))
        } else {
            print(end)
        }
    }

    /// Which specs run on which shapes and batch sizes (--shapes and --batch replace them).
    private func plans() throws -> [(spec: QuantSpec, shapes: [(Int, Int)], batchSizes: [Int])] {
        let all: [(spec: QuantSpec, shapes: [(Int, Int)], batchSizes: [Int])]
        if full {
            all = QuantType.allCases.flatMap { type in
                QuantSpec.blockSizes.flatMap { block in
                    [ScaleKind.f32, .dq8].map {
                        (QuantSpec(type: type, blockSize: block, scaleKind: $0), Self.llamaShapes, Self.batchSizes)
                    }
                }
            }
        } else {
            let decode = Array(Self.llamaShapes.prefix(2))
            all = [
                (QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8), Self.llamaShapes, Self.batchSizes),
                (QuantSpec(type: .int4, blockSize: 64, scaleKind: .dq8), decode, [1]),
                (QuantSpec(type: .int8, blockSize: 64, scaleKind: .f32), decode, [1]),
                (QuantSpec(type: .fp4, blockSize: 64, scaleKind: .dq8), decode, [1]),
            ]
        }
        let shapes = try shapeFilter(), batchSizes = try batchFilter()
        return all.map { plan in (plan.spec, shapes ?? plan.shapes, batchSizes ?? plan.batchSizes) }
    }

    static let tableHeader = """
        spec          out×in      n  dir   | ours ms   GFLOP/s  GB/s   %BW  | OpenBLAS ms  GFLOP/s  GB/s  | ×OpenBLAS | ref ms    ×ref
        """

    static func row(_ r: KernelBenchmark.Result) -> String {
        let c = r.benchCase
        let spec = "\(c.spec.type)/\(c.spec.blockSize)/\(c.spec.scaleKind.rawValue)"
        let pct = r.bandwidthFraction.map { String(format: "%4.0f%%", 100 * $0) } ?? "   - "
        let ref = r.referenceSeconds.map { String(format: "%9.2f %6.1f", $0 * 1e3, $0 / r.seconds) } ?? "        -      -"
        return String(
            format: "%-13@ %5d×%-5d %4d %-4@ | %8.3f %8.1f %6.1f %@ | %11.3f %8.1f %5.1f | %9.2f | %@",
            spec, c.outFeatures, c.inFeatures, c.n, c.direction == .forward ? "fwd" : "bwd", r.seconds * 1e3,
            r.gflops, r.gbps, pct, r.openBLASSeconds * 1e3, r.openBLASGFlops, r.openBLASGBps, r.ratioVsOpenBLAS, ref)
    }

    static func record(_ r: KernelBenchmark.Result) -> [String: Any] {
        let c = r.benchCase
        return [
            "type": c.spec.type.rawValue,
            "block_size": c.spec.blockSize,
            "double_quant": c.spec.scaleKind == .dq8,
            "scales": c.spec.scaleKind.rawValue,
            "out": c.outFeatures,
            "in": c.inFeatures,
            "n": c.n,
            "direction": c.direction.rawValue,
            "median_seconds": r.seconds,
            "gflops": r.gflops,
            "gbps": r.gbps,
            "ratio_vs_openblas": r.ratioVsOpenBLAS,
            "openblas_median_seconds": r.openBLASSeconds,
            "reference_median_seconds": r.referenceSeconds.map { $0 as Any } ?? NSNull(),
            "bandwidth_fraction": r.bandwidthFraction.map { $0 as Any } ?? NSNull(),
            "read_bandwidth_gbps": r.readBandwidth.map { $0 / 1e9 as Any } ?? NSNull(),
        ]
    }
}
