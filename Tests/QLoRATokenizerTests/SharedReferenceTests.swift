import Foundation
import QLoRAKit
import QLoRATokenizer
import Testing
import _TestSupport

/// The tokenizer cases of the project's shared reference data (tiny-llama's and stories260K's
/// reference.json) and the stories260K fine-tuning texts the engine will train on.
@Suite struct SharedReferenceTests {
    struct TinyLlamaCases: Decodable {
        let cases: [EncodeCase]
    }

    struct StoriesSequences: Decodable {
        struct Sequence: Decodable {
            let ids: [Int]
            let decoded: String
            let completionStart: Int?
        }
        struct Greedy: Decodable {
            let prompt: String
            let promptIds: [Int]
            let allIds: [Int]
            let text: String
        }
        let sequences: [String: Sequence]
        let greedy: Greedy
    }

    @Test func tinyLlamaReferenceCases() throws {
        let reference: TinyLlamaCases = try decodeFixture("tokenizers/tiny-llama/reference_cases.json")
        let tokenizer = try Tokenizer(directory: Fixtures.url("tokenizers/tiny-llama"))
        #expect(reference.cases.count == 7)
        for c in reference.cases { expectCase(c, tokenizer, "tiny-llama") }
        #expect(tokenizer.bosTokenID == 0)
        #expect(tokenizer.eosTokenIDs == [1])
        #expect(tokenizer.padTokenID == 3)
        #expect(tokenizer.unkTokenID == nil)
        #expect(tokenizer.vocabularySize == 384)
    }

    @Test func storiesReferenceSequences() throws {
        let reference: StoriesSequences = try decodeFixture("tokenizers/stories260K/reference_sequences.json")
        let tokenizer = try Tokenizer(directory: EmbeddedModel.directory)

        let lily = try #require(reference.sequences["seq1_lily"])
        #expect(tokenizer.encode(lily.decoded) == lily.ids)
        // Eval story 0 is model output, not necessarily the canonical tokenization; decoding must
        // still give its text, and here re-encoding happens to agree too.
        let story = try #require(reference.sequences["seq2_eval_story0"])
        #expect(sameScalars(tokenizer.decode(story.ids), story.decoded))
        #expect(tokenizer.encode(story.decoded) == story.ids)

        let valid0 = try #require(reference.sequences["seq3_valid0_prompt_completion"])
        let line = try #require(try FineTuningLine.load("valid").first)
        #expect(tokenizer.encode(line.prompt + line.completion) == valid0.ids)
        #expect(tokenizer.encode(line.prompt).count == valid0.completionStart)

        let greedy = reference.greedy
        #expect(tokenizer.encode(greedy.prompt) == greedy.promptIds)
        #expect(sameScalars(tokenizer.decode(greedy.allIds), greedy.text))
    }

    /// The deliberate difference from llama2.c's run.c that the stories260K README describes:
    /// "<s>" and "</s>" written in the text become the special tokens.
    @Test func storiesSpecialTokensInText() throws {
        let tokenizer = try Tokenizer(directory: EmbeddedModel.directory)
        let ids = tokenizer.encode("<s> and </s> written as text", addSpecialTokens: false)
        #expect(ids.first == 1)
        #expect(ids.contains(2))
        #expect(tokenizer.bosTokenID == 1)
        #expect(tokenizer.eosTokenIDs == [2, 1])  // tokenizer_config's </s>, then generation_config's [2, 1]
        #expect(tokenizer.padTokenID == nil)
        #expect(tokenizer.unkTokenID == 0)
    }

    @Test(arguments: ["train", "valid"])
    func storiesFineTuningTexts(split: String) throws {
        let tokenizer = try Tokenizer(directory: EmbeddedModel.directory)
        let lines = try FineTuningLine.load(split)
        let digests = try #require(try LibraryReference.load().storiesEval[split])
        #expect(lines.count == digests.count && !lines.isEmpty)
        for (index, (line, digest)) in zip(lines, digests).enumerated() {
            let text = line.prompt + line.completion
            let ids = tokenizer.encode(text)
            #expect(ids.count == digest.count && fnv1a64(ids) == digest.digest, "\(split) line \(index)")
            let promptIDs = tokenizer.encode(line.prompt)
            #expect(promptIDs.count == digest.promptCount && fnv1a64(promptIDs) == digest.promptDigest, "\(split) line \(index)")
            #expect(sameScalars(tokenizer.decode(ids), text), "\(split) line \(index) does not round-trip")
        }
    }

    /// Streaming the fine-tuning texts gives the full text, chunk by chunk.
    @Test func storiesStreamingRoundTrip() throws {
        let tokenizer = try Tokenizer(directory: EmbeddedModel.directory)
        for line in try FineTuningLine.load("valid") {
            let text = line.prompt + line.completion
            var stream = StreamingDecoder(tokenizer: tokenizer)
            var streamed = ""
            for id in tokenizer.encode(text) { streamed += try stream.append(id) ?? "" }
            streamed += stream.finish()
            #expect(sameScalars(streamed, text))
        }
    }

    /// What `qlora generate` prints: the prompt, then the stream of the completion's ids. The
    /// completion's first word keeps its space ("Once upon" + " a time", not "upona").
    @Test func storiesStreamingAfterThePrompt() throws {
        let tokenizer = try Tokenizer(directory: EmbeddedModel.directory)
        var stream = StreamingDecoder(tokenizer: tokenizer, prompt: tokenizer.encode("Once upon"))
        let rest = Array(tokenizer.encode("Once upon a time").dropFirst(tokenizer.encode("Once upon").count))
        #expect(try rest.compactMap { try stream.append($0) }.joined() + stream.finish() == " a time")
        for line in try FineTuningLine.load("valid") {
            let ids = tokenizer.encode(line.prompt + line.completion)
            let cut = tokenizer.encode(line.prompt).count
            guard cut < ids.count, Array(ids[..<cut]) == tokenizer.encode(line.prompt) else { continue }
            var stream = StreamingDecoder(tokenizer: tokenizer, prompt: Array(ids[..<cut]))
            var streamed = ""
            for id in ids[cut...] { streamed += try stream.append(id) ?? "" }
            #expect(sameScalars(tokenizer.decode(Array(ids[..<cut])) + streamed + stream.finish(), tokenizer.decode(ids)))
        }
    }
}
