import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora generate --model PATH --prompt TEXT ...`: streams a continuation of
/// the prompt as it is generated, then the prefill and decode speeds.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Continue a prompt with a model (Hugging Face folder or packed checkpoint), streaming the text."
    )

    @OptionGroup var model: ModelOptions

    @Option(help: "The text to continue (the tokenizer adds BOS as the model expects), or with --chat the user's message.")
    var prompt: String

    @Flag(help: "Chat: send --prompt as a user's message through the chat template and print the assistant's reply, which ends with its turn.")
    var chat = false

    @Option(name: .customLong("chat-template"), help: "Chat template for --chat: chatml, llama-2 or zephyr (default: the model's own, if recognised).")
    var chatTemplate: String?

    @Option(help: "A system message for --chat.")
    var system: String?

    @Option(name: .customLong("stop"), help: "Stop when the text contains this string, which is not printed (repeatable).")
    var stops: [String] = []

    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.")
    var maxTokens = 128

    @Option(help: "Sampling temperature; 0 picks the most likely token every time (greedy).")
    var temperature: Float = 0.8

    @Option(name: .customLong("top-p"), help: "Sample from the smallest set of likeliest tokens whose probabilities reach P (1 = all).")
    var topP: Float = 0.95

    @Option(help: "Seed of the sampler: the same seed, model and prompt give the same text. Random when not given.")
    var seed: UInt64?

    @Flag(name: .customLong("truncate-prompt"), help: "Drop the prompt's first tokens so that it and --max-tokens fit the model's context, instead of failing on a prompt longer than the context.")
    var truncatePrompt = false

    @Flag(help: "Report the model, the sampler's seed and resident memory (VmRSS, VmHWM) on stderr.")
    var verbose = false

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive, not \(maxTokens)") }
        if stops.contains("") { throw ValidationError("--stop needs a non-empty string") }
        if !chat && (chatTemplate != nil || system != nil) { throw ValidationError("--chat-template and --system need --chat") }
        if let chatTemplate {
            do { _ = try ChatTemplate.named(chatTemplate) } catch { throw ValidationError(error.localizedDescription) }
        }
        do {
            _ = try Sampler(temperature: temperature, topP: topP)
        } catch {
            throw ValidationError(error.localizedDescription)
        }
    }

    func run() throws {
        try compute.apply()
        let loaded = try model.load()
        let llama = loaded.model, tokenizer = try loaded.tokenizer()
        let context = llama.configuration.maxPositionEmbeddings
        var stopTokens = Set(tokenizer.eosTokenIDs.map(Int32.init) + llama.configuration.eosTokenIDs.map(Int32.init))
        var stopText = StopText(stops)
        let promptIDs: [Int32]
        if chat {
            guard let template = try chatTemplate.map(ChatTemplate.named) ?? loaded.chatTemplate() else {
                throw ChatTemplateError.missing(loaded.url)
            }
            let messages = (system.map { [ChatMessage(role: .system, content: $0)] } ?? []) + [ChatMessage(role: .user, content: prompt)]
            promptIDs = try ExampleBuilder(tokenizer: tokenizer, options: ExampleOptions(), chatTemplate: template).replyPrompt(messages)
            if verbose { log("chat template: \(template)" + (chatTemplate == nil ? " (the model's own)" : "")) }
            if let end = template.turnEnd {
                // A marker the tokenizer holds as one token stops on that token, any other on its text.
                let marker = tokenizer.encode(end, addSpecialTokens: false)
                if marker.count == 1 { stopTokens.insert(Int32(marker[0])) }
                stopText = StopText(stops + [end])
            }
        } else {
            promptIDs = tokenizer.encode(prompt).map(Int32.init)
        }
        let (ids, dropped) = try LlamaModel.fitPrompt(promptIDs, context: context, maxTokens: maxTokens, truncate: truncatePrompt)
        if dropped > 0 { log("truncated the prompt: dropped its first \(dropped) tokens to fit the context of \(context)") }
        let cache = try KVCache(model: llama, capacity: min(context, ids.count + maxTokens))
        let seed = seed ?? UInt64.random(in: 0...UInt64.max)
        var sampler = try Sampler(temperature: temperature, topP: topP, seed: seed)
        if verbose {
            log("model: \(loaded.url.path) (\(loaded.format.rawValue), \(Format.bytes(loaded.weightFileBytes)))"
                + (model.adapter.map { ", adapter \($0)" } ?? ""))
            log("sampler: temperature \(temperature), top-p \(topP), seed \(seed); prompt \(ids.count) tokens")
            log("KV cache: \(Format.bytes(cache.byteCount)) for \(cache.capacity) tokens; step buffers \(Format.bytes(cache.workspaceByteCount))")
            logMemory("after loading")
        }

        let out = FileHandle.standardOutput
        if !chat { out.write(Data(prompt.utf8)) }
        var stream = StreamingDecoder(tokenizer: tokenizer, prompt: ids.map(Int.init))
        let result = try llama.generate(prompt: ids, maxTokens: maxTokens, sampler: &sampler, stopTokens: stopTokens, cache: cache) { id in
            if let text = try stream.append(Int(id)) { out.write(Data(stopText.append(text).utf8)) }
            return !stopText.isStopped
        }
        out.write(Data((stopText.append(stream.finish()) + stopText.finish() + "\n").utf8))

        let stopped = switch result.stopReason {
        case .stopToken: chat ? "end of the assistant's turn" : "end of sequence"
        case .stopped: stopText.stops.count > stops.count ? "end of the assistant's turn or a --stop string" : "a --stop string"
        case .maxTokens: "--max-tokens reached"
        case .contextFull: "context of \(context) tokens full"
        }
        log(String(format: "prompt: %d tokens in %.3f s (%.1f tokens/s); generation: %d tokens, %d decode steps in %.3f s (%.2f tokens/s); stopped: %@",
                   result.promptTokens, result.promptSeconds, result.promptTokensPerSecond, result.tokens.count,
                   result.decodeSteps, result.decodeSeconds, result.decodeSteps > 0 ? result.decodeTokensPerSecond : 0, stopped))
        if verbose { logMemory("after generation") }
    }

    private func log(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    private func logMemory(_ when: String) {
        let memory = ResidentMemory.sample()
        log("resident memory \(when): VmRSS \(memory.current.map(Format.bytes) ?? "unknown"), VmHWM \(memory.peak.map(Format.bytes) ?? "unknown")")
    }
}
