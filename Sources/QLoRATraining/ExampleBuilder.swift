// From dataset records to token ids and labels.
//
// An example is the model's input ids and, for each position, the label: the id
// itself where the loss covers that token, -100 where it does not (Hugging Face's
// convention; the loss at position t predicts labels[t + 1], see TrainingBatch).
//
// Tokenizing pieces separately and concatenating would not give the ids the model
// saw in pre-training: SentencePiece prepends a space to every call and BPE merges
// across the seam. So a run of text is tokenized whole, and the place where each
// piece starts is found by tokenizing the text up to it and taking the common prefix
// with the whole run. A token that straddles a seam (the prompt's last character
// merged with the completion's first) goes to the later piece, so it is trained on;
// `DatasetStatistics.mergedBoundaries` counts such seams. This is what TRL does for
// prompt/completion data.
//
// Text and prompt/completion records are encoded with the tokenizer's special tokens
// (its BOS); chats are encoded without them, because the chat template writes its
// own BOS where the model expects one (apply_chat_template(tokenize=True) does the same).

import Foundation

/// The tokenizer as training needs it; the engine's Tokenizer conforms.
public protocol TrainingTokenizer {
    /// Token ids of `text`; with `addSpecialTokens`, as the tokenizer's post-processor
    /// frames a single sequence (for Llama: BOS first).
    func encode(_ text: String, addSpecialTokens: Bool) throws -> [Int]
    var bosTokenID: Int? { get }
    /// End-of-sequence ids; the first is the one appended after completions.
    var eosTokenIDs: [Int] { get }
}

/// One training sequence.
public struct TrainingExample: Hashable, Sendable {
    /// Label of positions the loss ignores (PyTorch's CrossEntropyLoss ignore_index).
    public static let ignoreIndex: Int32 = -100

    public var inputIDs: [Int32]
    /// Same length as `inputIDs`: the id where the loss covers the token, else `ignoreIndex`.
    public var labels: [Int32]

    public init(inputIDs: [Int32], labels: [Int32]) {
        precondition(inputIDs.count == labels.count, "[TrainingExample] \(inputIDs.count) ids but \(labels.count) labels")
        self.inputIDs = inputIDs
        self.labels = labels
    }

    /// Tokens the loss is computed on: labels after the first (nothing predicts position 0).
    public var targetCount: Int { labels.dropFirst().reduce(0) { $0 + ($1 == Self.ignoreIndex ? 0 : 1) } }
}

/// How records become examples.
public struct ExampleOptions: Hashable, Sendable, Codable {
    /// Longer examples are cut to this many tokens (the start is kept).
    public var maxSequenceLength: Int
    /// Append the tokenizer's EOS after text and completions (trained on, so the model learns to stop).
    public var appendEOS: Bool
    /// Train on prompts and non-assistant chat turns too, not only on completions and assistant turns.
    public var lossOnPrompt: Bool

    public init(maxSequenceLength: Int = 2048, appendEOS: Bool = true, lossOnPrompt: Bool = false) {
        self.maxSequenceLength = maxSequenceLength
        self.appendEOS = appendEOS
        self.lossOnPrompt = lossOnPrompt
    }
}

/// What preparing a dataset did, for the log.
public struct DatasetStatistics: Hashable, Sendable, Codable, CustomStringConvertible {
    public var records = 0
    public var examples = 0
    /// Examples cut to the maximum sequence length.
    public var truncated = 0
    /// Records dropped because no target token was left (after truncation, or none to begin with).
    public var skippedWithoutTargets = 0
    /// Seams between a trained and an untrained piece that fell inside a token.
    public var mergedBoundaries = 0
    public var tokens = 0
    public var targetTokens = 0
    public var longest = 0

    public init() {}

    public var description: String {
        "\(records) records → \(examples) examples (\(skippedWithoutTargets) skipped without target tokens, "
            + "\(truncated) truncated); \(tokens) tokens, \(targetTokens) trained; longest \(longest)"
    }
}

/// The examples of one dataset file.
public struct PreparedDataset: Sendable {
    public var examples: [TrainingExample]
    public var statistics: DatasetStatistics
}

/// Tokenizes records into examples.
public struct ExampleBuilder {
    public let tokenizer: any TrainingTokenizer
    public let options: ExampleOptions
    /// Needed only when the data holds chats.
    public let chatTemplate: ChatTemplate?
    /// Ids must be below this (the model's vocabulary); nil skips the check.
    public let vocabularySize: Int?

    public init(tokenizer: any TrainingTokenizer, options: ExampleOptions, chatTemplate: ChatTemplate? = nil,
                vocabularySize: Int? = nil) {
        self.tokenizer = tokenizer
        self.options = options
        self.chatTemplate = chatTemplate
        self.vocabularySize = vocabularySize
    }

    /// Examples for `records` (of the file `source`), dropping those left without target tokens.
    /// - Throws: `DatasetError` naming the file and line for a chat the template cannot
    ///   render, an id outside the vocabulary, or when no example is left;
    ///   `ChatTemplateError.missing` for chats without a template; tokenizer errors as they come.
    public func prepare(_ records: [DatasetRecord], source: URL) throws -> PreparedDataset {
        guard !records.isEmpty else { throw DatasetError.empty(source) }
        guard options.maxSequenceLength >= 2 else {
            throw DatasetError.nothingToTrain(source, records: records.count, maxSequenceLength: options.maxSequenceLength)
        }
        var stats = DatasetStatistics()
        var examples: [TrainingExample] = []
        examples.reserveCapacity(records.count)
        for record in records {
            stats.records += 1
            var (example, merged) = try encode(record)
            stats.mergedBoundaries += merged
            if example.inputIDs.count > options.maxSequenceLength {
                example.inputIDs.removeLast(example.inputIDs.count - options.maxSequenceLength)
                example.labels.removeLast(example.labels.count - options.maxSequenceLength)
                stats.truncated += 1
            }
            let targets = example.targetCount
            guard targets > 0 else {
                stats.skippedWithoutTargets += 1
                continue
            }
            stats.examples += 1
            stats.tokens += example.inputIDs.count
            stats.targetTokens += targets
            stats.longest = max(stats.longest, example.inputIDs.count)
            examples.append(example)
        }
        guard !examples.isEmpty else {
            throw DatasetError.nothingToTrain(source, records: records.count, maxSequenceLength: options.maxSequenceLength)
        }
        return PreparedDataset(examples: examples, statistics: stats)
    }

    /// The full (untruncated) example of one record and the number of merged seams.
    public func encode(_ record: DatasetRecord) throws -> (TrainingExample, mergedBoundaries: Int) {
        var ids: [Int] = [], trained: [Bool] = []
        var merged = 0
        func append(_ run: [(text: String, trained: Bool)], special: Bool) throws {
            let r = try tokenizeRun(run, addSpecialTokens: special)
            ids += r.ids
            trained += r.trained
            merged += r.merged
        }
        let eos = tokenizer.eosTokenIDs.first
        switch record.content {
        case let .text(text):
            try append([(text, true)], special: true)
            if options.appendEOS, let eos, ids.last != eos { ids.append(eos); trained.append(true) }
        case let .promptCompletion(prompt, completion):
            try append([(prompt, options.lossOnPrompt), (completion, true)], special: true)
            if options.appendEOS, let eos, ids.last != eos { ids.append(eos); trained.append(true) }
        case let .chat(messages):
            guard let chatTemplate else { throw ChatTemplateError.missing(nil) }
            do {
                let chat = try tokenize(chatTemplate.pieces(for: messages), template: chatTemplate)
                (ids, trained, merged) = (chat.ids, chat.trained, chat.merged)
            } catch let ChatTemplateError.unsupportedChat(template, reason) {
                throw DatasetError.unsupportedChat(record.source, line: record.line, template: template.description, reason: reason)
            }
        }
        let limit = min(vocabularySize ?? Int(Int32.max), Int(Int32.max))
        if let bad = ids.first(where: { $0 < 0 || $0 >= limit }) {
            throw DatasetError.invalidLine(record.source, line: record.line,
                                           reason: "the tokenizer produced id \(bad), outside the model's vocabulary of \(limit)")
        }
        let inputIDs = ids.map { Int32($0) }
        let labels = zip(inputIDs, trained).map { $1 ? $0 : TrainingExample.ignoreIndex }
        return (TrainingExample(inputIDs: inputIDs, labels: labels), merged)
    }

    /// The ids that prompt a model for the assistant's reply to `messages`: the chat
    /// rendered as in training, then the header of the assistant's turn
    /// (`ChatTemplate.generationPieces`).
    /// - Throws: `ChatTemplateError.missing` without a template, `.unsupportedChat`.
    public func replyPrompt(_ messages: [ChatMessage]) throws -> [Int32] {
        guard let chatTemplate else { throw ChatTemplateError.missing(nil) }
        return try tokenize(chatTemplate.generationPieces(for: messages), template: chatTemplate).ids.map { Int32($0) }
    }

    /// A rendered chat's ids: text pieces tokenized in runs (without special tokens; the
    /// template places BOS and EOS), each token flagged as its piece is.
    private func tokenize(_ pieces: [ChatPiece], template: ChatTemplate) throws -> (ids: [Int], trained: [Bool], merged: Int) {
        var ids: [Int] = [], trained: [Bool] = []
        var merged = 0
        var run: [(text: String, trained: Bool)] = []
        func flush() throws {
            let r = try tokenizeRun(run, addSpecialTokens: false)
            ids += r.ids
            trained += r.trained
            merged += r.merged
            run = []
        }
        for piece in pieces {
            switch piece {
            case let .text(text, t):
                run.append((text, t || options.lossOnPrompt))
            case .bos, .eos:
                try flush()
                guard let id = piece == .bos ? tokenizer.bosTokenID : tokenizer.eosTokenIDs.first else {
                    throw ChatTemplateError.unsupportedChat(template, "it needs a \(piece == .bos ? "BOS" : "EOS") token the tokenizer does not have")
                }
                ids.append(id)
                if case let .eos(t) = piece { trained.append(t || options.lossOnPrompt) } else { trained.append(options.lossOnPrompt) }
            }
        }
        try flush()
        return (ids, trained, merged)
    }

    /// Tokenizes the concatenated pieces once and marks each token with the flag of
    /// the piece it starts in (see the file comment).
    private func tokenizeRun(_ run: [(text: String, trained: Bool)], addSpecialTokens: Bool) throws
        -> (ids: [Int], trained: [Bool], merged: Int) {
        // Adjacent pieces with the same flag need no boundary between them.
        var chunks: [(text: String, trained: Bool)] = []
        for piece in run where !piece.text.isEmpty {
            if let last = chunks.last, last.trained == piece.trained {
                chunks[chunks.count - 1].text += piece.text
            } else {
                chunks.append(piece)
            }
        }
        guard !chunks.isEmpty else { return ([], [], 0) }
        let whole = chunks.map(\.text).joined()
        let ids = try tokenizer.encode(whole, addSpecialTokens: addSpecialTokens)
        var trained = [Bool](repeating: chunks[0].trained, count: ids.count)
        var merged = 0
        var prefix = ""
        for k in 1..<chunks.count {
            prefix += chunks[k - 1].text
            var head = try tokenizer.encode(prefix, addSpecialTokens: addSpecialTokens)
            // A post-processor that appends EOS puts it after the prefix too; it is no seam.
            if addSpecialTokens, let last = head.last, tokenizer.eosTokenIDs.contains(last) { head.removeLast() }
            var start = 0
            while start < head.count, start < ids.count, head[start] == ids[start] { start += 1 }
            if start < head.count { merged += 1 }
            for i in start..<ids.count { trained[i] = chunks[k].trained }
        }
        return (ids, trained, merged)
    }
}
