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

/// --chat-template, for every command that renders chats.
struct ChatTemplateOption: ParsableArguments {
    @Option(name: .customLong("chat-template"), help: "Chat template for chats: chatml, llama-2 or zephyr (default: the model's own, if recognised).")
    var name: String?

    func validate() throws { _ = try template() }

    /// The built-in template named, nil without --chat-template.
    func template() throws -> ChatTemplate? {
        do {
            return try name.map(ChatTemplate.named)
        } catch {
            throw ValidationError(error.localizedDescription)
        }
    }
}

/// The chat template and system message of `generate --chat` and `chat`.
struct ChatOptions: ParsableArguments {
    @OptionGroup var chatTemplate: ChatTemplateOption

    @Option(help: "A system message that opens the conversation.")
    var system: String?

    /// --chat-template, else the model's own.
    /// - Throws: `ChatTemplateError` when the model has none (or one this engine cannot render).
    func template(of loaded: LoadedModel) throws -> ChatTemplate {
        guard let template = try chatTemplate.template() ?? loaded.chatTemplate() else {
            throw ChatTemplateError.missing(loaded.url)
        }
        return template
    }
}

/// How `generate` and `chat` pick tokens, and where their text ends.
struct SamplingOptions: ParsableArguments {
    @Option(help: "Sampling temperature; 0 picks the most likely token every time (greedy).")
    var temperature: Float = 0.8

    @Option(name: .customLong("top-p"), help: "Sample from the smallest set of likeliest tokens whose probabilities reach P (1 = all).")
    var topP: Float = 0.95

    @Option(help: "Seed of the sampler: the same seed, model and input give the same text. Random when not given.")
    var seed: UInt64?

    @Option(name: .customLong("stop"), help: "Stop when the text contains this string, which is not printed (repeatable).")
    var stops: [String] = []

    func validate() throws {
        if stops.contains("") { throw ValidationError("--stop needs a non-empty string") }
        do {
            _ = try Sampler(temperature: temperature, topP: topP)
        } catch {
            throw ValidationError(error.localizedDescription)
        }
    }

    /// The sampler, seeded with --seed or a random seed (returned, to report it).
    func sampler() throws -> (sampler: Sampler, seed: UInt64) {
        let seed = seed ?? UInt64.random(in: 0...UInt64.max)
        return (try Sampler(temperature: temperature, topP: topP, seed: seed), seed)
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
