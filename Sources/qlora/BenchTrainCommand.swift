import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora bench train --model PATH`: the training step of `qlora train` on random
/// tokens, timed the way Benchmarks/hf_train_baseline.py times transformers + PEFT
/// (batch 4 × 256, labels = inputs, LoRA r=16 alpha 32 on every projection, AdamW
/// lr 1e-4; the median of 5 steps after 2 warm-ups), so the two can be compared.
struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Time LoRA/QLoRA training steps on random tokens (tokens/s, peak resident memory).",
        discussion: """
            MODEL is a packed checkpoint (QLoRA) or a Hugging Face folder (fp32 LoRA); no tokenizer is needed. \
            Run it under /usr/bin/time -v for the process's peak RSS as an outside tool sees it.
            """
    )

    @Option(help: "A packed checkpoint (QLoRA) or a Hugging Face folder (fp32 LoRA).")
    var model: String

    @Option(help: "Sequences per step.")
    var batch = 4

    @Option(help: "Tokens per sequence.")
    var length = 256

    @Option(help: "LoRA rank (alpha is twice the rank).")
    var rank = 16

    @Option(help: "LoRA dropout on the adapters' input, in [0, 1).")
    var dropout: Float = 0

    @OptionGroup var adapted: AdaptedModules

    @Option(help: "Steps before timing starts.")
    var warmup = 2

    @Option(help: "Steps timed.")
    var steps = 5

    @Flag(name: .customLong("grad-checkpoint"), help: "Gradient checkpointing.")
    var gradCheckpoint = false

    @Flag(help: "Print one JSON object.")
    var json = false

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        guard batch >= 1, length >= 2, rank >= 1, warmup >= 0, steps >= 1, (0..<1).contains(dropout) else {
            throw ValidationError("--batch, --rank and --steps must be at least 1, --length at least 2, --warmup not negative, --dropout in [0, 1)")
        }
    }

    func run() throws {
        try compute.apply()
        let loaded = try LoadedModel(contentsOf: URL(fileURLWithPath: model))
        let llama = loaded.model
        let afterLoad = ResidentMemory.sample()
        let lora = LoRAConfiguration(rank: rank, alpha: Float(2 * rank), targetModules: try adapted.modules(),
                                     dropout: dropout, layers: try adapted.layerList())
        let estimate = Trainer.memoryPlan(model: llama, configuration: TrainingConfiguration(
            lora: lora, batchSize: batch, gradientCheckpointing: gradCheckpoint), sequenceLength: length).estimate()
        var random = Xoshiro256(seed: 0)
        try llama.attachLoRA(lora, using: &random)
        llama.gradientCheckpointing = gradCheckpoint
        let optimizer = try AdapterOptimizer(model: llama, schedule: .constant, peakLearningRate: 1e-4, weightDecay: 0.01,
                                             maxGradientNorm: nil)
        // Uniform ids in 4..<V, as the Python baseline draws them; every position predicts the next.
        let v = llama.configuration.vocabularySize, n = batch * length
        let ids = (0..<n).map { _ in Int32(4 + random.next(below: v - 4)) }
        var targets = [Int32](repeating: TrainingExample.ignoreIndex, count: n)
        for b in 0..<batch { for t in 0..<(length - 1) { targets[b * length + t] = ids[b * length + t + 1] } }
        let rows = TrainingBatch(rows: batch, columns: length, inputIDs: ids, targets: targets,
                                 positionIDs: (0..<n).map { Int32($0 % length) }, sequenceIDs: [Int32](repeating: 1, count: n),
                                 exampleCount: batch)
        var times: [Double] = [], losses: [Double] = []
        for i in 0..<(warmup + steps) {
            let start = DispatchTime.now().uptimeNanoseconds
            let result = try optimizer.step([rows], dropoutSeeds: [UInt64(i)])
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            losses.append(result.loss)
            if i >= warmup { times.append(seconds) }
            if !json {
                FileHandle.standardError.write(Data(String(format: "step %d%@: %.3f s, loss %.4f\n", i + 1, i < warmup ? " (warm-up)" : "", seconds, result.loss).utf8))
            }
        }
        let median = times.sorted()[times.count / 2]
        let memory = ResidentMemory.sample()
        // The step's unavoidable products against what the cores can do at all, measured after the steps.
        let floor = llama.trainingFloorFlopsPerToken * Double(n) / median
        let peak = KernelBenchmark(threads: ComputePool.shared.threadCount).fmaPeak()
        let record: [String: Any] = [
            "model": loaded.url.path, "format": loaded.format.rawValue, "base": TrainingReporter.packedSpec(llama) ?? "fp32",
            "batch": batch, "length": length, "rank": rank, "dropout": dropout, "targets": lora.targetModules, "layers": lora.layers ?? NSNull(),
            "gradient_checkpointing": gradCheckpoint,
            "trainable_parameters": optimizer.parameters.count, "step_seconds": times, "median_step_seconds": median,
            "tokens_per_second": Double(n) / median, "losses": losses,
            "rss_after_load_bytes": afterLoad.current ?? NSNull(), "peak_rss_bytes": memory.peak ?? NSNull(),
            "memory_estimate_bytes": estimate.total,
            "floor_flops_per_token": llama.trainingFloorFlopsPerToken, "floor_flops_per_second": floor,
            "fma_peak_flops_per_second": peak,
            "threads": ComputePool.shared.threadCount,
            "load_average": (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").first.map(String.init) ?? NSNull(),
        ]
        if json {
            FileHandle.standardOutput.write(try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]))
            print()
        } else {
            print(String(format: "%@ base, batch %d × %d, LoRA r=%d%@ on %@ of %@ (%d parameters): median step %.3f s, %.0f tokens/s, peak RSS %@ (estimate %@)",
                         TrainingReporter.packedSpec(llama) ?? "fp32", batch, length, rank,
                         dropout > 0 ? ", dropout \(dropout)" : "", adapted.targets,
                         adapted.layers.map { "layers \($0)" } ?? "every layer", optimizer.parameters.count, median,
                         Double(n) / median, memory.peak.map(Format.bytes) ?? "unknown", Format.bytes(estimate.total)))
            print(String(format: "frozen products no step can skip (%.1f MFLOP per token): %.0f GFLOP/s, %.0f%% of this machine's fp32 multiply-add peak (%.0f GFLOP/s, %d threads)",
                         llama.trainingFloorFlopsPerToken / 1e6, floor / 1e9, 100 * floor / peak, peak / 1e9,
                         ComputePool.shared.threadCount))
        }
    }
}
