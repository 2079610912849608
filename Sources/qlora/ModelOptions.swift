import ArgumentParser
import Foundation
import QLoRAKit

/// --model and --adapter, shared by the commands that run a model.
struct ModelOptions: ParsableArguments {
    @Option(help: "A Hugging Face model folder or a packed checkpoint (from `qlora quantize`).")
    var model: String

    @Option(help: "A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) to apply.")
    var adapter: String?

    /// The model with the adapter attached.
    func load() throws -> LoadedModel {
        let loaded = try LoadedModel(contentsOf: URL(fileURLWithPath: model))
        if let adapter {
            do {
                try loaded.model.loadLoRA(directory: URL(fileURLWithPath: adapter))
            } catch let error as ModelError {
                throw ValidationFailure("the adapter \(adapter) does not fit the model \(model) (made for another base?): \(error.localizedDescription)")
            }
        }
        return loaded
    }
}

/// Which projections get adapters (`train`, `bench train`).
struct AdaptedModules: ParsableArguments {
    @Option(help: "Projections to adapt, comma separated (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj) or all-linear.")
    var targets = "all-linear"

    @Option(help: "Only these decoder layers get adapters: a comma-separated list or ranges (0-3,8). Default: all. Backward stops at the lowest of them, so training only upper layers is faster.")
    var layers: String?

    func validate() throws {
        _ = try modules()
        _ = try layerList()
    }

    func modules() throws -> [String] {
        let modules = targets == "all-linear"
            ? LoRAConfiguration.allLlamaProjections
            : targets.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        if let bad = modules.first(where: { !LoRAConfiguration.allLlamaProjections.contains($0) }) {
            throw ValidationError("--targets: \"\(bad)\" is not one of \(LoRAConfiguration.allLlamaProjections.joined(separator: ", ")) (or all-linear)")
        }
        return modules
    }

    /// "0-3,8" → [0, 1, 2, 3, 8]; nil for all layers.
    func layerList() throws -> [Int]? {
        guard let layers else { return nil }
        var list: [Int] = []
        for part in layers.split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard (1...2).contains(bounds.count), let lo = bounds.first!, let hi = bounds.last!, lo >= 0, lo <= hi else {
                throw ValidationError("--layers: \"\(part)\" is not a layer number or a range like 0-3")
            }
            list += Array(lo...hi)
        }
        return Array(Set(list)).sorted()
    }
}

/// --threads, shared by the commands that run the products.
struct ComputeThreads: ParsableArguments {
    @Option(help: "Threads for the products (default: QLORA_THREADS, else every CPU this process may use). Results depend on the count in their last bits (training checkpoints record it).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    /// Fixes the thread count before anything computes (QLORA_THREADS is checked here so a bad value is reported, not ignored).
    func apply() throws {
        if let count = try requested() { try ComputePool.setSharedThreadCount(count) }
    }

    /// --threads, else QLORA_THREADS; nil when neither is given.
    func requested() throws -> Int? {
        let environment = try ComputePool.environmentThreadCount()
        return threads ?? environment
    }
}
