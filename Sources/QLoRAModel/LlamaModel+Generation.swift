import Foundation

/// Why a generation ended.
public enum StopReason: String, Sendable, Codable {
    /// The model produced a stop token (EOS).
    case stopToken = "stop_token"
    /// It produced the requested number of tokens.
    case maxTokens = "max_tokens"
    /// The KV cache, sized to the context, is full.
    case contextFull = "context_full"
    /// The caller's `onToken` ended it (a stop string in the text, say).
    case stopped
}

/// What a generation produced and how long its two phases took.
public struct GenerationResult: Sendable {
    /// The new tokens, a stop token included when one ended the generation.
    public var tokens: [Int32]
    public var stopReason: StopReason
    /// Prompt tokens run (prefilled) by this call, and those the cache already held.
    public var promptTokens: Int
    public var cachedPromptTokens = 0
    /// Prefill: the prompt through the model at once, up to the first logits.
    public var promptSeconds: Double
    /// Decode: one forward pass per generated token after the first (whose
    /// logits come from the prefill), sampling included.
    public var decodeSteps: Int
    public var decodeSeconds: Double

    public var promptTokensPerSecond: Double { Double(promptTokens) / promptSeconds }
    /// Decode throughput: tokens produced per second once the prompt is in.
    public var decodeTokensPerSecond: Double { Double(decodeSteps) / decodeSeconds }
}

extension LlamaModel {
    /// Generates up to `maxTokens` tokens after `prompt`: one prefill pass
    /// over the prompt into a KV cache, then one single-token pass per new
    /// token, each sampled by `sampler` from the latest logits. Stops after a
    /// token in `stopTokens`, or when the cache is full. `onToken` sees each
    /// token as it is produced (to stream text) and returns whether to go on;
    /// it may also throw.
    ///
    /// - Parameters:
    ///   - cache: reused when given (rewound to `cachedPrefix` tokens first),
    ///     otherwise one is made for prompt + maxTokens tokens, at most the
    ///     model's context. The cache then holds the prompt and every
    ///     generated token but the last.
    ///   - cachedPrefix: how many of the prompt's first tokens the given cache
    ///     already holds from an earlier call (a conversation's earlier turns);
    ///     only the rest is run. At most prompt.count − 1 and the cache's count.
    /// - Throws: `GenerationError.emptyPrompt`, `.promptTooLong` when the
    ///   prompt exceeds the cache, `.tokenOutOfVocabulary`.
    public func generate(prompt: [Int32], maxTokens: Int, sampler: inout Sampler, stopTokens: Set<Int32> = [],
                         cache: KVCache? = nil, cachedPrefix: Int = 0,
                         onToken: (Int32) throws -> Bool = { _ in true }) throws -> GenerationResult {
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        guard maxTokens >= 0 else { throw GenerationError.invalidSampling("cannot generate \(maxTokens) tokens") }
        let context = cache?.capacity ?? configuration.maxPositionEmbeddings
        guard prompt.count <= context else { throw GenerationError.promptTooLong(tokens: prompt.count, context: context) }
        precondition(cachedPrefix == 0 || (cache.map { cachedPrefix <= $0.count } == true && cachedPrefix < prompt.count),
                     "[LlamaModel.generate] cachedPrefix \(cachedPrefix) is not a prefix the cache holds of a \(prompt.count)-token prompt")
        let cache = try cache ?? KVCache(model: self, capacity: min(context, prompt.count + maxTokens))
        cache.truncate(to: cachedPrefix)
        var result = GenerationResult(tokens: [], stopReason: .maxTokens, promptTokens: prompt.count - cachedPrefix,
                                      cachedPromptTokens: cachedPrefix, promptSeconds: 0, decodeSteps: 0, decodeSeconds: 0)
        guard maxTokens > 0 else { return result }
        let clock = ContinuousClock()
        let prefillStart = clock.now
        var logits = try forward(Array(prompt[cachedPrefix...]), cache: cache)
        result.promptSeconds = (clock.now - prefillStart) / .seconds(1)
        let decodeStart = clock.now
        while true {
            let next = sampler.sample(logits)
            result.tokens.append(next)
            if try !onToken(next) {
                result.stopReason = .stopped
                break
            }
            if stopTokens.contains(next) {
                result.stopReason = .stopToken
                break
            }
            if result.tokens.count == maxTokens { break }
            if cache.count == cache.capacity {
                result.stopReason = .contextFull
                break
            }
            logits = try forward([next], cache: cache)
            result.decodeSteps += 1
        }
        result.decodeSeconds = (clock.now - decodeStart) / .seconds(1)
        return result
    }

    /// `prompt` made to fit a context of `context` tokens. A prompt longer
    /// than the context is an error unless `truncate`; with it, a prompt that
    /// leaves no room for `maxTokens` loses its first tokens, keeping its last
    /// max(1, context − maxTokens). Returns the prompt and how many tokens were dropped.
    /// - Throws: `GenerationError.promptTooLong`, `.emptyPrompt`.
    public static func fitPrompt(_ prompt: [Int32], context: Int, maxTokens: Int,
                                 truncate: Bool) throws -> (prompt: [Int32], dropped: Int) {
        guard !prompt.isEmpty else { throw GenerationError.emptyPrompt }
        guard truncate else {
            guard prompt.count <= context else { throw GenerationError.promptTooLong(tokens: prompt.count, context: context) }
            return (prompt, 0)
        }
        let dropped = max(0, prompt.count - max(1, context - maxTokens))
        return (Array(prompt.dropFirst(dropped)), dropped)
    }

    /// Greedy decoding: appends the most likely next token up to `count`
    /// times, stopping after a token in `stopTokens`. Returns the new tokens.
    public func generateGreedy(prompt: [Int32], count: Int, stopTokens: Set<Int32> = []) throws -> [Int32] {
        var sampler = try Sampler(temperature: 0)
        return try generate(prompt: prompt, maxTokens: count, sampler: &sampler, stopTokens: stopTokens).tokens
    }
}
