// Added tokens (special tokens such as <s>, and user-added ones) are cut out of the text
// before the model runs, so "<s>" in the input becomes one id instead of "<", "s", ">".
// Tokens with normalized: false are matched in the raw text; the others in each normalized
// piece, using their own normalized form. Matching is leftmost-longest, like the library's
// Aho-Corasick automaton, with its lstrip / rstrip / single_word adjustments.

struct AddedToken: Sendable {
    let id: Int32
    let content: Scalars
    let singleWord: Bool
    let lstrip: Bool
    let rstrip: Bool
    let normalized: Bool
    let special: Bool
}

/// A prefix tree over token contents for longest-match lookup.
private struct TokenTrie: Sendable {
    private var children: [[Unicode.Scalar: Int32]] = [[:]]
    private var terminal: [Int32] = [-1]  // index into AddedVocabulary.tokens, -1 if none
    private var firstASCII: (UInt64, UInt64) = (0, 0)  // ASCII scalars that start a pattern

    init(_ entries: [(pattern: Scalars, token: Int)]) {
        for (pattern, token) in entries where !pattern.isEmpty {
            let first = pattern[0].value
            if first < 64 { firstASCII.0 |= 1 << UInt64(first) } else if first < 128 { firstASCII.1 |= 1 << UInt64(first - 64) }
            var node = 0
            for s in pattern {
                if let child = children[node][s] {
                    node = Int(child)
                } else {
                    children.append([:])
                    terminal.append(-1)
                    children[node][s] = Int32(children.count - 1)
                    node = children.count - 1
                }
            }
            terminal[node] = Int32(token)
        }
    }

    /// The longest pattern starting at `start`: (token index, end).
    func longestMatch(in text: Scalars, at start: Int) -> (token: Int, end: Int)? {
        // Most positions start no token; an ASCII bitmap answers that without hashing.
        let first = text[start].value
        if first < 128 && (first < 64 ? firstASCII.0 >> UInt64(first) : firstASCII.1 >> UInt64(first - 64)) & 1 == 0 {
            return nil
        }
        var node = 0
        var best: (Int, Int)?
        var i = start
        while i < text.count, let child = children[node][text[i]] {
            node = Int(child)
            i += 1
            if terminal[node] >= 0 { best = (Int(terminal[node]), i) }
        }
        return best
    }
}

/// A segment of text after added tokens are cut out.
enum Segment {
    case token(id: Int32, text: Scalars)
    case text(Piece)
}

struct AddedVocabulary: Sendable {
    /// Tokens in file order, duplicates merged.
    private(set) var tokens: [AddedToken] = []
    private(set) var idByContent: [[UInt8]: Int32] = [:]
    /// What `decode` shows for each added id: the content, or its normalized form for
    /// normalized tokens (as the library does).
    private(set) var textByID: [Int32: Scalars] = [:]
    private(set) var specialContents: Set<[UInt8]> = []
    private var rawTrie: TokenTrie?
    private var normalizedTrie: TokenTrie?

    /// Registers the "added_tokens" array the way the library does on load: a token already in
    /// the model vocabulary keeps that id, others get ids from the vocabulary size upward.
    /// An id in the file that disagrees with that assignment is an error (the library only
    /// warns, and would then encode with ids the model was not trained with).
    init(_ node: JSONNode?, model: BPEModel, normalizer: Normalizer?) throws(TokenizerError) {
        guard let node else { return }
        var nextID = Int32(model.vocabularyCount)
        var indexByID: [Int32: Int] = [:]
        for entry in try node.array() {
            let content = try entry.string("content")
            guard !content.isEmpty else { continue }
            let contentBytes = Array(content.utf8)
            let id: Int32
            if let existing = idByContent[contentBytes] ?? model.vocab[contentBytes] {
                id = existing
            } else {
                id = nextID
                nextID += 1
            }
            let declared = try entry.required("id").int()
            guard declared == Int(id) else {
                throw entry.invalid("token \"\(content)\" has id \(declared) but the tokenizers library assigns it \(id)")
            }
            let token = AddedToken(
                id: id, content: Array(content.unicodeScalars),
                singleWord: try entry.bool("single_word", default: false),
                lstrip: try entry.bool("lstrip", default: false),
                rstrip: try entry.bool("rstrip", default: false),
                normalized: try entry.bool("normalized", default: true),
                special: try entry.bool("special", default: false))
            idByContent[contentBytes] = id
            if token.special { specialContents.insert(contentBytes) }
            if let index = indexByID[id] {
                tokens[index] = token
            } else {
                indexByID[id] = tokens.count
                tokens.append(token)
            }
        }
        var raw: [(Scalars, Int)] = []
        var normalized: [(Scalars, Int)] = []
        for (index, token) in tokens.enumerated() {
            var text = token.content
            if token.normalized, let normalizer { text = normalizer.apply(text) }
            textByID[token.id] = text
            if token.normalized { normalized.append((text, index)) } else { raw.append((text, index)) }
        }
        rawTrie = raw.isEmpty ? nil : TokenTrie(raw)
        normalizedTrie = normalized.isEmpty ? nil : TokenTrie(normalized)
    }

    func isSpecial(_ text: Scalars) -> Bool { specialContents.contains(Array(String(scalars: text).utf8)) }

    /// Cuts the raw-text tokens out of `text`, then normalizes the remaining pieces and cuts
    /// the normalized tokens out of them.
    func extract(_ text: Scalars, normalizer: Normalizer?) -> [Segment] {
        var segments: [Segment] = []
        for segment in split(Piece(scalars: text, atStart: true), with: rawTrie) {
            guard case var .text(piece) = segment else {
                segments.append(segment)
                continue
            }
            if let normalizer { piece.scalars = normalizer.apply(piece.scalars) }
            segments.append(contentsOf: split(piece, with: normalizedTrie))
        }
        return segments
    }

    private func split(_ piece: Piece, with trie: TokenTrie?) -> [Segment] {
        let text = piece.scalars
        guard !text.isEmpty else { return [] }
        guard let trie else { return [.text(piece)] }
        var segments: [Segment] = []
        func addText(from lower: Int, to upper: Int) {
            // An rstrip token can end past where the next match starts; nothing lies between.
            guard lower < upper else { return }
            segments.append(.text(Piece(scalars: Array(text[lower..<upper]), atStart: piece.atStart && lower == 0)))
        }
        var consumed = 0  // end of the last emitted segment
        var position = 0  // where the search resumes (after a rejected match too)
        while position < text.count {
            guard let (index, matchEnd) = trie.longestMatch(in: text, at: position) else {
                position += 1
                continue
            }
            let token = tokens[index]
            var start = position
            var end = matchEnd
            position = matchEnd
            if token.singleWord {
                let wordBefore = start > 0 && Self.isWordScalar(text[start - 1])
                let wordAfter = end < text.count && Self.isWordScalar(text[end])
                if wordBefore || wordAfter { continue }
            }
            if token.lstrip {
                var s = start
                while s > 0 && text[s - 1].properties.isWhitespace { s -= 1 }
                start = max(s, consumed)
            }
            if token.rstrip {
                while end < text.count && text[end].properties.isWhitespace { end += 1 }
            }
            addText(from: consumed, to: start)
            segments.append(.token(id: token.id, text: Array(text[start..<end])))
            consumed = end
        }
        addText(from: consumed, to: text.count)
        return segments
    }

    /// Rust regex's Unicode \w, which the library uses for single_word boundaries.
    private static func isWordScalar(_ s: Unicode.Scalar) -> Bool {
        let p = s.properties
        if p.isAlphabetic || p.isJoinControl { return true }
        switch p.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }
}
