import Foundation

/// Token sequences to evaluate, read from a file in one of two forms:
///
/// - JSON lines (the first non-blank character of the file is "{"): one
///   object per line, either {"text": "..."} (tokenized on its own, with the
///   tokenizer's special tokens, BOS for Llama) or {"input_ids": [...]} (used
///   as given). Blank lines are skipped.
/// - Plain text otherwise: the whole file is one text, tokenized once with
///   BOS; the evaluator cuts it into context windows.
public enum EvaluationData {
    /// - Parameters:
    ///   - vocabularySize: ids must lie in 0..<vocabularySize.
    ///   - tokenizer: called once, and only when there is text to tokenize
    ///     ("input_ids" lines do without).
    /// - Throws: `EvaluationDataError` naming the file (and line) for
    ///   unreadable or malformed data, ids outside the vocabulary, and data
    ///   with no sequence of at least 2 tokens; what `tokenizer` throws.
    public static func load(_ url: URL, vocabularySize: Int, tokenizer: () throws -> Tokenizer) throws -> [[Int32]] {
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw EvaluationDataError.unreadable(url, reason: error.localizedDescription)
        }
        guard let text = String(data: data, encoding: .utf8) else { throw EvaluationDataError.unreadable(url, reason: "not UTF-8 text") }
        var loaded: Tokenizer?
        func encode(_ text: String) throws -> [Int32] {
            let tokenizer = try loaded ?? tokenizer()
            loaded = tokenizer
            return tokenizer.encode(text).map(Int32.init)
        }
        var sequences: [[Int32]] = []
        if text.first(where: { !$0.isWhitespace }) == "{" {
            for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let number = index + 1
                guard !line.allSatisfy(\.isWhitespace) else { continue }
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                    throw EvaluationDataError.invalidLine(url, line: number, reason: "not a JSON object")
                }
                if let text = object["text"] as? String {
                    sequences.append(try encode(text))
                } else if let ids = object["input_ids"] as? [Any] {
                    sequences.append(try ids.enumerated().map { i, value in
                        guard let id = value as? Int else {
                            throw EvaluationDataError.invalidLine(url, line: number, reason: "input_ids[\(i)] = \(value) is not an integer")
                        }
                        guard (0..<vocabularySize).contains(id) else {
                            throw EvaluationDataError.tokenOutOfVocabulary(url, line: number, index: i, token: id, vocabularySize: vocabularySize)
                        }
                        return Int32(id)
                    })
                } else {
                    throw EvaluationDataError.invalidLine(url, line: number, reason: "the object has neither a \"text\" string nor an \"input_ids\" array")
                }
            }
        } else {
            sequences = [try encode(text)]
        }
        let tokens = sequences.reduce(0) { $0 + $1.count }
        guard sequences.contains(where: { $0.count >= 2 }) else {
            throw EvaluationDataError.tooFewTokens(url, tokens: tokens, sequences: sequences.count)
        }
        return sequences
    }
}

public enum EvaluationDataError: Error, LocalizedError, Equatable {
    case unreadable(URL, reason: String)
    case invalidLine(URL, line: Int, reason: String)
    case tokenOutOfVocabulary(URL, line: Int, index: Int, token: Int, vocabularySize: Int)
    case tooFewTokens(URL, tokens: Int, sequences: Int)

    public var errorDescription: String? {
        switch self {
        case let .unreadable(url, reason):
            "\(url.path): cannot read the data (\(reason))"
        case let .invalidLine(url, line, reason):
            "\(url.path):\(line): \(reason)"
        case let .tokenOutOfVocabulary(url, line, index, token, vocabularySize):
            "\(url.path):\(line): input_ids[\(index)] = \(token) is outside the model's vocabulary 0..<\(vocabularySize)"
        case let .tooFewTokens(url, tokens, sequences):
            "\(url.path): too few tokens to evaluate: \(tokens) token\(tokens == 1 ? "" : "s") in \(sequences) sequence\(sequences == 1 ? "" : "s"), and evaluation needs a sequence of at least 2 (one to predict from, one to predict)"
        }
    }
}
