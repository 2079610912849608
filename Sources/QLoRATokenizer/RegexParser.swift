// Parser for the subset of Oniguruma (Ruby syntax) that tokenizer.json patterns use:
// GPT-2's ByteLevel split, the Llama-3 / Qwen2 Split patterns and similar ones. Anything
// outside the subset is rejected with a reason rather than approximated.
//
// Supported: literals and escapes (\t \n \r \f \v \a \e \xHH \x{H..} \uHHHH, escaped
// punctuation), `.`, classes `[...]` / `[^...]` with ranges, \s \S \d \D \w \W, \p{Cat} /
// \P{Cat} / \p{^Cat} for general categories, groups `(...)` `(?:...)` `(?i:...)`,
// lookahead `(?=...)` `(?!...)`, alternation, and greedy or lazy `? * + {n} {n,} {,m} {n,m}`.
// Case-insensitive groups are limited to ASCII literals and ranges, without the letter
// pairs that Unicode full case folding can produce from one scalar (ss, st, ff, fi, fl).

indirect enum RegexNode {
    case set(ScalarClass)
    case sequence([RegexNode])
    case alternation([RegexNode])
    case repetition(RegexNode, min: Int, max: Int?, greedy: Bool)
    case lookahead(RegexNode, negated: Bool)

    /// Whether the node can match without consuming input.
    var isNullable: Bool {
        switch self {
        case .set: return false
        case let .sequence(nodes): return nodes.allSatisfy(\.isNullable)
        case let .alternation(nodes): return nodes.contains(where: \.isNullable)
        case let .repetition(node, min, _, _): return min == 0 || node.isNullable
        case .lookahead: return true
        }
    }

    /// About how many instructions compiling the node emits (counted repetition copies its
    /// body), saturating, so hostile patterns can be refused before they are expanded.
    var compiledSize: Int {
        switch self {
        case .set: return 1
        case let .sequence(nodes): return nodes.reduce(0) { $0.addingSaturating($1.compiledSize) }
        case let .alternation(nodes): return nodes.reduce(2 * nodes.count) { $0.addingSaturating($1.compiledSize) }
        case let .repetition(node, min, max, _):
            let copies = Swift.max(min, max ?? min + 1)
            return node.compiledSize.multipliedSaturating(by: copies).addingSaturating(copies + 2)
        case let .lookahead(node, _): return node.compiledSize.addingSaturating(2)
        }
    }
}

extension Int {
    fileprivate func addingSaturating(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }

    fileprivate func multipliedSaturating(by other: Int) -> Int {
        let (product, overflow) = multipliedReportingOverflow(by: other)
        return overflow ? .max : product
    }
}

struct RegexSyntaxError: Error {
    let reason: String
}

struct RegexParser {
    private let scalars: [Unicode.Scalar]
    private var index = 0
    private var depth = 0
    private static let maxRepeat = 1000
    private static let maxDepth = 100

    static func parse(_ pattern: String) throws(RegexSyntaxError) -> RegexNode {
        var parser = RegexParser(scalars: Array(pattern.unicodeScalars))
        let node = try parser.parseAlternation(caseInsensitive: false)
        guard parser.index == parser.scalars.count else { throw parser.fail("unbalanced ')'") }
        return node
    }

    private init(scalars: [Unicode.Scalar]) { self.scalars = scalars }

    private func fail(_ reason: String) -> RegexSyntaxError {
        RegexSyntaxError(reason: "\(reason) (at character \(index))")
    }

    private var peek: Unicode.Scalar? { index < scalars.count ? scalars[index] : nil }

    private mutating func next() throws(RegexSyntaxError) -> Unicode.Scalar {
        guard index < scalars.count else { throw fail("unexpected end of pattern") }
        defer { index += 1 }
        return scalars[index]
    }

    private mutating func consume(_ s: Unicode.Scalar) -> Bool {
        guard peek == s else { return false }
        index += 1
        return true
    }

    // MARK: - Structure

    private mutating func parseAlternation(caseInsensitive: Bool) throws(RegexSyntaxError) -> RegexNode {
        var branches = [try parseSequence(caseInsensitive: caseInsensitive)]
        while consume("|") { branches.append(try parseSequence(caseInsensitive: caseInsensitive)) }
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    private mutating func parseSequence(caseInsensitive: Bool) throws(RegexSyntaxError) -> RegexNode {
        var nodes: [RegexNode] = []
        var previousLiteral: Unicode.Scalar?
        while let c = peek, c != "|", c != ")" {
            let start = index
            var atom = try parseAtom(caseInsensitive: caseInsensitive)
            let literal = literalScalar(from: start)
            if caseInsensitive, let a = previousLiteral, let b = literal {
                let pair = String(a).lowercased() + String(b).lowercased()
                if ["ss", "st", "ff", "fi", "fl"].contains(pair) {
                    throw fail("case-insensitive \"\(pair)\" can match a single scalar through Unicode case folding")
                }
            }
            let quantified = try parseQuantifier(atom)
            if let quantified {
                atom = quantified
                previousLiteral = nil
            } else {
                previousLiteral = literal
            }
            nodes.append(atom)
        }
        return nodes.count == 1 ? nodes[0] : .sequence(nodes)
    }

    /// The scalar when the atom just parsed (from `start`) was one literal character.
    private func literalScalar(from start: Int) -> Unicode.Scalar? {
        guard index - start == 1 else { return nil }
        let c = scalars[start]
        return "\\^$.|?*+()[]{}".unicodeScalars.contains(c) ? nil : c
    }

    private mutating func parseQuantifier(_ atom: RegexNode) throws(RegexSyntaxError) -> RegexNode? {
        guard let c = peek else { return nil }
        var min = 0
        var max: Int?
        switch c {
        case "?": index += 1; max = 1
        case "*": index += 1
        case "+": index += 1; min = 1
        case "{":
            guard let interval = parseInterval() else { return nil }
            (min, max) = interval
        default: return nil
        }
        if case .lookahead = atom { throw fail("quantified lookahead") }
        var greedy = true
        if consume("?") {
            greedy = false
        } else if peek == "+" {
            throw fail("possessive quantifier")
        }
        if let q = peek, "?*+".unicodeScalars.contains(q) { throw fail("nested quantifier") }
        if max == nil && atom.isNullable { throw fail("unbounded repetition of an expression that can match empty") }
        return .repetition(atom, min: min, max: max, greedy: greedy)
    }

    /// `{n}`, `{n,}`, `{,m}` or `{n,m}`; nil (and no input consumed) when the braces are not
    /// an interval, in which case Oniguruma reads `{` as a literal.
    private mutating func parseInterval() -> (Int, Int?)? {
        let start = index
        index += 1
        func number() -> Int? {
            var value: Int?
            while let c = peek, c.value >= 0x30 && c.value <= 0x39 {
                value = (value ?? 0) * 10 + Int(c.value - 0x30)
                index += 1
                if value! > RegexParser.maxRepeat { return RegexParser.maxRepeat + 1 }
            }
            return value
        }
        let low = number()
        var high = low
        var bounded = true
        if consume(",") {
            high = number()
            bounded = high != nil
        }
        guard consume("}"), low != nil || high != nil,
              (low ?? 0) <= RegexParser.maxRepeat, (high ?? 0) <= RegexParser.maxRepeat,
              !bounded || (low ?? 0) <= high! else {
            index = start
            return nil
        }
        return (low ?? 0, bounded ? high : nil)
    }

    private mutating func parseAtom(caseInsensitive: Bool) throws(RegexSyntaxError) -> RegexNode {
        let c = try next()
        switch c {
        case "(": return try parseGroup(caseInsensitive: caseInsensitive)
        case "[": return .set(try parseClass(caseInsensitive: caseInsensitive))
        case ".": return .set(.dot)
        case "\\": return .set(try parseEscape(inClass: false, caseInsensitive: caseInsensitive).set)
        case "^", "$": throw fail("anchors are not supported")
        case "?", "*", "+": throw fail("quantifier without a target")
        default: return .set(try literal(c, caseInsensitive: caseInsensitive))
        }
    }

    private func literal(_ c: Unicode.Scalar, caseInsensitive: Bool) throws(RegexSyntaxError) -> ScalarClass {
        if caseInsensitive && !c.isASCII { throw fail("non-ASCII literal in a case-insensitive group") }
        return .scalar(c, caseInsensitive: caseInsensitive)
    }

    private mutating func parseGroup(caseInsensitive: Bool) throws(RegexSyntaxError) -> RegexNode {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw fail("groups nested deeper than \(Self.maxDepth)") }
        var flag = caseInsensitive
        var lookahead: Bool?  // negated?
        if consume("?") {
            switch try next() {
            case ":": break
            case "=": lookahead = false
            case "!": lookahead = true
            case "i":
                guard consume(":") else { throw fail("only the (?i:...) group form of flags is supported") }
                flag = true
            case "-":
                guard consume("i"), consume(":") else { throw fail("only the (?-i:...) group form of flags is supported") }
                flag = false
            default:
                throw fail("group kind (lookbehind, atomic, named or comment group)")
            }
        }
        let body = try parseAlternation(caseInsensitive: flag)
        guard consume(")") else { throw fail("missing ')'") }
        if let negated = lookahead { return .lookahead(body, negated: negated) }
        return body
    }

    // MARK: - Classes and escapes

    private mutating func parseClass(caseInsensitive: Bool) throws(RegexSyntaxError) -> ScalarClass {
        let negated = consume("^")
        var items: [ScalarClass.Item] = []
        var first = true
        while true {
            let c = try next()
            if c == "]" && !first { break }
            first = false
            if c == "[" { throw fail("nested classes and POSIX brackets") }
            if c == "&" && peek == "&" { throw fail("class intersection") }
            var low: UInt32
            if c == "\\" {
                let escape = try parseEscape(inClass: true, caseInsensitive: caseInsensitive)
                guard let single = escape.single else {
                    items.append(contentsOf: escape.set.items)
                    continue
                }
                low = single.value
            } else {
                low = c.value
            }
            // A range, unless '-' is the last character of the class.
            if peek == "-", index + 1 < scalars.count, scalars[index + 1] != "]" {
                index += 1
                var high = try next()
                if high == "\\" {
                    guard let single = try parseEscape(inClass: true, caseInsensitive: caseInsensitive).single else {
                        throw fail("class escape used as a range end")
                    }
                    high = single
                } else if high == "[" {
                    throw fail("nested classes and POSIX brackets")
                }
                guard low <= high.value else { throw fail("empty range in class") }
                if caseInsensitive && high.value >= 128 { throw fail("non-ASCII range in a case-insensitive group") }
                items.append(.range(low, high.value))
            } else {
                if caseInsensitive && low >= 128 { throw fail("non-ASCII literal in a case-insensitive group") }
                items.append(.range(low, low))
            }
        }
        return ScalarClass(items: items, negated: negated, caseInsensitive: caseInsensitive)
    }

    /// An escape after the backslash: either one scalar or a set (\s, \p{L}, …).
    private mutating func parseEscape(inClass: Bool, caseInsensitive: Bool)
        throws(RegexSyntaxError) -> (single: Unicode.Scalar?, set: ScalarClass)
    {
        let c = try next()
        func one(_ value: UInt32) throws(RegexSyntaxError) -> (Unicode.Scalar?, ScalarClass) {
            guard let s = Unicode.Scalar(value) else { throw fail("escape names a surrogate") }
            return (s, try literal(s, caseInsensitive: caseInsensitive))
        }
        func set(_ items: [ScalarClass.Item]) -> (Unicode.Scalar?, ScalarClass) {
            (nil, ScalarClass(items: items, caseInsensitive: caseInsensitive))
        }
        switch c {
        case "t": return try one(0x09)
        case "n": return try one(0x0A)
        case "r": return try one(0x0D)
        case "f": return try one(0x0C)
        case "v": return try one(0x0B)
        case "a": return try one(0x07)
        case "e": return try one(0x1B)
        case "x":
            if consume("{") {
                let value = try hexDigits(min: 1, max: 8)
                guard consume("}") else { throw fail("missing '}' in \\x{...}") }
                return try one(value)
            }
            return try one(try hexDigits(min: 1, max: 2))
        case "u": return try one(try hexDigits(min: 4, max: 4))
        case "s": return set([.whitespace])
        case "S": return set([.notWhitespace])
        case "d": return set([.categories(ScalarClass.digitMask)])
        case "D": return set([.notCategories(ScalarClass.digitMask)])
        case "w": return set([.categories(ScalarClass.wordMask)])
        case "W": return set([.notCategories(ScalarClass.wordMask)])
        case "p", "P":
            guard consume("{") else { throw fail("\\p needs braces") }
            var negated = c == "P"
            if consume("^") { negated.toggle() }
            var name = ""
            while let n = peek, n != "}" {
                name.unicodeScalars.append(n)
                index += 1
            }
            guard consume("}") else { throw fail("missing '}' in \\p{...}") }
            guard let mask = ScalarClass.categoryMasks[name] else {
                throw fail("property \\p{\(name)} (only general categories are supported)")
            }
            if caseInsensitive && mask & ScalarClass.casedLetterMask != 0 && mask != ScalarClass.categoryMasks["L"] {
                throw fail("cased-letter category in a case-insensitive group")
            }
            return set([negated ? .notCategories(mask) : .categories(mask)])
        default:
            if c.isASCII && (c.properties.isAlphabetic || c.properties.numericType != nil) {
                throw fail("escape \\\(c)")
            }
            return try one(c.value)
        }
    }

    private mutating func hexDigits(min: Int, max: Int) throws(RegexSyntaxError) -> UInt32 {
        var value: UInt32 = 0
        var count = 0
        while count < max, let c = peek, c.isASCII, let d = UInt32(String(c), radix: 16) {
            value = value << 4 | d
            count += 1
            index += 1
        }
        guard count >= min else { throw fail("invalid hexadecimal escape") }
        return value
    }
}
