import Foundation

/// A Hugging Face tokenizer read from `tokenizer.json` (the `tokenizers` library format) and
/// `tokenizer_config.json`, producing the same ids and text as the library.
///
/// Supported pipelines are the two BPE families used by Llama-style models:
/// - byte-level BPE (GPT-2, Llama 3, Qwen): ByteLevel or Split + ByteLevel pre-tokenizers,
///   ByteLevel decoder, `ignore_merges`;
/// - SentencePiece-style BPE (Llama 2, Mistral, TinyStories): Prepend/Replace normalizers or a
///   Metaspace pre-tokenizer, `byte_fallback`, `unk_token` with `fuse_unk`, and the
///   Replace/ByteFallback/Fuse/Strip or Metaspace decoders.
///
/// Anything else (WordPiece or Unigram models, other normalizers, unsupported regex syntax…)
/// makes the initializer throw, naming the file and the component.
///
/// Encoding runs text through: added-token extraction (special tokens are matched in the raw
/// text, honouring lstrip/rstrip/single_word/normalized), the normalizer, the pre-tokenizer,
/// BPE, and the post-processor's special tokens. `truncation` and `padding` in tokenizer.json
/// are ignored: sequence length is the caller's business.
///
/// The value is immutable and `Sendable`; copies share one cache of merged words, which is
/// safe to use from several threads.
public struct Tokenizer: Sendable {
    private let model: BPEModel
    private let added: AddedVocabulary
    private let normalizer: Normalizer?
    private let preTokenizer: PreTokenizer?
    private let postProcessor: PostProcessor
    private let decoder: Decoder?
    /// Added-token ids that `decode(_:skipSpecialTokens: true)` drops.
    private let skippedIDs: Set<Int32>

    /// Number of token ids: the highest id in the vocabulary or added tokens, plus one.
    public let vocabularySize: Int
    /// The `bos_token` of tokenizer_config.json, if any.
    public let bosTokenID: Int?
    /// Tokens that end generation: `eos_token` of tokenizer_config.json followed by the
    /// `eos_token_id` entries of generation_config.json (when loaded from a directory).
    public let eosTokenIDs: [Int]
    /// The `pad_token` of tokenizer_config.json, if any.
    public let padTokenID: Int?
    /// The BPE model's `unk_token`, if any.
    public let unkTokenID: Int?

    // MARK: - Loading

    /// Loads `tokenizer.json`, and `tokenizer_config.json` and `generation_config.json` when
    /// present, from a Hugging Face model folder.
    ///
    /// - Throws: `TokenizerError` naming the file and the problem.
    public init(directory: URL) throws(TokenizerError) {
        let fileManager = FileManager.default
        let tokenizerJSON = directory.appendingPathComponent("tokenizer.json")
        guard fileManager.fileExists(atPath: tokenizerJSON.path) else {
            let hasSentencePiece = fileManager.fileExists(atPath: directory.appendingPathComponent("tokenizer.model").path)
            throw .unreadableFile(tokenizerJSON, reason: hasSentencePiece
                ? "no tokenizer.json (tokenizer.model, a SentencePiece file, is not supported: save the tokenizer with transformers to get tokenizer.json)"
                : "no tokenizer.json in the directory")
        }
        func optionalFile(_ name: String) -> URL? {
            let url = directory.appendingPathComponent(name)
            return fileManager.fileExists(atPath: url.path) ? url : nil
        }
        try self.init(tokenizerJSON: .init(url: tokenizerJSON), configJSON: optionalFile("tokenizer_config.json").map { .init(url: $0) },
                      generationConfigJSON: optionalFile("generation_config.json").map { .init(url: $0) })
    }

    /// Loads a tokenizer from file contents held in memory, such as the files a packed
    /// checkpoint embeds: `files` maps "tokenizer.json" (required), "tokenizer_config.json"
    /// and "generation_config.json" to their bytes. Errors name `source/<file name>`.
    ///
    /// - Throws: `TokenizerError` naming the file and the problem.
    public init(files: [String: Data], source: URL) throws(TokenizerError) {
        func file(_ name: String) -> Source? {
            files[name].map { Source(url: source.appendingPathComponent(name), contents: $0) }
        }
        guard let tokenizerJSON = file("tokenizer.json") else {
            throw .unreadableFile(source.appendingPathComponent("tokenizer.json"), reason: "\(source.path) holds no tokenizer.json")
        }
        try self.init(tokenizerJSON: tokenizerJSON, configJSON: file("tokenizer_config.json"),
                      generationConfigJSON: file("generation_config.json"))
    }

    /// A file to read: its contents when already in memory, its URL for errors either way.
    private struct Source {
        var url: URL
        var contents: Data?
    }

    /// Loads a tokenizer from explicit files.
    ///
    /// - Parameters:
    ///   - tokenizerJSON: the `tokenizers` library file.
    ///   - configJSON: transformers' tokenizer_config.json; it names the BOS/EOS/pad tokens,
    ///     and its `add_bos_token` / `add_eos_token` override which of them `encode` adds.
    /// - Throws: `TokenizerError` naming the file and the problem.
    public init(tokenizerJSON: URL, configJSON: URL? = nil) throws(TokenizerError) {
        try self.init(tokenizerJSON: Source(url: tokenizerJSON), configJSON: configJSON.map { Source(url: $0) }, generationConfigJSON: nil)
    }

    private init(tokenizerJSON source: Source, configJSON configSource: Source?, generationConfigJSON generationSource: Source?) throws(TokenizerError) {
        let tokenizerJSON = source.url
        let root = try JSONNode.load(tokenizerJSON, contents: source.contents)
        if let version = root.optional("version"), try version.string() != "1.0" {
            throw version.invalid("unknown tokenizer.json version \"\(try version.string())\" (expected 1.0)")
        }
        let model = try BPEModel(try root.required("model"))
        let normalizer = try root.optional("normalizer").map { (n) throws(TokenizerError) in try Normalizer.parse(n) }
        let added = try AddedVocabulary(root.optional("added_tokens"), model: model, normalizer: normalizer)
        self.model = model
        self.normalizer = normalizer
        self.added = added
        preTokenizer = try root.optional("pre_tokenizer").map { (n) throws(TokenizerError) in try PreTokenizer.parse(n) }
        decoder = try root.optional("decoder").map { (n) throws(TokenizerError) in try Decoder.parse(n) }
        var processor = try PostProcessor(root.optional("post_processor"))

        var skipped = Set<Int32>()
        var highest = model.tokensByID.count - 1
        for token in added.tokens {
            highest = max(highest, Int(token.id))
            if let text = added.textByID[token.id], added.isSpecial(text) { skipped.insert(token.id) }
        }
        skippedIDs = skipped
        let vocabularySize = highest + 1
        self.vocabularySize = vocabularySize
        for special in processor.prefix + processor.suffix where Int(special.id) >= vocabularySize {
            throw .invalidValue(tokenizerJSON, path: "post_processor",
                                reason: "special token \"\(special.token)\" has id \(special.id), outside the vocabulary (size \(vocabularySize))")
        }
        unkTokenID = model.unkID.map(Int.init)

        var bos: Int?
        var eos: [Int] = []
        var pad: Int?
        if let configSource {
            let config = try JSONNode.load(configSource.url, contents: configSource.contents)
            func tokenID(_ key: String) throws(TokenizerError) -> (id: Int32, name: String)? {
                guard let node = config.optional(key) else { return nil }
                let name = try (node.optional("content") ?? node).string()
                let bytes = Array(name.utf8)
                guard let id = added.idByContent[bytes] ?? model.vocab[bytes] else {
                    throw node.invalid("token \"\(name)\" is not in the vocabulary of \(tokenizerJSON.lastPathComponent)")
                }
                return (id, name)
            }
            let bosToken = try tokenID("bos_token")
            let eosToken = try tokenID("eos_token")
            bos = bosToken.map { Int($0.id) }
            eos = eosToken.map { [Int($0.id)] } ?? []
            pad = try tokenID("pad_token").map { Int($0.id) }
            try Self.applySpecialTokenFlags(config, bos: bosToken, eos: eosToken, to: &processor)
        }
        if let generationSource {
            let generation = try JSONNode.load(generationSource.url, contents: generationSource.contents)
            if let node = generation.optional("eos_token_id") {
                let entries = (try? node.array()) ?? [node]
                for entry in entries {
                    let id = try entry.int()
                    guard id >= 0 && id < vocabularySize else {
                        throw entry.invalid("eos_token_id \(id) is outside the vocabulary (size \(vocabularySize))")
                    }
                    if !eos.contains(id) { eos.append(id) }
                }
            }
        }
        bosTokenID = bos
        eosTokenIDs = eos
        padTokenID = pad
        postProcessor = processor
    }

    /// transformers' Llama-family tokenizers rebuild the template from `add_bos_token` and
    /// `add_eos_token`. A flag the config leaves out keeps what tokenizer.json does.
    private static func applySpecialTokenFlags(_ config: JSONNode, bos: (id: Int32, name: String)?,
                                               eos: (id: Int32, name: String)?,
                                               to processor: inout PostProcessor) throws(TokenizerError) {
        let addBOS = try config.optional("add_bos_token")?.bool()
        let addEOS = try config.optional("add_eos_token")?.bool()
        guard addBOS != nil || addEOS != nil else { return }
        let hadBOS = processor.prefix.count == 1 && processor.prefix[0].id == bos?.id
        let hadEOS = processor.suffix.count == 1 && processor.suffix[0].id == eos?.id
        if addBOS ?? hadBOS {
            guard let bos else { throw config.invalid("add_bos_token is true but bos_token is not set") }
            processor.prefix = [.init(id: bos.id, token: bos.name)]
        } else {
            processor.prefix = []
        }
        if addEOS ?? hadEOS {
            guard let eos else { throw config.invalid("add_eos_token is true but eos_token is not set") }
            processor.suffix = [.init(id: eos.id, token: eos.name)]
        } else {
            processor.suffix = []
        }
    }

    // MARK: - Encoding

    /// Token ids for `text`.
    ///
    /// - Parameter addSpecialTokens: add the post-processor's special tokens (BOS for Llama).
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var none: [String]?
        return run(text, addSpecialTokens: addSpecialTokens, tokens: &none).map(Int.init)
    }

    /// Token strings for `text`, as the library's `Encoding.tokens` gives them: vocabulary
    /// entries for model tokens, the matched text (with any stripped spaces) for added tokens.
    ///
    /// - Parameter addSpecialTokens: include the post-processor's special tokens. The default
    ///   (false) mirrors transformers' `tokenize`.
    public func tokens(for text: String, addSpecialTokens: Bool = false) -> [String] {
        var tokens: [String]? = []
        _ = run(text, addSpecialTokens: addSpecialTokens, tokens: &tokens)
        return tokens ?? []
    }

    private func run(_ text: String, addSpecialTokens: Bool, tokens: inout [String]?) -> [Int32] {
        var ids: [Int32] = []
        if addSpecialTokens {
            ids += postProcessor.prefix.map(\.id)
            tokens? += postProcessor.prefix.map(\.token)
        }
        for segment in added.extract(Array(text.unicodeScalars), normalizer: normalizer) {
            switch segment {
            case let .token(id, matched):
                ids.append(id)
                tokens?.append(String(scalars: matched))
            case let .text(piece):
                let words = preTokenizer?.apply([piece]) ?? [piece]
                for word in words {
                    let start = ids.count
                    model.tokenize(word.scalars, into: &ids)
                    if tokens != nil {
                        tokens! += ids[start...].map { String(scalars: model.tokensByID[Int($0)] ?? []) }
                    }
                }
            }
        }
        if addSpecialTokens {
            ids += postProcessor.suffix.map(\.id)
            tokens? += postProcessor.suffix.map(\.token)
        }
        return ids
    }

    // MARK: - Decoding and lookup

    /// Text for `ids`. Ids outside the vocabulary are ignored, as the library does.
    ///
    /// - Parameter skipSpecialTokens: drop special added tokens (BOS, EOS, …).
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) -> String {
        var tokens: [Scalars] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            guard let text = tokenScalars(id) else { continue }
            if skipSpecialTokens && skippedIDs.contains(Int32(id)) { continue }
            tokens.append(text)
        }
        guard let decoder else { return tokens.map { String(scalars: $0) }.joined(separator: " ") }
        return String(scalars: concatenated(decoder.decodeChain(tokens)))
    }

    /// The id of a token string (added tokens first, then the model vocabulary), compared by
    /// exact Unicode scalars.
    public func id(forToken token: String) -> Int? {
        let bytes = Array(token.utf8)
        return (added.idByContent[bytes] ?? model.vocab[bytes]).map(Int.init)
    }

    /// The token string of an id (an added token's normalized form where it has one).
    public func token(forID id: Int) -> String? { tokenScalars(id).map { String(scalars: $0) } }

    private func tokenScalars(_ id: Int) -> Scalars? {
        guard id >= 0 && id < vocabularySize else { return nil }
        if let text = added.textByID[Int32(id)] { return text }
        return id < model.tokensByID.count ? model.tokensByID[id] : nil
    }
}
