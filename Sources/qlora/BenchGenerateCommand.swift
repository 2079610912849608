import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora bench generate [--json]`: decode tokens/s of packed ~1B models next
/// to the memory-bandwidth bound. The measuring is `GenerationBenchmark`'s.
struct BenchGenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Decode speed of random ~1.1B-parameter Llama models packed NF4 and int8, against the memory-bandwidth bound.",
        discussion: """
        Each model (TinyLlama's shape, random weights, every linear and the embeddings quantized) is written \
        to a temporary folder and deleted afterwards. The bound is the streaming read bandwidth, measured in \
        the same process on all cores over a buffer larger than the last-level cache, divided by the bytes \
        one decode step reads (packed weights, norms and the KV cache). The read is sampled between the \
        decoding rounds and the median sets the bound; samples far apart mean the machine's bandwidth moved \
        during the run, and the fraction of the bound with it.
        """
    )

    @Option(name: .customLong("prompt-tokens"), help: "Random prompt tokens prefilled before decoding.")
    var promptTokens = 32

    @Option(name: .customLong("decode-tokens"), help: "Tokens decoded and timed.")
    var decodeTokens = 32

    @Option(name: .customLong("layers"), help: "Decoder layers (22 gives ~1.1B parameters; fewer for a quick run).")
    var layers = GenerationBenchmark.billionParameterLlama.hiddenLayers

    @Flag(help: "Print the report as one JSON object.")
    var json = false

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        guard promptTokens > 0, decodeTokens > 0, layers > 0 else {
            throw ValidationError("--prompt-tokens, --decode-tokens and --layers must be positive")
        }
    }

    func run() throws {
        try compute.apply()
        var options = GenerationBenchmark.Options()
        options.promptTokens = promptTokens
        options.decodeTokens = decodeTokens
        options.configuration.hiddenLayers = layers
        let report = try GenerationBenchmark.run(options) { line in
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            FileHandle.standardOutput.write(try encoder.encode(report))
            print()
            return
        }
        print(String(format: "model: %.2fB parameters; %@, %d threads, kernels %@, LLC %@; load average %@ at start, %@ at end",
                     Double(report.parameters) / 1e9, report.cpu, report.threads, report.isa,
                     Format.bytes(report.lastLevelCacheBytes), report.loadAverageStart, report.loadAverageEnd))
        for c in report.cases {
            print(String(format: "%@: file %@, %@ read per token; prefill %.1f tokens/s; decode %.2f tokens/s, %.0f%% of a %.2f bound (median read %.1f GB/s, samples %.1f–%.1f); VmRSS %@, VmHWM %@",
                         c.spec, Format.bytes(c.fileBytes), Format.bytes(c.weightBytesPerToken + c.kvBytesPerToken),
                         c.prefillTokensPerSecond, c.decodeTokensPerSecond, 100 * c.fractionOfBound, c.boundTokensPerSecond,
                         c.readBandwidthBytesPerSecond / 1e9, c.readBandwidthMinBytesPerSecond / 1e9,
                         c.readBandwidthMaxBytesPerSecond / 1e9,
                         c.residentBytes.map(Format.bytes) ?? "?", c.peakResidentBytes.map(Format.bytes) ?? "?"))
        }
    }
}
