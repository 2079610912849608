import Foundation
import QLoRAKit
import QLoRATokenizer
import _TestSupport

// Reference data written by the real `tokenizers` library (Tests/Fixtures/tokenizers/
// make_reference.py) and helpers shared by the tokenizer tests.

/// Tests/Fixtures/tokenizers/reference.json.
struct LibraryReference: Decodable {
    let tokenizersVersion: String
    let tokenizers: [String: TokenizerReference]
    let regexCases: RegexCases
    let storiesEval: [String: [DigestRow]]

    static func load() throws -> LibraryReference {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(LibraryReference.self, from: Data(contentsOf: Fixtures.url("tokenizers/reference.json")))
    }
}

struct TokenizerReference: Decodable {
    let vocabSize: Int
    let cases: [EncodeCase]
    let decodeCases: [DecodeCase]
    let streamCases: [StreamCase]
}

struct EncodeCase: Decodable {
    let text: String
    let ids: [Int]
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
