import Foundation
import QLoRAKit
import Testing
import _TestSupport

/// Inference through the KV cache against the full-sequence forward pass.
@Suite struct KVCacheTests {
    let model: LlamaModel

    init() throws {
        model = try LlamaModel(directory: Reference.tinyLlama)
    }

    func fullLogits(_ ids: [Int32]) throws -> [Float] {
        try model.forward(TokenBatch(sequences: [ids], nextTokenTargets: false))
        return model.logits()
    }

    /// A prefill, then one token at a time: every step's logits equal the full
    /// forward's row for that position.
    @Test func decodeStepsEqualTheFullForward() throws {
        let ids = Reference.expected.seq2, v = model.configuration.vocabularySize
        let full = try fullLogits(ids)
        let cache = try KVCache(model: model, capacity: ids.count)
        let prefill = 10
        var cached = try model.forward(Array(ids[..<prefill]), cache: cache, logits: .all)
        for t in prefill..<ids.count { cached += try model.forward([ids[t]], cache: cache) }
        #expect(cache.count == ids.count)
        #expect(cached.count == full.count)
        #expect(maxAbsDifference(cached, full) <= 1e-5)
        // The last-row logits of a prefill are the last row of .all.
        cache.reset()
        let last = try model.forward(ids, cache: cache)
        #expect(maxAbsDifference(last, Array(full[((ids.count - 1) * v)...])) <= 1e-5)
    }

    @Test(arguments: [1, 4, 16, 64])
    func chunkedPrefillEqualsTheFullForward(chunkSize: Int) throws {
        let ids = Reference.expected.seq2
        let cache = try KVCache(model: model, capacity: ids.count, chunkSize: chunkSize)
        #expect(maxAbsDifference(try model.forward(ids, cache: cache, logits: .all), try fullLogits(ids)) <= 1e-5)
    }

    /// Mistral's sliding window (24 tokens) over 80 cached tokens, against transformers.
    @Test func slidingWindowMatchesTransformersTokenByToken() throws {
        let folder = Fixtures.url("model/variants/mistral-window-linear-rope")
        let mistral = try LlamaModel(directory: folder)
        let reference = try SafetensorsFile(url: folder.appendingPathComponent("reference.safetensors"))
        let ids = Array(try reference.bytes("input_ids").bindMemory(to: Int64.self)).map(Int32.init)
        let t = ids.count / 2, v = mistral.configuration.vocabularySize
        let expected = Array(try reference.floats("logits")[..<(t * v)]) // the unpadded first sequence
        let cache = try KVCache(model: mistral, capacity: t, chunkSize: 7)
        var cached = try mistral.forward(Array(ids[..<30]), cache: cache, logits: .all)
        for i in 30..<t { cached += try mistral.forward([ids[i]], cache: cache) }
        #expect(maxAbsDifference(cached, expected) <= 1e-4)
    }

    @Test func cacheRefusesWhatDoesNotFit() throws {
        let cache = try KVCache(model: model, capacity: 8)
        _ = try model.forward([0, 1, 2, 3, 4, 5], cache: cache)
        #expect(throws: GenerationError.contextFull(capacity: 8, held: 6, adding: 3)) {
            try model.forward([1, 2, 3], cache: cache)
        }
        #expect(cache.count == 6)
        #expect(throws: GenerationError.tokenOutOfVocabulary(token: 384, index: 1, vocabularySize: 384)) {
            try model.forward([1, 384], cache: cache)
        }
        let other = try LlamaModel(directory: EmbeddedModel.directory)
        #expect(throws: GenerationError.cacheMismatch) { try other.forward([1], cache: cache) }
        #expect(throws: GenerationError.invalidCapacity(capacity: 257, chunkSize: 128, context: 256)) {
            try KVCache(model: model, capacity: 257)
        }
    }
}

/// Generation on the embedded stories260K, whose greedy continuation is known.
@Suite struct GenerationTests {
    let model: LlamaModel
    let greedy = Reference.expected.stories260K_greedy

    init() throws {
        model = try LlamaModel(directory: EmbeddedModel.directory)
    }

    @Test func stopsAfterAStopToken() throws {
        var sampler = try Sampler(temperature: 0)
        let stop = greedy.continuation_ids[5]
        let result = try model.generate(prompt: greedy.prompt_ids, maxTokens: 64, sampler: &sampler, stopTokens: [stop])
        #expect(result.tokens == Array(greedy.continuation_ids[...5]))
        #expect(result.stopReason == .stopToken)
        #expect(result.decodeSteps == 5 && result.promptTokens == 5)
    }

    /// A full cache ends generation: the last token needs no cache row.
    @Test func stopsWhenTheContextIsFull() throws {
        var sampler = try Sampler(temperature: 0)
        let cache = try KVCache(model: model, capacity: 8)
        let result = try model.generate(prompt: greedy.prompt_ids, maxTokens: 64, sampler: &sampler, cache: cache)
        #expect(result.tokens == Array(greedy.continuation_ids[..<4]))
        #expect(result.stopReason == .contextFull)
    }

    @Test func sameSeedSameTextAcrossReusedCaches() throws {
        let cache = try KVCache(model: model, capacity: 40)
        func run(seed: UInt64) throws -> [Int32] {
            var sampler = try Sampler(temperature: 1, topP: 0.9, seed: seed)
            return try model.generate(prompt: greedy.prompt_ids, maxTokens: 32, sampler: &sampler, cache: cache).tokens
        }
        let first = try run(seed: 7)
        #expect(try run(seed: 7) == first)
        #expect(try run(seed: 8) != first)
    }

    @Test func promptsLongerThanTheContextFailOrAreTruncatedOnRequest() throws {
        let prompt = (0..<600).map { Int32($0 % 500) }, context = model.configuration.maxPositionEmbeddings
        #expect(throws: GenerationError.promptTooLong(tokens: 600, context: context)) {
            try LlamaModel.fitPrompt(prompt, context: context, maxTokens: 10, truncate: false)
        }
        var sampler = try Sampler()
        #expect(throws: GenerationError.promptTooLong(tokens: 600, context: context)) {
            try model.generate(prompt: prompt, maxTokens: 10, sampler: &sampler)
        }
        let fitted = try LlamaModel.fitPrompt(prompt, context: context, maxTokens: 10, truncate: true)
        #expect(fitted.prompt == Array(prompt.suffix(context - 10)) && fitted.dropped == 600 - (context - 10))
        let result = try model.generate(prompt: fitted.prompt, maxTokens: 10, sampler: &sampler)
        #expect(result.tokens.count == 10)
        #expect(try LlamaModel.fitPrompt([1, 2], context: context, maxTokens: 10, truncate: true).dropped == 0)
        #expect(throws: GenerationError.emptyPrompt) { try model.generate(prompt: [], maxTokens: 1, sampler: &sampler) }
    }
}
