import Foundation
import QLoRATokenizer
import Testing
import _TestSupport

/// Files this package does not handle, or that are broken, must fail to load with an error
/// naming the file and the problem, never load into a tokenizer that encodes differently.
@Suite struct LoadingErrorTests {
    /// Loads tiny-llama's tokenizer.json after `change`, returning the error it throws.
    private func loadingError(config: [String: Any]? = nil, _ change: (inout [String: Any]) -> Void)
        throws -> (TokenizerError?, URL)
    {
        var json = try fixtureJSON("tokenizers/tiny-llama/tokenizer.json")
        change(&json)
        var files: [String: Any] = ["tokenizer.json": json]
        if let config { files["tokenizer_config.json"] = config }
        let directory = try temporaryTokenizerDirectory(files)
        defer { try? FileManager.default.removeItem(at: directory) }
        let error = #expect(throws: TokenizerError.self) { try Tokenizer(directory: directory) }
        return (error, directory.appendingPathComponent(config == nil ? "tokenizer.json" : "tokenizer_config.json"))
    }

    private func expectUnsupported(_ path: String, _ type: String, _ change: (inout [String: Any]) -> Void) throws {
        let (error, file) = try loadingError(change)
        guard case let .unsupported(url, errorPath, errorType, _)? = error else {
            Issue.record("expected .unsupported for \(path), got \(String(describing: error))")
            return
        }
        #expect(url.path == file.path && errorPath == path && errorType == type)
        #expect(error!.description.contains(file.path) && error!.description.contains(type))
    }

    private static func model(_ json: [String: Any]) -> [String: Any] { json["model"] as? [String: Any] ?? [:] }

    @Test func unsupportedModelTypes() throws {
        for type in ["WordPiece", "Unigram", "WordLevel"] {
            try expectUnsupported("model.type", type) { json in
                var model = Self.model(json)
                model["type"] = type
                json["model"] = model
            }
        }
    }

    @Test func unsupportedComponents() throws {
        try expectUnsupported("normalizer.type", "Lowercase") { $0["normalizer"] = ["type": "Lowercase"] }
        try expectUnsupported("normalizer.normalizers[1].type", "NFKC") {
            $0["normalizer"] = ["type": "Sequence", "normalizers": [["type": "NFC"], ["type": "NFKC"]]]
        }
        try expectUnsupported("pre_tokenizer.type", "Whitespace") { $0["pre_tokenizer"] = ["type": "Whitespace"] }
        try expectUnsupported("decoder.type", "WordPiece") {
            $0["decoder"] = ["type": "WordPiece", "prefix": "##", "cleanup": true]
        }
        try expectUnsupported("post_processor.type", "BertProcessing") {
            $0["post_processor"] = ["type": "BertProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0]]
        }
        try expectUnsupported("model", "dropout") { json in
            var model = Self.model(json)
            model["dropout"] = 0.1
            json["model"] = model
        }
        try expectUnsupported("model", "end_of_word_suffix") { json in
            var model = Self.model(json)
            model["end_of_word_suffix"] = "</w>"
            json["model"] = model
        }
    }

    @Test func unsupportedRegexSyntax() throws {
        let patterns = [
            #"(?<=a)b"#,  // lookbehind
            #"(?i:ss)"#,  // "ss" matches "ß" under Unicode case folding
            #"\bword"#,  // word boundary
            #"a*"#,  // matches the empty string
            #"\p{Greek}"#,  // script property
            #"^a"#,  // anchor
            #"((a{1000}){1000}){1000}"#,  // expands to 10^9 instructions
            String(repeating: "(", count: 200) + "a" + String(repeating: ")", count: 200),
        ]
        for pattern in patterns {
            let (error, file) = try loadingError {
                $0["pre_tokenizer"] = ["type": "Split", "pattern": ["Regex": pattern], "behavior": "Isolated", "invert": false]
            }
            guard case let .unsupportedPattern(url, path, errorPattern, _)? = error else {
                Issue.record("expected .unsupportedPattern for \(pattern), got \(String(describing: error))")
                continue
            }
            #expect(url.path == file.path && path == "pre_tokenizer.pattern.Regex" && errorPattern == pattern)
        }
    }

    @Test func inconsistentFiles() throws {
        func expectInvalid(_ path: String, config: [String: Any]? = nil, _ change: (inout [String: Any]) -> Void) throws {
            let (error, file) = try loadingError(config: config, change)
            guard case let .invalidValue(url, errorPath, _)? = error else {
                Issue.record("expected .invalidValue at \(path), got \(String(describing: error))")
                return
            }
            #expect(url.path == file.path && errorPath == path, "\(String(describing: error))")
        }
        try expectInvalid("model.merges[0]") { json in
            var model = Self.model(json)
            model["merges"] = [["Ġ", "not-a-token"]]
            json["model"] = model
        }
        try expectInvalid("model.merges[1]") { json in
            var model = Self.model(json)
            model["merges"] = ["Ġ Ġ", "t h e"]  // legacy form needs exactly one space
            json["model"] = model
        }
        try expectInvalid("model.vocab") { json in
            var model = Self.model(json)
            model["vocab"] = nil
            json["model"] = model
        }
        try expectInvalid("added_tokens[3]") { json in
            var tokens = json["added_tokens"] as? [[String: Any]] ?? []
            tokens[3]["content"] = "<extra>"  // not in the vocabulary: the library assigns id 384, not 3
            json["added_tokens"] = tokens
        }
        try expectInvalid("version") { $0["version"] = "2.0" }
        try expectInvalid("model.vocab.<huge>") { json in
            var model = Self.model(json)
            var vocab = model["vocab"] as? [String: Any] ?? [:]
            vocab["<huge>"] = 2_000_000_000  // would size the id tables
            model["vocab"] = vocab
            json["model"] = model
        }
        try expectInvalid("post_processor") {
            $0["post_processor"] = [
                "type": "TemplateProcessing",
                "single": [["SpecialToken": ["id": "<s>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                "pair": [], "special_tokens": ["<s>": ["id": "<s>", "ids": [999], "tokens": ["<s>"]]],
            ]
        }
        try expectInvalid("pre_tokenizer.replacement") {
            $0["pre_tokenizer"] = ["type": "Metaspace", "replacement": "ab", "prepend_scheme": "always", "split": true]
        }
        try expectInvalid("pre_tokenizer.behavior") {
            $0["pre_tokenizer"] = ["type": "Split", "pattern": ["String": " "], "behavior": "Sideways", "invert": false]
        }
        try expectInvalid("bos_token", config: ["bos_token": "<bos>"]) { _ in }
        try expectInvalid("(top level)", config: ["add_eos_token": true]) { _ in }
    }

    @Test func unreadableFiles() throws {
        let directory = try temporaryTokenizerDirectory(["tokenizer.model": "not read"])
        defer { try? FileManager.default.removeItem(at: directory) }
        let missing = #expect(throws: TokenizerError.self) { try Tokenizer(directory: directory) }
        #expect(missing?.description.contains("SentencePiece") == true)

        let truncated = try String(contentsOf: Fixtures.url("tokenizers/tiny-llama/tokenizer.json"), encoding: .utf8).prefix(5000)
        let broken = try temporaryTokenizerDirectory(["tokenizer.json": String(truncated)])
        defer { try? FileManager.default.removeItem(at: broken) }
        let invalid = #expect(throws: TokenizerError.self) { try Tokenizer(directory: broken) }
        guard case let .invalidJSON(url, _)? = invalid else {
            Issue.record("expected .invalidJSON, got \(String(describing: invalid))")
            return
        }
        #expect(url.lastPathComponent == "tokenizer.json")
    }
}
