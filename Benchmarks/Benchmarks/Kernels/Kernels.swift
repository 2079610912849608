// The packed products on real Llama projection shapes (4096×4096, 11008×4096,
// 4096×11008, 2048×2048) at batch sizes 1, 8, 64 and 512, forward and
// backward, NF4 blocks of 64 with double quantization (QLoRA's format).
// Besides wall clock and CPU time, each benchmark reports MFLOP/s and MB/s
// of packed bytes read. The weights are random codes: speed does not depend on
// the values; a separate group checks that the kernels allocate nothing.
// `qlora bench kernels` is the side-by-side comparison with
// OpenBLAS; this suite tracks regressions over time.
import Benchmark
import Dispatch
import QLoRAKit

/// One layer and its activations, built before measurement starts.
final class KernelState: @unchecked Sendable {
    let layer: PackedLinear
    let n: Int
    let backward: Bool
    let x: UnsafeMutableBufferPointer<Float>
    let y: UnsafeMutableBufferPointer<Float>

    init(spec: QuantSpec, out: Int, in inFeatures: Int, n: Int, backward: Bool) throws {
        var rng = FastRandom(seed: 42)
        layer = try RandomPackedWeight(spec: spec, rows: out, cols: inFeatures, rng: &rng)
            .layer(name: "bench", pool: .shared)
        self.n = n
        self.backward = backward
        let width = max(out, inFeatures)
        x = .allocate(capacity: n * width)
        y = .allocate(capacity: n * width)
        for (i, v) in rng.floats(n * width, scale: 1).enumerated() { x[i] = v }
    }

    func run() {
        if backward {
            layer.backwardInput(x.baseAddress!, rows: n, into: y.baseAddress!, accumulate: false)
        } else {
            layer.forward(x.baseAddress!, rows: n, into: y.baseAddress!)
        }
    }

    deinit {
        x.deallocate()
        y.deallocate()
    }
}

let throughputMetric = BenchmarkMetric.custom("MFLOP/s", polarity: .prefersLarger, useScalingFactor: false)
let bandwidthMetric = BenchmarkMetric.custom("MB/s packed", polarity: .prefersLarger, useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    let spec = QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8)
    // The kernels must not allocate. Only the malloc counter runs here: the
    // time and CPU metrics allocate inside the benchmark harness itself.
    for (n, backward) in [(1, false), (1, true), (64, false), (64, true)] {
        Benchmark(
            "allocations n=\(n) \(backward ? "backward" : "forward")",
            configuration: .init(
                metrics: [.mallocCountTotal], maxIterations: 50,
                thresholds: [.mallocCountTotal: .init(absolute: [.p100: 0])])
        ) { benchmark, state in
            for _ in benchmark.scaledIterations { state.run() }
        } setup: {
            try KernelState(spec: spec, out: 2048, in: 2048, n: n, backward: backward)
        }
    }
    let shapes = [(4096, 4096), (11008, 4096), (4096, 11008), (2048, 2048)]
    for (out, inFeatures) in shapes {
        for n in [1, 8, 64, 512] {
            for backward in [false, true] {
                let flops = 2.0 * Double(n * out * inFeatures)
                let bytes = Double(PackedLayout(spec: spec, count: out * inFeatures).totalBytes)
                Benchmark(
                    "\(spec) \(out)x\(inFeatures) n=\(n) \(backward ? "backward" : "forward")",
                    configuration: .init(
                        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, throughputMetric, bandwidthMetric],
                        warmupIterations: 2,
                        maxDuration: .seconds(2),
                        maxIterations: n >= 64 ? 20 : 200
                    )
                ) { benchmark, state in
                    let start = DispatchTime.now().uptimeNanoseconds
                    var count = 0
                    for _ in benchmark.scaledIterations {
                        state.run()
                        count += 1
                    }
                    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 / Double(max(count, 1))
                    benchmark.measurement(throughputMetric, Int(flops / seconds / 1e6))
                    benchmark.measurement(bandwidthMetric, Int(bytes / seconds / 1e6))
                    blackHole(state.y[0])
                } setup: {
                    try KernelState(spec: spec, out: out, in: inFeatures, n: n, backward: backward)
                }
            }
        }
    }
}
