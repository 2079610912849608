// From a dataset folder to the batches the model runs.
//
// A folder holds train.jsonl and optionally valid.jsonl (DatasetFiles); each file is
// read (JSONLines), tokenized into examples (ExampleBuilder) and handed out in batches
// (BatchLoader). The model runs a batch as a TokenBatch: padded rows carry an
// attention mask, packed rows also their sequence ids so that attention stays inside
// each example and positions restart with it.

import Foundation
import QLoRAModel
import QLoRATokenizer
import QLoRATraining

extension Tokenizer: TrainingTokenizer {}

/// The tokenized training and validation sets of a run.
public struct TrainingData: Sendable {
    public let files: DatasetFiles
    public let train: PreparedDataset
    public let valid: PreparedDataset?

    /// Reads and tokenizes the dataset at `url` (a folder with train.jsonl and optional
    /// valid.jsonl, or one .jsonl file).
    /// - Parameter chatTemplate: for chat records; `configuration.chatTemplate`, when set, takes precedence.
    /// - Throws: `DatasetError` and `FileError` naming the file and line, `ChatTemplateError`
    ///   for chats without a usable template.
    public init(url: URL, tokenizer: any TrainingTokenizer, configuration: TrainingConfiguration,
                chatTemplate: ChatTemplate? = nil, vocabularySize: Int) throws {
        files = try DatasetFiles(locating: url)
        let template = try configuration.chatTemplate.map { try ChatTemplate.named($0) } ?? chatTemplate
        let options = ExampleOptions(maxSequenceLength: configuration.maxSequenceLength, appendEOS: configuration.appendEOS,
                                     lossOnPrompt: configuration.lossOnPrompt)
        let builder = ExampleBuilder(tokenizer: tokenizer, options: options, chatTemplate: template, vocabularySize: vocabularySize)
        train = try builder.prepare(JSONLines.read(files.train), source: files.train)
        valid = try files.valid.map { try builder.prepare(JSONLines.read($0), source: $0) }
    }

    /// The longest example of either set, in tokens.
    public var longestExample: Int { max(train.statistics.longest, valid?.statistics.longest ?? 0) }
}

extension TokenBatch {
    /// The model's view of a loader batch: the mask only when a row is padded, the
    /// sequence ids only when a row packs more than one example.
    public init(_ batch: TrainingBatch) {
        let padded = batch.sequenceIDs.contains(0)
        let packed = batch.sequenceIDs.contains { $0 > 1 }
        self.init(tokens: batch.inputIDs, batchSize: batch.rows, length: batch.columns,
                  attentionMask: padded ? batch.attentionMask : nil, positions: batch.positionIDs,
                  targets: batch.targets, sequenceIDs: packed ? batch.sequenceIDs : nil)
    }
}
