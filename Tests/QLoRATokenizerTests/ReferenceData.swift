import Foundation
import QLoRAKit
import QLoRATokenizer
import Testing
import _TestSupport

// Reference data written by the real `tokenizers` library (Tests/Fixtures/tokenizers/
// make_reference.py) and helpers shared by the tokenizer tests.

/// Tests/Fixtures/tokenizers/reference.json.
struct LibraryReference: Decodable {
    let tokenizersVersion: String
    let tokenizers: [String: TokenizerReference]
    let regexCases: RegexCases
    let storiesEval: [String: [DigestRow]]

    static func load() throws -> LibraryReference { try decodeFixture("tokenizers/reference.json") }
}

/// Decodes a JSON fixture whose keys are snake_case.
func decodeFixture<T: Decodable>(_ relative: String) throws -> T {
    let decoder = JSONDecoder()
    decoder.keyDecodingStrategy = .convertFromSnakeCase
    return try decoder.decode(T.self, from: Data(contentsOf: Fixtures.url(relative)))
}

struct TokenizerReference: Decodable {
    let vocabSize: Int
    let cases: [EncodeCase]
    let decodeCases: [DecodeCase]
    let streamCases: [StreamCase]
}

/// An encode case, in the layout of tiny-llama's reference.json ("with_bos" = with the
/// post-processor's special tokens).
struct EncodeCase: Decodable {
    let text: String
    let idsWithBos: [Int]
    let idsNoSpecial: [Int]
    let tokensNoSpecial: [String]
    let decodeSkipSpecial: String
    let decodeKeepSpecial: String
}

struct DecodeCase: Decodable {
    let ids: [Int]
    let skip: String
    let keep: String
}

struct StreamCase: Decodable {
    let ids: [Int]
    let skipSpecial: Bool
    let steps: [StreamStep]
}

/// One DecodeStream.step result: text, nothing yet (null), or the library's error.
enum StreamStep: Decodable, Equatable {
    case text(String)
    case pending
    case error

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .pending
        } else if let text = try? container.decode(String.self) {
            self = .text(text)
        } else {
            _ = try container.decode([String: String].self)
            self = .error
        }
    }
}

struct RegexCases: Decodable {
    let texts: [String]
    let patterns: [RegexCase]
}

struct RegexCase: Decodable {
    let pattern: String
    let behavior: String
    let invert: Bool
    let pieces: [[String]]
}

struct DigestRow: Decodable {
    let count: Int
    let digest: String
    let promptCount: Int
    let promptDigest: String
}

/// The tokenizers the reference covers; stories260K is the copy embedded in QLoRAKit.
enum ReferenceTokenizers {
    static let names = ["tiny-llama", "stories260K", "llama3-style", "metaspace-first", "metaspace-always", "metaspace-never"]

    static func directory(_ name: String) -> URL {
        name == "stories260K" ? EmbeddedModel.directory : Fixtures.url("tokenizers/\(name)")
    }

    static func load(_ name: String) throws -> Tokenizer { try Tokenizer(directory: directory(name)) }
}

/// Checks one encode case: ids with and without special tokens, tokens, and both decodes.
func expectCase(_ c: EncodeCase, _ tokenizer: Tokenizer, _ name: String) {
    #expect(tokenizer.encode(c.text) == c.idsWithBos, "\(name): \(c.text.debugDescription)")
    #expect(tokenizer.encode(c.text, addSpecialTokens: false) == c.idsNoSpecial, "\(name): \(c.text.debugDescription)")
    let tokens = tokenizer.tokens(for: c.text)
    #expect(sameScalars(tokens, c.tokensNoSpecial), "\(name): \(c.text.debugDescription) -> \(tokens)")
    expectDecodes(c.idsWithBos, skip: c.decodeSkipSpecial, keep: c.decodeKeepSpecial, tokenizer, name)
}

func expectDecodes(_ ids: [Int], skip: String, keep: String, _ tokenizer: Tokenizer, _ name: String) {
    let skipped = tokenizer.decode(ids)
    let kept = tokenizer.decode(ids, skipSpecialTokens: false)
    #expect(sameScalars(skipped, skip), "\(name): \(ids) -> \(skipped.debugDescription)")
    #expect(sameScalars(kept, keep), "\(name): \(ids) -> \(kept.debugDescription)")
}

/// Exact comparison by Unicode scalars (Swift's == treats canonically equivalent strings as equal).
func sameScalars(_ a: String, _ b: String) -> Bool { a.unicodeScalars.elementsEqual(b.unicodeScalars) }

func sameScalars(_ a: [String], _ b: [String]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { sameScalars($0, $1) }
}

/// FNV-1a 64 over 4 little-endian bytes per id, as make_reference.py computes it.
func fnv1a64(_ ids: [Int]) -> String {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    for id in ids {
        for shift in stride(from: 0, to: 32, by: 8) {
            hash ^= UInt64((UInt32(truncatingIfNeeded: id) >> UInt32(shift)) & 0xFF)
            hash = hash &* 0x100_0000_01B3
        }
    }
    let hex = String(hash, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
}

/// The embedded stories260K fine-tuning lines (prompt + completion).
struct FineTuningLine: Decodable {
    let prompt: String
    let completion: String

    static func load(_ split: String) throws -> [FineTuningLine] {
        let url = EmbeddedModel.directory.appendingPathComponent("\(split).jsonl")
        let text = try String(contentsOf: url, encoding: .utf8)
        return try text.split(separator: "\n").map { try JSONDecoder().decode(FineTuningLine.self, from: Data($0.utf8)) }
    }
}

/// A fresh temporary directory holding the given files (name -> JSON object or raw text).
func temporaryTokenizerDirectory(_ files: [String: Any]) throws -> URL {
    let directory = FileManager.default.temporaryDirectory
        .appendingPathComponent("qlora-tokenizer-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    for (name, content) in files {
        let data = try (content as? String).map { Data($0.utf8) }
            ?? JSONSerialization.data(withJSONObject: content, options: [.sortedKeys])
        try data.write(to: directory.appendingPathComponent(name))
    }
    return directory
}

/// A fixture's tokenizer.json as a mutable JSON object, for building variants.
func fixtureJSON(_ relative: String) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url(relative)))
    return object as? [String: Any] ?? [:]
}

/// A JSON string literal holding exactly the scalars of `s` (JSONSerialization writes
/// dictionaries keyed by Swift String, which would merge canonically equivalent keys).
func jsonLiteral(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// A BPE tokenizer.json with `ignore_merges`, no merges and the given vocabulary, around a
/// pre-tokenizer: every piece in the vocabulary comes out as one token, so `tokens(for:)`
/// shows the pre-tokenizer's split.
func probeTokenizerJSON(preTokenizer: String, vocabulary: [String]) -> String {
    let vocab = vocabulary.enumerated().map { "\(jsonLiteral($1)): \($0)" }.joined(separator: ", ")
    return """
        {"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": \(preTokenizer),
         "post_processor": null, "decoder": null,
         "model": {"type": "BPE", "unk_token": null, "ignore_merges": true, "vocab": {\(vocab)}, "merges": []}}
        """
}
