import Foundation

extension LlamaModel {
    /// The tokens that end a text: the tokenizer's EOS ids (generation_config.json's
    /// eos_token_id among them, which may list BOS for models trained with BOS between
    /// texts) and config.json's eos_token_id.
    public func endOfTextTokens(_ tokenizer: Tokenizer) -> Set<Int32> {
        Set(tokenizer.eosTokenIDs.map(Int32.init) + configuration.eosTokenIDs.map(Int32.init))
    }

    /// Generates after `prompt` and streams the new text as it completes: decoded
    /// as the continuation of the prompt's text (`StreamingDecoder`), cut before the
    /// first of `stops`, none of which is passed on (`StopText`), and ended by a
    /// token of `stopTokens` (EOS) too.
    /// - Returns: the text passed to `onText`, and the generation's figures
    ///   (`StopReason.stopped` when a stop string ended it).
    /// - Throws: what `generate` throws, and `TokenizerError` for ids that do not decode consistently.
    ///   `cache` and `cachedPrefix` are `generate`'s.
    public func generateText(prompt: [Int32], tokenizer: Tokenizer, maxTokens: Int, sampler: inout Sampler,
                             stopTokens: Set<Int32>, stops: [String] = [], cache: KVCache? = nil, cachedPrefix: Int = 0,
                             onText: (String) -> Void = { _ in }) throws -> (text: String, result: GenerationResult) {
        var stream = StreamingDecoder(tokenizer: tokenizer, prompt: prompt.map(Int.init))
        var stop = StopText(stops)
        var text = ""
        func emit(_ chunk: String) {
            guard !chunk.isEmpty else { return }
            text += chunk
            onText(chunk)
        }
        let result = try generate(prompt: prompt, maxTokens: maxTokens, sampler: &sampler, stopTokens: stopTokens, cache: cache,
                                  cachedPrefix: cachedPrefix) { id in
            if let chunk = try stream.append(Int(id)) { emit(stop.append(chunk)) }
            return !stop.isStopped
        }
        emit(stop.append(stream.finish()))
        emit(stop.finish())
        return (text, result)
    }
}

/// A conversation with a model through its chat template. Each `reply(to:)`
/// renders the whole conversation so far, then the assistant's header
/// (`ExampleBuilder.replyPrompt`), generates the reply until the end of the
/// assistant's turn (EOS, or the template's turn marker such as ChatML's
/// "<|im_end|>") and keeps it for the next turn. Turns that no longer fit the
/// context are dropped, oldest first; a system message stays.
///
/// One KV cache serves the whole conversation: each turn runs only the tokens
/// after the longest prefix it shares with what the cache holds (the earlier
/// turns, as long as they tokenize the same again), so a long conversation is
/// not prefilled anew at every message. Those cached positions were computed
/// one token at a time when they were generated, so a reply may differ from a
/// fresh prefill's in the last bits of its logits.
public final class ChatSession {
    public let model: LlamaModel
    public let tokenizer: Tokenizer
    public let template: ChatTemplate
    /// The conversation so far: the system message if any, then user and assistant turns.
    public private(set) var messages: [ChatMessage]
    /// Strings that also end a reply (not kept in it).
    public let stops: [String]
    private let stopTokens: Set<Int32>
    /// Grown (and then refilled) when a turn needs more room, up to the context.
    private var cache: KVCache?
    /// The tokens whose keys and values `cache` holds, in order.
    private var cached: [Int32] = []

    /// One reply and what it took.
    public struct Reply: Sendable {
        public var text: String
        public var generation: GenerationResult
        /// Oldest turns dropped to fit the context before this reply.
        public var droppedMessages: Int
    }

    public init(model: LlamaModel, tokenizer: Tokenizer, template: ChatTemplate, system: String? = nil, stops: [String] = []) {
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        messages = system.map { [ChatMessage(role: .system, content: $0)] } ?? []
        var stopTokens = model.endOfTextTokens(tokenizer)
        var stopStrings = stops
        if let end = template.turnEnd {
            // A marker the tokenizer holds as one token stops on that token, any other on its text.
            let marker = tokenizer.encode(end, addSpecialTokens: false)
            if marker.count == 1 { stopTokens.insert(Int32(marker[0])) }
            stopStrings.append(end)
        }
        self.stopTokens = stopTokens
        self.stops = stopStrings
    }

    /// The ids that prompt the assistant's next turn after `messages`.
    public func promptIDs(_ messages: [ChatMessage]) throws -> [Int32] {
        try ExampleBuilder(tokenizer: tokenizer, options: ExampleOptions(), chatTemplate: template).replyPrompt(messages)
    }

    /// Adds the user's message, generates the assistant's reply (streamed to `onText`)
    /// and adds it to the conversation. On an error the conversation is left as it was.
    /// - Parameter maxTokens: at most this many tokens, and what the context has room for.
    /// - Throws: `GenerationError.promptTooLong` when the message alone (with the system
    ///   message) does not fit the context, what generation throws, `ChatTemplateError`.
    public func reply(to user: String, maxTokens: Int, sampler: inout Sampler,
                      onText: (String) -> Void = { _ in }) throws -> Reply {
        let context = model.configuration.maxPositionEmbeddings
        var turns = messages + [ChatMessage(role: .user, content: user)]
        let first = turns.first?.role == .system ? 1 : 0
        var prompt = try promptIDs(turns)
        while prompt.count >= context, turns.count - first > 1 {
            // A user turn and the reply after it, so roles keep alternating.
            turns.remove(at: first)
            if turns.count - first > 1, turns[first].role == .assistant { turns.remove(at: first) }
            prompt = try promptIDs(turns)
        }
        guard prompt.count < context else { throw GenerationError.promptTooLong(tokens: prompt.count, context: context) }
        // Room for a few turns at first (a conversation grows), doubled when a turn
        // needs more, which costs one full prefill.
        let needed = min(context, prompt.count + maxTokens)
        if cache.map({ $0.capacity < needed }) ?? true {
            cache = try KVCache(model: model, capacity: min(context, max(2 * needed, 2 * (cache?.capacity ?? 0), 1024)))
            cached = []
        }
        let shared = min(zip(prompt, cached).prefix { $0 == $1 }.count, prompt.count - 1)
        cached = Array(cached.prefix(shared)) // what the cache holds if generation fails midway
        let (text, generation) = try model.generateText(prompt: prompt, tokenizer: tokenizer, maxTokens: maxTokens,
                                                        sampler: &sampler, stopTokens: stopTokens, stops: stops,
                                                        cache: cache, cachedPrefix: shared, onText: onText)
        cached = prompt + generation.tokens.dropLast()
        let dropped = messages.count + 1 - turns.count
        messages = turns + [ChatMessage(role: .assistant, content: text)]
        return Reply(text: text, generation: generation, droppedMessages: dropped)
    }
}
