import Foundation

// Normalizers rewrite each text piece before pre-tokenization. Text is handled as Unicode
// scalars throughout (the library works on Rust chars, which are scalars), never as
// Swift Characters, so combining marks and emoji sequences are split exactly where the
// library splits them.

typealias Scalars = [Unicode.Scalar]

extension String {
    init(scalars: some Sequence<Unicode.Scalar>) {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        self.init(view)
    }
}

/// A pattern in a tokenizer.json: `{"String": "..."}` (a literal) or `{"Regex": "..."}`.
enum TextPattern {
    static func parse(_ node: JSONNode) throws(TokenizerError) -> ScalarRegex {
        if let literal = node.optional("String") {
            let scalars = Array(try literal.string().unicodeScalars)
            guard !scalars.isEmpty else { throw literal.invalid("empty pattern") }
            return ScalarRegex(literal: scalars)
        }
        if let regex = node.optional("Regex") {
            let pattern = try regex.string()
            do {
                return try ScalarRegex(pattern: pattern)
            } catch {
                throw .unsupportedPattern(regex.file, path: regex.path, pattern: pattern, reason: error.reason)
            }
        }
        throw node.invalid("expected {\"String\": ...} or {\"Regex\": ...}")
    }

    /// `text` with every match of `regex` replaced by `content`.
    static func replace(_ regex: ScalarRegex, with content: Scalars, in text: Scalars) -> Scalars {
        let matches = regex.matches(in: text)
        guard !matches.isEmpty else { return text }
        var result = Scalars()
        result.reserveCapacity(text.count)
        var last = 0
        for m in matches {
            result.append(contentsOf: text[last..<m.lowerBound])
            result.append(contentsOf: content)
            last = m.upperBound
        }
        result.append(contentsOf: text[last...])
        return result
    }
}

/// The tokenizer.json "normalizer".
indirect enum Normalizer: Sendable {
    case sequence([Normalizer])
    /// Prepends the string to non-empty text (SentencePiece's "▁" before the first word).
    case prepend(Scalars)
    case replace(ScalarRegex, Scalars)
    /// Unicode canonical composition (Qwen-style tokenizers).
    case nfc

    static let supported = "Sequence, Prepend, Replace, NFC"

    static func parse(_ node: JSONNode) throws(TokenizerError) -> Normalizer {
        let type = try node.typeTag()
        switch type {
        case "Sequence":
            return .sequence(try node.required("normalizers").array().map { (n) throws(TokenizerError) in try parse(n) })
        case "Prepend":
            return .prepend(Array(try node.string("prepend").unicodeScalars))
        case "Replace":
            return .replace(try TextPattern.parse(try node.required("pattern")),
                            Array(try node.string("content").unicodeScalars))
        case "NFC":
            return .nfc
        default:
            throw node.unsupportedType(type, supported: supported)
        }
    }

    func apply(_ text: Scalars) -> Scalars {
        switch self {
        case let .sequence(normalizers):
            return normalizers.reduce(text) { $1.apply($0) }
        case let .prepend(prefix):
            return text.isEmpty ? text : prefix + text
        case let .replace(regex, content):
            return TextPattern.replace(regex, with: content, in: text)
        case .nfc:
            return Array(String(scalars: text).precomposedStringWithCanonicalMapping.unicodeScalars)
        }
    }
}
