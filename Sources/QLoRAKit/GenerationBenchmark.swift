import Dispatch
import Foundation

/// `qlora bench generate`: decode speed of packed models of realistic shape
/// next to what memory bandwidth allows.
///
/// Decoding one token reads every weight once (and the KV cache so far), and
/// at batch 1 the products are bound by that read, not by arithmetic. So the
/// bound on tokens per second is the read bandwidth over the bytes one token
/// reads; the benchmark measures that bandwidth in the same process with a
/// streaming read of a buffer much larger than the last-level cache, on all
/// cores as decoding uses them, and reports the fraction of the bound that
/// decoding achieves.
///
/// The models have random weights (speed does not depend on the values) and
/// are written straight to packed files in a temporary folder, every linear,
/// the embedding and the output head quantized (as `qlora quantize
/// --quantize-embeddings` would), norms in F32.
public enum GenerationBenchmark {
    /// TinyLlama-1.1B's shape: hidden 2048, MLP 5632, 22 layers, 32 query
    /// heads over 4 kv heads, vocabulary 32000, untied output head.
    public static let billionParameterLlama = LlamaConfiguration(
        hiddenSize: 2048, intermediateSize: 5632, hiddenLayers: 22, attentionHeads: 32, kvHeads: 4,
        vocabularySize: 32000, maxPositionEmbeddings: 2048, rmsNormEps: 1e-5)

    /// Decoding rounds, each followed by two bandwidth samples.
    public static let rounds = 4

    public struct Options: Sendable {
        public var configuration = GenerationBenchmark.billionParameterLlama
        public var specs = [QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8), QuantSpec(type: .int8, blockSize: 64, scaleKind: .dq8)]
        /// Random prompt tokens prefilled before decoding.
        public var promptTokens = 32
        /// Tokens decoded and timed (after an untimed warm-up of a few), in `rounds`.
        public var decodeTokens = 32
        public var seed: UInt64 = 1
        public init() {}
    }

    /// One packed model's figures.
    public struct Case: Sendable, Codable {
        public var spec: String
        public var fileBytes: Int
        /// Weights one decode step reads: every linear (packed or fp32), norms.
        public var weightBytesPerToken: Int
        /// KV cache one decode step reads, at the mean position of the timed tokens.
        public var kvBytesPerToken: Int
        public var prefillTokensPerSecond: Double
        public var decodeTokens: Int
        public var decodeTokensPerSecond: Double
        /// Streaming read bandwidth: the median of samples taken between the decoding rounds
        /// (`KernelBenchmark.StreamingRead`).
        public var readBandwidthBytesPerSecond: Double
        /// The lowest and highest of those samples: far apart, the bound moved
        /// during the run (a shared machine's spells), and so does the fraction.
        public var readBandwidthMinBytesPerSecond: Double
        public var readBandwidthMaxBytesPerSecond: Double
        /// read bandwidth ÷ (weight + KV bytes per token)
        public var boundTokensPerSecond: Double
        public var fractionOfBound: Double
        /// VmRSS after decoding, and VmHWM from loading the model to then.
        public var residentBytes: Int?
        public var peakResidentBytes: Int?
        public var writeSeconds: Double
    }

    public struct Report: Sendable, Codable {
        public var parameters: Int
        public var cpu: String
        /// The kernels' instruction set.
        public var isa: String
        public var threads: Int
        public var lastLevelCacheBytes: Int
        /// /proc/loadavg's 1/5/15-minute figures before and after: other work on the machine.
        public var loadAverageStart: String
        public var loadAverageEnd: String
        public var cases: [Case]
    }

    /// Writes the models in a temporary folder (removed afterwards), then
    /// measures each. `log` gets a line per phase.
    public static func run(_ options: Options, log: (String) -> Void = { _ in }) throws -> Report {
        let kernels = KernelBenchmark(threads: ComputePool.shared.threadCount)
        let machine = kernels.machine
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let c = options.configuration
        var cases: [Case] = []
        for spec in options.specs {
            let url = directory.appendingPathComponent("\(spec.type)-\(spec.blockSize)-\(spec.scaleKind.rawValue).qlora")
            log("writing a random \(c.hiddenLayers)-layer model packed as \(spec)")
            let written = ContinuousClock.now
            try writeRandomModel(c, spec: spec, to: url, seed: options.seed)
            let writeSeconds = (ContinuousClock.now - written) / .seconds(1)
            ResidentMemory.resetPeak() // the peak then covers this model alone, not the buffer or the writing
            let loaded = try LoadedModel(contentsOf: url)
            let model = loaded.model
            var generator = SplitMix64(seed: options.seed)
            let prompt = (0..<options.promptTokens).map { _ in Int32(generator.next() % UInt64(c.vocabularySize)) }
            var sampler = try Sampler(temperature: 0)
            // The decode is timed in rounds (each from the prompt again), with
            // read-bandwidth samples between them: on a shared machine the
            // bandwidth moves by tens of percent within seconds, and the bound
            // must be measured in the same spells as the decoding it is set against.
            let rounds = min(Self.rounds, options.decodeTokens), perRound = options.decodeTokens / rounds
            let cache = try KVCache(model: model, capacity: options.promptTokens + perRound + 1)
            log("decoding \(rounds * perRound) tokens (\(rounds) rounds) after a \(options.promptTokens)-token prompt, sampling read bandwidth on \(machine.threads) threads between rounds")
            // The first passes fault the mapped pages in; they are not timed.
            _ = try model.generate(prompt: prompt, maxTokens: 3, sampler: &sampler, cache: cache)
            var timed = [try model.generate(prompt: prompt, maxTokens: perRound + 1, sampler: &sampler, cache: cache)]
            // Before the bandwidth buffer exists: the model's own footprint.
            let memory = ResidentMemory.sample()
            let read = kernels.streamingRead()
            _ = read.sample()
            var samples = [read.sample(), read.sample()]
            for _ in 1..<rounds {
                timed.append(try model.generate(prompt: prompt, maxTokens: perRound + 1, sampler: &sampler, cache: cache))
                samples += [read.sample(), read.sample()]
            }
            let bandwidth = KernelBenchmark.median(samples)
            let decodeSteps = timed.reduce(0) { $0 + $1.decodeSteps }, decodeSeconds = timed.reduce(0) { $0 + $1.decodeSeconds }
            let decodeRate = Double(decodeSteps) / decodeSeconds
            let prefillRate = Double(timed.reduce(0) { $0 + $1.promptTokens }) / timed.reduce(0) { $0 + $1.promptSeconds }

            let weights = weightBytesPerToken(model)
            let meanPosition = options.promptTokens + perRound / 2
            let kv = 2 * c.hiddenLayers * meanPosition * c.kvHeads * c.headDimensions * 4
            let bound = bandwidth / Double(weights + kv)
            cases.append(Case(spec: spec.description, fileBytes: loaded.weightFileBytes, weightBytesPerToken: weights,
                              kvBytesPerToken: kv, prefillTokensPerSecond: prefillRate,
                              decodeTokens: decodeSteps, decodeTokensPerSecond: decodeRate,
                              readBandwidthBytesPerSecond: bandwidth, readBandwidthMinBytesPerSecond: samples.min()!,
                              readBandwidthMaxBytesPerSecond: samples.max()!, boundTokensPerSecond: bound, fractionOfBound: decodeRate / bound,
                              residentBytes: memory.current, peakResidentBytes: memory.peak, writeSeconds: writeSeconds))
            try? FileManager.default.removeItem(at: url)
        }
        let parameters = c.tensorInventory.filter { !(c.tieWordEmbeddings && $0.kind == .outputHead) }
            .reduce(0) { $0 + $1.shape.reduce(1, *) }
        return Report(parameters: parameters, cpu: machine.cpu, isa: machine.isa, threads: machine.threads,
                      lastLevelCacheBytes: machine.lastLevelCacheBytes,
                      loadAverageStart: machine.loadAverage, loadAverageEnd: KernelBenchmark.loadAverage(), cases: cases)
    }

    /// Bytes of weights a single-token forward pass reads: every projection's
    /// base (packed bytes, or 4 per fp32 weight) and the norms.
    public static func weightBytesPerToken(_ model: LlamaModel) -> Int {
        let c = model.configuration
        let linears = model.projections.reduce(0) { total, p in
            total + ((p.base as? PackedLinear)?.packedBytes ?? p.inFeatures * p.outFeatures * 4)
        }
        return linears + (2 * c.hiddenLayers + 1) * c.hiddenSize * 4
    }

    /// A packed checkpoint of configuration `c` with uniform random weights
    /// (std 0.02), quantized with `spec` chunk by chunk on all cores.
    public static func writeRandomModel(_ c: LlamaConfiguration, spec: QuantSpec, to url: URL, seed: UInt64) throws {
        let writer = try PackedCheckpointWriter(url: url, configJSON: try JSONEncoder().encode(c),
                                                metadata: ["producer": "qlora bench generate", "quantization": spec.description])
        for (index, tensor) in c.tensorInventory.enumerated() where !(c.tieWordEmbeddings && tensor.kind == .outputHead) {
            if tensor.kind.isNorm {
                let ones = [Float](repeating: 1, count: tensor.shape.reduce(1, *))
                try ones.withUnsafeBytes { try writer.add(name: tensor.name, dtype: .F32, shape: tensor.shape, bytes: $0) }
                continue
            }
            let encoder = try BlockEncoder(spec: spec, shape: tensor.shape)
            let count = encoder.layout.count, chunk = 1 << 18
            let chunks = (count + chunk - 1) / chunk
            DispatchQueue.concurrentPerform(iterations: chunks) { i in
                let range = (i * chunk)..<min(count, (i + 1) * chunk)
                var generator = SplitMix64(seed: seed ^ UInt64(index) << 32 ^ UInt64(i))
                // Uniform on ±0.02·√3: standard deviation 0.02, like an initialized Llama.
                let scale = Float(0.02 * 3.0.squareRoot()) / Float(Int32.max)
                let values = (0..<range.count).map { _ in Float(Int32(truncatingIfNeeded: generator.next() >> 32)) * scale }
                values.withUnsafeBufferPointer { encoder.encode($0, at: range.lowerBound) }
            }
            try writer.add(encoder.finish(), name: tensor.name)
        }
        try writer.finish()
    }
}
