// Decoders turn the token strings of an id sequence back into text. Each step maps a list
// of token strings to a new list (the library's decode_chain), and the final list is joined.

/// Names and parsing of SentencePiece byte-fallback tokens (<0x00> ... <0xFF>).
enum ByteFallback {
    static func tokenName(_ byte: Int) -> String {
        let hex = String(byte, radix: 16, uppercase: true)
        return "<0x" + (hex.count == 1 ? "0" + hex : hex) + ">"
    }

    /// The byte a token stands for. Follows the library: six UTF-8 bytes "<0x??>" whose middle
    /// two parse as a base-16 u8 (so "<0x+A>" counts, as Rust's from_str_radix accepts a sign).
    static func byte(of token: Scalars) -> UInt8? {
        guard token.count >= 4, token.count <= 6, token.first == "<", token.last == ">" else { return nil }
        let utf8 = Array(String(scalars: token).utf8)
        guard utf8.count == 6, utf8[1] == UInt8(ascii: "0"), utf8[2] == UInt8(ascii: "x") else { return nil }
        let digits = String(decoding: utf8[3..<5], as: UTF8.self)
        guard !digits.hasPrefix("-") else { return nil }
        return UInt8(digits, radix: 16)
    }
}

/// All tokens in one array (a plain loop: `joined()` over arrays of scalars is unspecialized
/// and several times slower).
func concatenated(_ tokens: [Scalars]) -> Scalars {
    var result = Scalars()
    result.reserveCapacity(tokens.reduce(0) { $0 + $1.count })
    for token in tokens { result.append(contentsOf: token) }
    return result
}

/// The tokenizer.json "decoder".
indirect enum Decoder: Sendable {
    case sequence([Decoder])
    /// Maps byte-level scalars back to bytes and decodes them as UTF-8, invalid sequences
    /// becoming U+FFFD.
    case byteLevel
    case replace(ScalarRegex, Scalars)
    /// Runs of <0xNN> tokens become their UTF-8 text, or one U+FFFD per byte if invalid.
    case byteFallback
    /// Joins all tokens into one.
    case fuse
    /// Removes up to `start` leading and `stop` trailing copies of `content` from each token.
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    /// Replacement scalars become spaces; in the first token they are dropped unless the
    /// prepend scheme is "never".
    case metaspace(replacement: Unicode.Scalar, dropInFirstToken: Bool)

    static let supported = "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace"

    static func parse(_ node: JSONNode) throws(TokenizerError) -> Decoder {
        let type = try node.typeTag()
        switch type {
        case "Sequence":
            return .sequence(try node.required("decoders").array().map { (n) throws(TokenizerError) in try parse(n) })
        case "ByteLevel":
            return .byteLevel
        case "Replace":
            return .replace(try TextPattern.parse(try node.required("pattern")), Array(try node.string("content").unicodeScalars))
        case "ByteFallback":
            return .byteFallback
        case "Fuse":
            return .fuse
        case "Strip":
            let start = try node.required("start").int()
            let stop = try node.required("stop").int()
            guard start >= 0, stop >= 0 else { throw node.invalid("start and stop must not be negative") }
            return .strip(content: try PreTokenizer.singleScalar(try node.required("content")), start: start, stop: stop)
        case "Metaspace":
            // Reuse the pre-tokenizer's parsing of replacement / prepend_scheme / add_prefix_space.
            guard case let .metaspace(replacement, scheme, _) = try PreTokenizer.parse(node) else {
                throw node.invalid("expected a Metaspace decoder")
            }
            return .metaspace(replacement: replacement, dropInFirstToken: scheme != .never)
        default:
            throw node.unsupportedType(type, supported: supported)
        }
    }

    func decodeChain(_ tokens: [Scalars]) -> [Scalars] {
        switch self {
        case let .sequence(decoders):
            return decoders.reduce(tokens) { $1.decodeChain($0) }
        case .byteLevel:
            var bytes: [UInt8] = []
            for token in tokens {
                if let tokenBytes = ByteLevel.bytes(of: token) {
                    bytes.append(contentsOf: tokenBytes)
                } else {
                    bytes.append(contentsOf: String(scalars: token).utf8)
                }
            }
            return [Array(String(decoding: bytes, as: UTF8.self).unicodeScalars)]
        case let .replace(regex, content):
            return tokens.map { TextPattern.replace(regex, with: content, in: $0) }
        case .byteFallback:
            var result: [Scalars] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                let text = String(decoding: pending, as: UTF8.self)
                if text.utf8.elementsEqual(pending) {
                    result.append(Array(text.unicodeScalars))
                } else {
                    result.append(contentsOf: repeatElement(["\u{FFFD}"], count: pending.count))
                }
                pending.removeAll()
            }
            for token in tokens {
                if let byte = ByteFallback.byte(of: token) {
                    pending.append(byte)
                } else {
                    flush()
                    result.append(token)
                }
            }
            flush()
            return result
        case .fuse:
            return [concatenated(tokens)]
        case let .strip(content, start, stop):
            return tokens.map { token in
                var lower = 0
                while lower < min(start, token.count) && token[lower] == content { lower += 1 }
                var upper = token.count
                while token.count - upper < stop && upper > lower && token[upper - 1] == content { upper -= 1 }
                return Array(token[lower..<upper])
            }
        case let .metaspace(replacement, dropInFirstToken):
            return tokens.enumerated().map { index, token in
                if index == 0 && dropInFirstToken { return token.filter { $0 != replacement } }
                return token.map { $0 == replacement ? " " : $0 }
            }
        }
    }
}
