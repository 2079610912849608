import QLoRAKit
import Testing
import _TestSupport

/// Conversations through a chat template (`ChatSession`, what `qlora chat` and
/// `generate --chat` run) and text generation with stop strings, on the embedded model.
@Suite struct ChatSessionTests {
    let loaded: LoadedModel
    let tokenizer: Tokenizer

    init() throws {
        loaded = try LoadedModel(contentsOf: EmbeddedModel.directory)
        tokenizer = try loaded.tokenizer()
    }

    /// Each reply is generated from the whole conversation so far, rendered with the
    /// assistant's header, and joins the conversation; its text continues the prompt's.
    @Test func repliesSeeTheWholeConversation() throws {
        let session = ChatSession(model: loaded.model, tokenizer: tokenizer, template: .chatML, system: "Be brief.")
        var sampler = try Sampler(temperature: 0)
        var streamed = ""
        let first = try session.reply(to: "Once upon a time", maxTokens: 12, sampler: &sampler) { streamed += $0 }
        #expect(first.text == streamed && first.droppedMessages == 0)
        #expect(session.messages.map(\.role) == [.system, .user, .assistant] && session.messages[2].content == first.text)
        let prompt = try session.promptIDs(Array(session.messages.prefix(2)))
        #expect(first.generation.promptTokens == prompt.count)
        // Greedy from the same prompt by hand: the same tokens and text.
        let tokens = try loaded.model.generateGreedy(prompt: prompt, count: first.generation.tokens.count)
        #expect(tokens == first.generation.tokens)
        let ids = (prompt + tokens).map(Int.init)
        #expect(tokenizer.decode(ids) == tokenizer.decode(prompt.map(Int.init)) + first.text)

        // The second turn runs only what follows the part of the conversation the cache holds.
        let second = try session.reply(to: "And then?", maxTokens: 8, sampler: &sampler)
        let secondPrompt = try session.promptIDs(Array(session.messages.prefix(4)))
        #expect(second.generation.cachedPromptTokens + second.generation.promptTokens == secondPrompt.count)
        // At least the first turn's prompt; the reply's tokens too where its text encodes to the tokens the
        // model chose (a model may spell a word in pieces the tokenizer would merge).
        #expect(second.generation.cachedPromptTokens >= prompt.count)
        #expect(session.messages.map(\.role) == [.system, .user, .assistant, .user, .assistant])
    }

    /// Generation after a prefix the cache already holds (positions and keys from the
    /// earlier call) picks the tokens a fresh prefill of the whole prompt picks.
    @Test func aCachedPrefixContinuesLikeAFreshPrefill() throws {
        let model = loaded.model
        let first = tokenizer.encode("Once upon a time, there was a little girl").map(Int32.init)
        let cache = try KVCache(model: model, capacity: 128)
        var sampler = try Sampler(temperature: 0)
        let earlier = try model.generate(prompt: first, maxTokens: 6, sampler: &sampler, cache: cache)
        #expect(cache.count == first.count + 5)
        let prompt = first + earlier.tokens + tokenizer.encode(" who liked", addSpecialTokens: false).map(Int32.init)
        let reused = try model.generate(prompt: prompt, maxTokens: 10, sampler: &sampler, cache: cache, cachedPrefix: first.count + 5)
        let fresh = try model.generate(prompt: prompt, maxTokens: 10, sampler: &sampler)
        #expect(reused.cachedPromptTokens == first.count + 5 && reused.promptTokens == prompt.count - first.count - 5)
        #expect(reused.tokens == fresh.tokens)
    }

    /// When the conversation outgrows the context, the oldest user/assistant turns go
    /// first and the system message stays; a message that alone cannot fit is refused
    /// and leaves the conversation as it was.
    @Test func oldTurnsAreDroppedToFitTheContext() throws {
        let session = ChatSession(model: loaded.model, tokenizer: tokenizer, template: .chatML, system: "Be kind.")
        var sampler = try Sampler(temperature: 0)
        // Messages of about a third of the context: the third no longer fits beside the first two turns.
        let sentence = "Once upon a time there was a dog. ", context = loaded.model.configuration.maxPositionEmbeddings
        let long = String(repeating: sentence, count: context / 3 / tokenizer.encode(sentence).count)
        var dropped: [Int] = []
        for _ in 0..<3 { dropped.append(try session.reply(to: long, maxTokens: 4, sampler: &sampler).droppedMessages) }
        #expect(dropped == [0, 0, 2])
        #expect(session.messages.map(\.role) == [.system, .user, .assistant, .user, .assistant])
        let before = session.messages
        let tooLong = String(repeating: sentence, count: 2 * context / tokenizer.encode(sentence).count)
        #expect(throws: GenerationError.self) { try session.reply(to: tooLong, maxTokens: 4, sampler: &sampler) }
        #expect(session.messages == before)
    }

    /// A stop string ends the text before it, whichever tokens spell it; the text and
    /// figures say so.
    @Test func stopStringsEndTheText() throws {
        let prompt = tokenizer.encode("Once upon a time").map(Int32.init)
        var sampler = try Sampler(temperature: 0)
        let free = try loaded.model.generateText(prompt: prompt, tokenizer: tokenizer, maxTokens: 30, sampler: &sampler, stopTokens: [])
        let cut = try #require(free.text.range(of: "was"))
        var chunks: [String] = []
        let stopped = try loaded.model.generateText(prompt: prompt, tokenizer: tokenizer, maxTokens: 30, sampler: &sampler,
                                                    stopTokens: [], stops: ["was"]) { chunks.append($0) }
        #expect(stopped.text == String(free.text[..<cut.lowerBound]) && chunks.joined() == stopped.text)
        #expect(stopped.result.stopReason == .stopped && free.result.stopReason == .maxTokens)
        #expect(stopped.result.tokens.count < free.result.tokens.count)
    }
}
