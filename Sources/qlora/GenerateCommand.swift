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

    @OptionGroup var chatting: ChatOptions

    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.")
    var maxTokens = 128

    @OptionGroup var sampling: SamplingOptions

    @Flag(name: .customLong("truncate-prompt"), help: "Drop the prompt's first tokens so that it and --max-tokens fit the model's context, instead of failing on a prompt longer than the context.")
    var truncatePrompt = false

    @Flag(help: "Report the model, the sampler's seed and resident memory (VmRSS, VmHWM) on stderr.")
    var verbose = false

    @OptionGroup var compute: ComputeThreads

    func validate() throws {
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive, not \(maxTokens)") }
        if !chat && (chatting.chatTemplate.name != nil || chatting.system != nil) { throw ValidationError("--chat-template and --system need --chat") }
        if chat && truncatePrompt { throw ValidationError("--truncate-prompt does not apply to --chat, whose message must fit the context") }
    }

    func run() throws {
        try compute.apply()
        let loaded = try model.load()
        let llama = loaded.model, tokenizer = try loaded.tokenizer()
        let context = llama.configuration.maxPositionEmbeddings
        var (sampler, seed) = try sampling.sampler()
        if verbose {
            log("model: \(loaded.url.path) (\(loaded.format.rawValue), \(Format.bytes(loaded.weightFileBytes)))"
                + (model.adapter.map { ", adapter \($0)" } ?? ""))
            log("sampler: temperature \(sampling.temperature), top-p \(sampling.topP), seed \(seed)")
            logMemory("after loading")
        }
        let out = FileHandle.standardOutput
        let write = { (text: String) in out.write(Data(text.utf8)) }
        let result: GenerationResult
        if chat {
            let template = try chatting.template(of: loaded)
            if verbose { log("chat template: \(template)" + (chatting.chatTemplate.name == nil ? " (the model's own)" : "")) }
            let session = ChatSession(model: llama, tokenizer: tokenizer, template: template, system: chatting.system, stops: sampling.stops)
            result = try session.reply(to: prompt, maxTokens: maxTokens, sampler: &sampler, onText: write).generation
        } else {
            let (ids, dropped) = try LlamaModel.fitPrompt(tokenizer.encode(prompt).map(Int32.init), context: context,
                                                          maxTokens: maxTokens, truncate: truncatePrompt)
            if dropped > 0 { log("truncated the prompt: dropped its first \(dropped) tokens to fit the context of \(context)") }
            let cache = try KVCache(model: llama, capacity: min(context, ids.count + maxTokens))
            if verbose {
                log("KV cache: \(Format.bytes(cache.byteCount)) for \(cache.capacity) tokens; step buffers \(Format.bytes(cache.workspaceByteCount))")
            }
            write(prompt)
            result = try llama.generateText(prompt: ids, tokenizer: tokenizer, maxTokens: maxTokens, sampler: &sampler,
                                            stopTokens: llama.endOfTextTokens(tokenizer), stops: sampling.stops, cache: cache,
                                            onText: write).result
        }
        write("\n")

        let stopped = switch result.stopReason {
        case .stopToken: chat ? "end of the assistant's turn" : "end of sequence"
        case .stopped: chat ? "end of the assistant's turn or a --stop string" : "a --stop string"
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
