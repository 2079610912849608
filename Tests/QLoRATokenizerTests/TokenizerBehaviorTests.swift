import Foundation
import QLoRAKit
import QLoRATokenizer
import Testing
import _TestSupport

/// tokenizer_config.json handling, lookups, exact (non-canonical) string handling and
/// concurrent use.
@Suite struct TokenizerBehaviorTests {
    private func storiesVariant(config change: (inout [String: Any]) -> Void) throws -> Tokenizer {
        let source = EmbeddedModel.directory
        var config = try JSONSerialization.jsonObject(
            with: Data(contentsOf: source.appendingPathComponent("tokenizer_config.json"))) as? [String: Any] ?? [:]
        change(&config)
        let tokenizerText = try String(contentsOf: source.appendingPathComponent("tokenizer.json"), encoding: .utf8)
        let directory = try temporaryTokenizerDirectory(["tokenizer.json": tokenizerText, "tokenizer_config.json": config])
        defer { try? FileManager.default.removeItem(at: directory) }
        return try Tokenizer(directory: directory)
    }

    @Test func addBOSAndEOSFlagsOverrideTheTemplate() throws {
        let stories = try Tokenizer(directory: EmbeddedModel.directory)
        let text = "Once upon a time"
        let plain = stories.encode(text, addSpecialTokens: false)
        #expect(stories.encode(text) == [1] + plain)

        let withEOS = try storiesVariant { $0["add_eos_token"] = true }
        #expect(withEOS.encode(text) == [1] + plain + [2])
        #expect(withEOS.tokens(for: text, addSpecialTokens: true).last == "</s>")
        #expect(withEOS.encode("") == [1, 2])

        let noBOS = try storiesVariant { $0["add_bos_token"] = false }
        #expect(noBOS.encode(text) == plain)

        // A flag left out keeps what tokenizer.json's template does.
        let eosOnly = try storiesVariant {
            $0["add_bos_token"] = nil
            $0["add_eos_token"] = true
        }
        #expect(eosOnly.encode(text) == [1] + plain + [2])
    }

    @Test func lookups() throws {
        let tokenizer = try Tokenizer(directory: Fixtures.url("tokenizers/llama3-style"))
        let bos = try #require(tokenizer.id(forToken: "<|begin_of_text|>"))
        #expect(tokenizer.bosTokenID == bos)
        #expect(tokenizer.eosTokenIDs == [try #require(tokenizer.id(forToken: "<|eot_id|>"))])
        #expect(tokenizer.token(forID: bos) == "<|begin_of_text|>")
        #expect(tokenizer.id(forToken: "Ġthe") != nil)
        #expect(tokenizer.id(forToken: "not a token") == nil)
        #expect(tokenizer.token(forID: -1) == nil && tokenizer.token(forID: tokenizer.vocabularySize) == nil)
        #expect(tokenizer.tokens(for: "hi", addSpecialTokens: true).first == "<|begin_of_text|>")
        #expect(tokenizer.decode([bos, -5, 1_000_000], skipSpecialTokens: false) == "<|begin_of_text|>")
    }

    /// "é" as one scalar and as "e" + combining acute are different tokens; Swift's String
    /// equality would treat them as the same.
    @Test func canonicallyEquivalentTokensStayDistinct() throws {
        let json = """
            {"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null, "post_processor": null,
             "decoder": {"type": "Fuse"},
             "model": {"type": "BPE", "unk_token": "<unk>", "vocab": {"<unk>": 0, "e": 1, "\\u0301": 2,
                       "\\u00e9": 3, "e\\u0301": 4}, "merges": [["e", "\\u0301"]]}}
            """
        let directory = try temporaryTokenizerDirectory(["tokenizer.json": json])
        defer { try? FileManager.default.removeItem(at: directory) }
        let tokenizer = try Tokenizer(directory: directory)
        #expect(tokenizer.vocabularySize == 5)
        #expect(tokenizer.encode("\u{E9}") == [3])
        #expect(tokenizer.encode("e\u{301}") == [4])
        #expect(tokenizer.encode("e\u{301}\u{E9}x") == [4, 3, 0])
        #expect(tokenizer.id(forToken: "\u{E9}") == 3 && tokenizer.id(forToken: "e\u{301}") == 4)
        #expect(sameScalars(tokenizer.decode([4, 3]), "e\u{301}\u{E9}"))
    }

    /// One tokenizer used from many threads at once (its word cache is shared) gives the same
    /// ids as sequential use.
    @Test func concurrentEncoding() throws {
        let tokenizer = try Tokenizer(directory: Fixtures.url("tokenizers/llama3-style"))
        let texts = try FineTuningLine.load("valid").map { $0.prompt + $0.completion }
        let expected = texts.map { tokenizer.encode($0) }
        let results = ResultBox(count: texts.count * 4)
        DispatchQueue.concurrentPerform(iterations: texts.count * 4) { i in
            results.set(i, tokenizer.encode(texts[i % texts.count]))
        }
        for i in 0..<texts.count * 4 { #expect(results.get(i) == expected[i % texts.count]) }
    }
}

/// Thread-safe slots for results computed in parallel.
private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [[Int]]
    init(count: Int) { values = Array(repeating: [], count: count) }
    func set(_ i: Int, _ value: [Int]) { lock.withLock { values[i] = value } }
    func get(_ i: Int) -> [Int] { lock.withLock { values[i] } }
}

/// Stop strings cut a stream wherever its chunks split them, and nothing of one is shown.
@Suite struct StopTextTests {
    func stream(_ chunks: [String], stops: [String]) -> (shown: String, stopped: Bool) {
        var stop = StopText(stops)
        var shown = ""
        for chunk in chunks { shown += stop.append(chunk) }
        return (shown + stop.finish(), stop.isStopped)
    }

    @Test func cutAtTheFirstStopWhereverTheChunksSplitIt() {
        let text = "Four.<|im_end|>\n<|im_start|>user"
        for split in 0...text.count {
            let chunks = [String(text.prefix(split)), String(text.dropFirst(split))]
            #expect(stream(chunks, stops: ["<|im_end|>"]) == ("Four.", true), "split at \(split)")
        }
        // Character by character: no chunk shows a piece of the marker.
        var stop = StopText(["<|im_end|>"])
        let shown = text.map { stop.append(String($0)) }
        #expect(shown.joined() == "Four." && !shown.contains { $0.contains("<") })
        #expect(stop.append("more") == "" && stop.finish() == "")
    }

    @Test func heldBackTextThatNeverBecomesAStopIsShown() {
        #expect(stream(["a <|im", "_start|> b <"], stops: ["<|im_end|>"]) == ("a <|im_start|> b <", false))
        #expect(stream(["x", "y"], stops: []) == ("xy", false))
        // The earliest of several stops wins.
        #expect(stream(["one</s>two<|im_end|>"], stops: ["<|im_end|>", "</s>"]) == ("one", true))
    }
}
