import Foundation

/// Token sequences to evaluate and, for data in the training formats, which of
/// their tokens count (`Evaluator.evaluate(_:scored:)`).
public struct EvaluationSet: Sendable, Equatable {
    public var sequences: [[Int32]]
    /// Per sequence, one flag per token; nil scores every token after a sequence's first.
    public var scored: [[Bool]]?

    public init(sequences: [[Int32]], scored: [[Bool]]? = nil) {
        self.sequences = sequences
        self.scored = scored
    }

    public var tokenCount: Int { sequences.reduce(0) { $0 + $1.count } }
}

extension Evaluator {
    /// Scores `data` (every token after a sequence's first, or those it marks).
    public func evaluate(_ data: EvaluationSet) throws -> EvaluationResult {
        try evaluate(data.sequences, scored: data.scored)
    }
}

/// Evaluation data, read from a file in one of these forms:
///
/// - JSON lines (the first non-blank character of the file is "{"): one
///   object per line, either {"text": "..."} (tokenized on its own, with the
///   tokenizer's special tokens, BOS for Llama) or {"input_ids": [...]} (used
///   as given); every token after a sequence's first is scored. Blank lines
///   are skipped.
/// - JSON lines in the fine-tuning formats, told by the first line's keys:
///   {"prompt": ..., "completion": ...} or {"messages": [...]}. Each line is
///   tokenized as training does (`ExampleBuilder`: EOS after completions,
///   the chat template's turns) and only what training's loss counts is
///   scored: completions and assistant turns. So a validation file gives the
///   validation loss a training run reports.
/// - Plain text otherwise: the whole file is one text, tokenized once with
///   BOS; the evaluator cuts it into context windows.
public enum EvaluationData {
    /// - Parameters:
    ///   - vocabularySize: ids must lie in 0..<vocabularySize.
    ///   - tokenizer: called once, and only when there is text to tokenize
    ///     ("input_ids" lines do without).
    ///   - chatTemplate: renders "messages" lines.
    ///   - appendEOS: end completions with EOS, as training does by default.
    /// - Throws: `EvaluationDataError` naming the file (and line) for
    ///   unreadable or malformed data, ids outside the vocabulary, and data
    ///   with no sequence of at least 2 tokens; `DatasetError` and
    ///   `ChatTemplateError` for the fine-tuning formats; what `tokenizer` throws.
    public static func load(_ url: URL, vocabularySize: Int, chatTemplate: ChatTemplate? = nil, appendEOS: Bool = true,
                            tokenizer: () throws -> Tokenizer) throws -> EvaluationSet {
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
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            if let first = lines.first(where: { !$0.allSatisfy(\.isWhitespace) }),
               let object = try? JSONSerialization.jsonObject(with: Data(first.utf8)) as? [String: Any],
               ["prompt", "completion", "messages"].contains(where: { object[$0] != nil }) {
                return try fineTuning(data, source: url, vocabularySize: vocabularySize, chatTemplate: chatTemplate,
                                      appendEOS: appendEOS, tokenizer: tokenizer())
            }
            for (index, line) in lines.enumerated() {
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
                    throw EvaluationDataError.invalidLine(url, line: number, reason: "the object has neither a \"text\" string nor an \"input_ids\" array (a file of \"prompt\"/\"completion\" or \"messages\" lines starts with one)")
                }
            }
        } else {
            sequences = [try encode(text)]
        }
        let tokens = sequences.reduce(0) { $0 + $1.count }
        guard sequences.contains(where: { $0.count >= 2 }) else {
            throw EvaluationDataError.tooFewTokens(url, tokens: tokens, sequences: sequences.count)
        }
        return EvaluationSet(sequences: sequences)
    }

    /// Lines in the fine-tuning formats, scored where training's loss is.
    private static func fineTuning(_ data: Data, source: URL, vocabularySize: Int, chatTemplate: ChatTemplate?,
                                   appendEOS: Bool, tokenizer: Tokenizer) throws -> EvaluationSet {
        let records = try data.withUnsafeBytes { try JSONLines.parse($0, source: source) }
        let options = ExampleOptions(maxSequenceLength: Int(Int32.max), appendEOS: appendEOS)
        let builder = ExampleBuilder(tokenizer: tokenizer, options: options, chatTemplate: chatTemplate, vocabularySize: vocabularySize)
        let examples = try builder.prepare(records, source: source).examples
        return EvaluationSet(sequences: examples.map(\.inputIDs),
                             scored: examples.map { $0.labels.map { $0 != TrainingExample.ignoreIndex } })
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
