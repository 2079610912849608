// One position of a regular expression: a set of Unicode scalars, with Oniguruma's
// meaning for \s, \d, \w and \p{..} (the `tokenizers` library compiles its patterns with
// Oniguruma). ASCII membership is precomputed into a 128-bit map because tokenizer input is
// mostly ASCII.

/// A set of Unicode scalars described by ranges and general categories.
struct ScalarClass: Sendable {
    enum Item: Sendable {
        case range(UInt32, UInt32)
        /// Scalars whose general category bit is in the mask.
        case categories(UInt32)
        case notCategories(UInt32)
        /// Unicode White_Space, which equals Oniguruma's \s (tab…CR, NEL, Zs, Zl, Zp).
        case whitespace
        case notWhitespace
    }

    private(set) var items: [Item] = []
    private(set) var negated = false
    private(set) var caseInsensitive = false
    private var asciiLow: UInt64 = 0
    private var asciiHigh: UInt64 = 0

    init(items: [Item], negated: Bool = false, caseInsensitive: Bool = false) {
        self.items = items
        self.negated = negated
        self.caseInsensitive = caseInsensitive
        for value in UInt32(0)..<128 where slowContains(value) {
            if value < 64 { asciiLow |= 1 << UInt64(value) } else { asciiHigh |= 1 << UInt64(value - 64) }
        }
    }

    static func scalar(_ s: Unicode.Scalar, caseInsensitive: Bool = false) -> ScalarClass {
        ScalarClass(items: [.range(s.value, s.value)], caseInsensitive: caseInsensitive)
    }

    /// Any scalar except line feed, as `.` in Oniguruma's default (Ruby) syntax.
    static let dot = ScalarClass(items: [.range(0x0A, 0x0A)], negated: true)

    @inline(__always)
    func contains(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if v < 64 { return asciiLow & (1 << UInt64(v)) != 0 }
        if v < 128 { return asciiHigh & (1 << UInt64(v - 64)) != 0 }
        return slowContains(v)
    }

    private func slowContains(_ value: UInt32) -> Bool {
        var hit = rawContains(value)
        if caseInsensitive && !hit {
            hit = caseVariants(of: value).contains { rawContains($0) }
        }
        return hit != negated
    }

    /// Other scalars that match `value` case-insensitively. Case-insensitive patterns are
    /// restricted to ASCII literals and ranges (see RegexParser), so only ASCII letters and the
    /// two non-ASCII scalars whose Unicode simple case folding is ASCII can be involved.
    private func caseVariants(of value: UInt32) -> [UInt32] {
        switch value {
        case 0x41...0x5A: return [value + 32]
        case 0x61...0x7A: return [value - 32]
        case 0x17F: return [0x73, 0x53]  // LATIN SMALL LETTER LONG S folds to s
        case 0x212A: return [0x6B, 0x4B]  // KELVIN SIGN folds to k
        default: return []
        }
    }

    private func rawContains(_ value: UInt32) -> Bool {
        guard let scalar = Unicode.Scalar(value) else { return false }
        var categoryBit: UInt32?
        func bit() -> UInt32 {
            if let b = categoryBit { return b }
            let b = ScalarClass.bit(scalar.properties.generalCategory)
            categoryBit = b
            return b
        }
        for item in items {
            switch item {
            case let .range(lo, hi): if value >= lo && value <= hi { return true }
            case let .categories(mask): if mask & bit() != 0 { return true }
            case let .notCategories(mask): if mask & bit() == 0 { return true }
            case .whitespace: if scalar.properties.isWhitespace { return true }
            case .notWhitespace: if !scalar.properties.isWhitespace { return true }
            }
        }
        return false
    }

    // MARK: - General categories

    static func bit(_ category: Unicode.GeneralCategory) -> UInt32 {
        switch category {
        case .uppercaseLetter: return 1 << 0
        case .lowercaseLetter: return 1 << 1
        case .titlecaseLetter: return 1 << 2
        case .modifierLetter: return 1 << 3
        case .otherLetter: return 1 << 4
        case .nonspacingMark: return 1 << 5
        case .spacingMark: return 1 << 6
        case .enclosingMark: return 1 << 7
        case .decimalNumber: return 1 << 8
        case .letterNumber: return 1 << 9
        case .otherNumber: return 1 << 10
        case .connectorPunctuation: return 1 << 11
        case .dashPunctuation: return 1 << 12
        case .openPunctuation: return 1 << 13
        case .closePunctuation: return 1 << 14
        case .initialPunctuation: return 1 << 15
        case .finalPunctuation: return 1 << 16
        case .otherPunctuation: return 1 << 17
        case .mathSymbol: return 1 << 18
        case .currencySymbol: return 1 << 19
        case .modifierSymbol: return 1 << 20
        case .otherSymbol: return 1 << 21
        case .spaceSeparator: return 1 << 22
        case .lineSeparator: return 1 << 23
        case .paragraphSeparator: return 1 << 24
        case .control: return 1 << 25
        case .format: return 1 << 26
        case .surrogate: return 1 << 27
        case .privateUse: return 1 << 28
        case .unassigned: return 1 << 29
        @unknown default: return 1 << 29
        }
    }

    /// Masks for the \p{..} names Oniguruma accepts as general categories.
    static let categoryMasks: [String: UInt32] = {
        let letters: UInt32 = 0b11111
        let marks: UInt32 = 0b111 << 5
        let numbers: UInt32 = 0b111 << 8
        let punctuation: UInt32 = 0b1111111 << 11
        let symbols: UInt32 = 0b1111 << 18
        let separators: UInt32 = 0b111 << 22
        let others: UInt32 = 0b11111 << 25
        return [
            "L": letters, "Lu": 1 << 0, "Ll": 1 << 1, "Lt": 1 << 2, "Lm": 1 << 3, "Lo": 1 << 4,
            "M": marks, "Mn": 1 << 5, "Mc": 1 << 6, "Me": 1 << 7,
            "N": numbers, "Nd": 1 << 8, "Nl": 1 << 9, "No": 1 << 10,
            "P": punctuation, "Pc": 1 << 11, "Pd": 1 << 12, "Ps": 1 << 13, "Pe": 1 << 14,
            "Pi": 1 << 15, "Pf": 1 << 16, "Po": 1 << 17,
            "S": symbols, "Sm": 1 << 18, "Sc": 1 << 19, "Sk": 1 << 20, "So": 1 << 21,
            "Z": separators, "Zs": 1 << 22, "Zl": 1 << 23, "Zp": 1 << 24,
            "C": others, "Cc": 1 << 25, "Cf": 1 << 26, "Cs": 1 << 27, "Co": 1 << 28, "Cn": 1 << 29,
        ]
    }()

    /// Categories that case-insensitive matching would change (cased letters).
    static let casedLetterMask: UInt32 = 0b111

    /// Oniguruma's \d: decimal digits of any script.
    static let digitMask: UInt32 = 1 << 8
    /// Oniguruma's \w: letters, marks, numbers and connector punctuation.
    static let wordMask: UInt32 = 0b11111 | (0b111 << 5) | (0b111 << 8) | (1 << 11)
}
