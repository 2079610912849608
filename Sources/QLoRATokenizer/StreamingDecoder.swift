/// Turns generated token ids into text as soon as the text is complete: a token that ends in
/// the middle of a UTF-8 sequence (byte-level or byte-fallback pieces of an emoji, say)
/// yields nothing until the tokens completing it arrive.
///
/// It gives the same chunks as the `tokenizers` library's `DecodeStream`: it decodes a short
/// window of recent ids and returns what the newest id added to the window's text, so
/// decoders that look at neighbouring tokens (the SentencePiece leading-space strip) behave
/// as in a full `decode`.
///
/// ```swift
/// var stream = StreamingDecoder(tokenizer: tokenizer)
/// for id in generatedIDs { if let text = try stream.append(id) { print(text, terminator: "") } }
/// print(stream.finish())
/// ```
public struct StreamingDecoder: Sendable {
    private let tokenizer: Tokenizer
    private let skipSpecialTokens: Bool
    /// Recent ids: those that produced `prefix`, then any not yet emitted.
    private var ids: [Int] = []
    /// UTF-8 of the text already returned for the leading ids of the window.
    private var prefix: [UInt8] = []
    private var prefixIndex = 0

    /// - Parameters:
    ///   - skipSpecialTokens: drop special tokens, as in `Tokenizer.decode`.
    ///   - prompt: ids the stream continues, whose text is already shown (whole characters).
    ///     Without them the first generated token decodes as the start of a text:
    ///     SentencePiece decoders strip its leading space, so "Once upon" + "▁a" would print
    ///     "Once upona".
    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = true, prompt: [Int] = []) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
        // Streamed and dropped, so that the window ends where the prompt's text does: a
        // shorter cut could start inside a run of byte-fallback pieces, which decodes
        // differently alone. A prompt whose pieces do not decode consistently starts afresh.
        do {
            for id in prompt { _ = try append(id) }
        } catch {
            ids = []
            prefix = []
            prefixIndex = 0
        }
    }

    /// Adds one generated id and returns the new text it completes, or nil when there is none
    /// yet.
    ///
    /// - Throws: `TokenizerError.streamPrefixMismatch` when the window's text no longer starts
    ///   with the text already returned (possible with invalid byte-fallback sequences; the
    ///   library fails on the same input).
    public mutating func append(_ id: Int) throws(TokenizerError) -> String? {
        if prefix.isEmpty && !ids.isEmpty {
            let text = tokenizer.decode(ids, skipSpecialTokens: skipSpecialTokens)
            if text.unicodeScalars.last != "\u{FFFD}" {
                prefix = Array(text.utf8)
                prefixIndex = ids.count
            }
        }
        ids.append(id)
        let text = tokenizer.decode(ids, skipSpecialTokens: skipSpecialTokens)
        let bytes = Array(text.utf8)
        // A trailing U+FFFD means the last character is still incomplete.
        guard bytes.count > prefix.count, text.unicodeScalars.last != "\u{FFFD}" else { return nil }
        guard bytes.starts(with: prefix) else {
            throw .streamPrefixMismatch(tokenID: id, expected: String(decoding: prefix, as: UTF8.self), actual: text)
        }
        let newText = String(decoding: bytes[prefix.count...], as: UTF8.self)
        let newPrefixIndex = ids.count - prefixIndex
        ids.removeFirst(prefixIndex)
        prefix = Array(tokenizer.decode(ids, skipSpecialTokens: skipSpecialTokens).utf8)
        prefixIndex = newPrefixIndex
        return newText
    }

    /// Ends the stream: returns text still held back (incomplete UTF-8 shows as U+FFFD) and
    /// resets the decoder for a new sequence. When the whole output is valid UTF-8, the chunks
    /// returned by `append` followed by this rest equal `decode` of all the ids.
    public mutating func finish() -> String {
        let bytes = Array(tokenizer.decode(ids, skipSpecialTokens: skipSpecialTokens).utf8)
        let rest = bytes.count > prefix.count && bytes.starts(with: prefix)
            ? String(decoding: bytes[prefix.count...], as: UTF8.self) : ""
        ids = []
        prefix = []
        prefixIndex = 0
        return rest
    }
}
