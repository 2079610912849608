import Foundation
import QLoRATokenizer
import Testing

/// The Split pre-tokenizer against the library's own `pre_tokenize_str` output: GPT-2,
/// Llama-3 and Qwen2 patterns plus patterns exercising each supported regex feature
/// (classes, \d \w \s and negations, (?i:), lookahead, lazy and counted repetition) and every
/// delimiter behaviour, with and without invert.
@Suite struct RegexSplitTests {
    static let behaviorNames = [
        "isolated": "Isolated", "removed": "Removed", "merged_with_previous": "MergedWithPrevious",
        "merged_with_next": "MergedWithNext", "contiguous": "Contiguous",
    ]

    @Test func splitsMatchLibrary() throws {
        let reference = try LibraryReference.load().regexCases
        #expect(reference.patterns.count == 16)
        for c in reference.patterns {
            let behavior = try #require(Self.behaviorNames[c.behavior])
            // Vocabulary: every expected piece plus every single scalar, deduplicated exactly.
            var seen = Set<[Unicode.Scalar]>()
            var vocabulary: [String] = []
            for piece in c.pieces.flatMap({ $0 }) + reference.texts.flatMap({ $0.unicodeScalars.map { String($0) } })
            where seen.insert(Array(piece.unicodeScalars)).inserted {
                vocabulary.append(piece)
            }
            let preTokenizer = """
                {"type": "Split", "pattern": {"Regex": \(jsonLiteral(c.pattern))}, "behavior": "\(behavior)", "invert": \(c.invert)}
                """
            let directory = try temporaryTokenizerDirectory(
                ["tokenizer.json": probeTokenizerJSON(preTokenizer: preTokenizer, vocabulary: vocabulary)])
            defer { try? FileManager.default.removeItem(at: directory) }
            let tokenizer = try Tokenizer(directory: directory)
            for (text, pieces) in zip(reference.texts, c.pieces) {
                let tokens = tokenizer.tokens(for: text)
                #expect(sameScalars(tokens, pieces), "\(c.pattern) \(behavior) invert=\(c.invert): \(text.debugDescription) -> \(tokens)")
                // Without a decoder, decoding joins the tokens with spaces, as the library does.
                #expect(sameScalars(tokenizer.decode(tokenizer.encode(text)), pieces.joined(separator: " ")))
            }
        }
    }
}
