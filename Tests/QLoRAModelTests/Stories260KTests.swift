import QLoRAKit
import Testing

/// The embedded stories260K (tied embeddings, 8 heads over 4 kv heads).
@Test func stories260KGreedyContinuationMatchesReference() throws {
    let model = try LlamaModel(directory: EmbeddedModel.directory)
    let greedy = Reference.expected.stories260K_greedy
    #expect(greedy.prompt_ids == [1, 403, 407, 261, 378])
    let continuation = try model.generateGreedy(prompt: greedy.prompt_ids, count: greedy.continuation_ids.count)
    #expect(continuation == greedy.continuation_ids)
}
