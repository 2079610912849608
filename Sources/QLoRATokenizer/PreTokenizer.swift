// Pre-tokenizers cut each normalized piece into the "words" that BPE sees. Splitting follows
// the library's NormalizedString::split rules for each delimiter behaviour, and a piece
// remembers whether it starts at the beginning of the original text, which Metaspace's
// "first" prepend scheme needs.

/// A piece of text on its way to the model.
struct Piece {
    var scalars: Scalars
    /// True when the piece starts at offset 0 of the text passed to `encode`.
    var atStart: Bool
}

/// How matched delimiters are kept when a piece is split (the library's SplitDelimiterBehavior).
enum SplitBehavior: String, Sendable {
    case removed = "Removed"
    case isolated = "Isolated"
    case mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext"
    case contiguous = "Contiguous"
}

/// Where Metaspace puts its replacement character in front of a piece.
enum PrependScheme: String, Sendable {
    case first, always, never
}

/// The tokenizer.json "pre_tokenizer".
indirect enum PreTokenizer: Sendable {
    case sequence([PreTokenizer])
    /// GPT-2 style: optional leading space, optional GPT-2 regex split, then bytes mapped to
    /// printable scalars.
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case split(ScalarRegex, SplitBehavior, invert: Bool)
    /// SentencePiece style: spaces become `replacement`, optionally prepended and split before.
    case metaspace(replacement: Unicode.Scalar, prependScheme: PrependScheme, split: Bool)

    static let supported = "Sequence, ByteLevel, Split, Metaspace"

    static func parse(_ node: JSONNode) throws(TokenizerError) -> PreTokenizer {
        let type = try node.typeTag()
        switch type {
        case "Sequence":
            return .sequence(try node.required("pretokenizers").array().map { (n) throws(TokenizerError) in try parse(n) })
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: try node.bool("add_prefix_space", default: true),
                              useRegex: try node.bool("use_regex", default: true))
        case "Split":
            let behaviorNode = try node.required("behavior")
            let name = try behaviorNode.string()
            guard let behavior = SplitBehavior(rawValue: name) else {
                throw behaviorNode.invalid("unknown split behavior \"\(name)\"")
            }
            return .split(try TextPattern.parse(try node.required("pattern")), behavior,
                          invert: try node.bool("invert", default: false))
        case "Metaspace":
            let replacement = try singleScalar(try node.required("replacement"))
            var scheme = PrependScheme.always
            if let schemeNode = node.optional("prepend_scheme") {
                let name = try schemeNode.string()
                guard let parsed = PrependScheme(rawValue: name) else {
                    throw schemeNode.invalid("unknown prepend_scheme \"\(name)\"")
                }
                scheme = parsed
            }
            // Files written before prepend_scheme existed say add_prefix_space: false instead.
            if let legacy = node.optional("add_prefix_space"), try legacy.bool() == false {
                guard scheme == .never || node.optional("prepend_scheme") == nil else {
                    throw legacy.invalid("add_prefix_space false contradicts prepend_scheme")
                }
                scheme = .never
            }
            return .metaspace(replacement: replacement, prependScheme: scheme, split: try node.bool("split", default: true))
        default:
            throw node.unsupportedType(type, supported: supported)
        }
    }

    /// A JSON string holding exactly one Unicode scalar (a Rust `char`).
    static func singleScalar(_ node: JSONNode) throws(TokenizerError) -> Unicode.Scalar {
        let scalars = Array(try node.string().unicodeScalars)
        guard scalars.count == 1 else { throw node.invalid("expected exactly one character") }
        return scalars[0]
    }

    func apply(_ pieces: [Piece]) -> [Piece] {
        switch self {
        case let .sequence(steps):
            return steps.reduce(pieces) { $1.apply($0) }
        case let .byteLevel(addPrefixSpace, useRegex):
            return pieces.flatMap { piece -> [Piece] in
                var piece = piece
                if addPrefixSpace && piece.scalars.first != " " { piece.scalars.insert(" ", at: 0) }
                let parts = useRegex ? Self.split(piece, at: ByteLevel.splitPattern.matches(in: piece.scalars),
                                                  behavior: .isolated, invert: false) : [piece]
                return parts.map { Piece(scalars: ByteLevel.encode(utf8Of: $0.scalars), atStart: $0.atStart) }
            }
        case let .split(regex, behavior, invert):
            return pieces.flatMap { Self.split($0, at: regex.matches(in: $0.scalars), behavior: behavior, invert: invert) }
        case let .metaspace(replacement, scheme, split):
            return pieces.flatMap { piece -> [Piece] in
                var piece = piece
                for i in piece.scalars.indices where piece.scalars[i] == " " { piece.scalars[i] = replacement }
                let prepend = switch scheme {
                case .always: piece.scalars.first != replacement
                case .first: piece.scalars.first != replacement && piece.atStart
                case .never: false
                }
                if prepend { piece.scalars.insert(replacement, at: 0) }
                guard split else { return [piece] }
                let delimiters = piece.scalars.indices.filter { piece.scalars[$0] == replacement }.map { $0..<$0 + 1 }
                return Self.split(piece, at: delimiters, behavior: .mergedWithNext, invert: false)
            }
        }
    }

    /// Splits `piece` around the (sorted, non-overlapping) `matches` the way the library's
    /// NormalizedString::split does; empty pieces are dropped.
    static func split(_ piece: Piece, at matches: [Range<Int>], behavior: SplitBehavior, invert: Bool) -> [Piece] {
        let count = piece.scalars.count
        guard count > 0 else { return [] }
        // Alternating spans covering the whole piece, each flagged as delimiter or not.
        var spans: [(range: Range<Int>, isMatch: Bool)] = []
        var previous = 0
        for m in matches {
            if previous < m.lowerBound { spans.append((previous..<m.lowerBound, invert)) }
            spans.append((m, !invert))
            previous = m.upperBound
        }
        if previous < count { spans.append((previous..<count, invert)) }

        var kept: [Range<Int>] = []
        switch behavior {
        case .isolated:
            kept = spans.map(\.range)
        case .removed:
            kept = spans.filter { !$0.isMatch }.map(\.range)
        case .contiguous, .mergedWithPrevious:
            var previousMatch = false
            for span in spans {
                // Contiguous joins runs of the same kind; MergedWithPrevious appends a delimiter
                // to the piece before it.
                let joins = behavior == .contiguous ? span.isMatch == previousMatch : span.isMatch && !previousMatch
                if joins, let last = kept.last {
                    kept[kept.count - 1] = last.lowerBound..<span.range.upperBound
                } else {
                    kept.append(span.range)
                }
                previousMatch = span.isMatch
            }
        case .mergedWithNext:
            var previousMatch = false
            for span in spans.reversed() {
                if span.isMatch && !previousMatch, let last = kept.last {
                    kept[kept.count - 1] = span.range.lowerBound..<last.upperBound
                } else {
                    kept.append(span.range)
                }
                previousMatch = span.isMatch
            }
            kept.reverse()
        }
        return kept.filter { !$0.isEmpty }.map {
            Piece(scalars: Array(piece.scalars[$0]), atStart: piece.atStart && $0.lowerBound == 0)
        }
    }
}
