// The JSON header of a safetensors file, read strictly.
//
// Foundation's JSON readers keep the last of two equal keys silently, turn `true`
// into 1 and `1e3` into an integer, and recurse without a depth limit. A header is
// hostile input, so it gets its own small reader: objects keep every key in file
// order (so a tensor named twice is caught), numbers stay as their literal text
// (so only plain integers become offsets and dimensions), and nesting is capped.

/// A JSON value from a safetensors header.
enum HeaderJSON {
    /// Keys in file order. Nested objects have unique keys; the top level may
    /// repeat one, which the caller reports as a duplicate tensor.
    case object([(key: String, value: HeaderJSON)])
    case array([HeaderJSON])
    case string(String)
    /// The number's literal text, e.g. "128", "-1", "1e3".
    case number(String)
    case bool(Bool)
    case null

    /// The value as a plain non-negative integer that fits in `Int`, or nil
    /// (fractions, exponents, negatives, booleans and overflow are all nil).
    var nonNegativeInteger: Int? {
        guard case let .number(text) = self, let n = Int(text), n >= 0, text.first != "-" else { return nil }
        return n
    }

    /// The value under `key` when this is an object.
    func member(_ key: String) -> HeaderJSON? {
        guard case let .object(members) = self else { return nil }
        return members.first { $0.key == key }?.value
    }
}

/// Why a header is not acceptable JSON; `offset` counts bytes from the header start.
struct HeaderJSONError: Error, Equatable {
    var offset: Int
    var message: String
}

/// A recursive-descent reader over the header bytes (already checked to be UTF-8).
struct HeaderJSONReader {
    /// Deeper nesting than a safetensors header ever needs; caps recursion.
    static let maxDepth = 32

    private let bytes: [UInt8]
    private var i = 0

    /// Reads one JSON value followed only by whitespace (writers pad with spaces).
    static func parse(_ bytes: [UInt8]) throws(HeaderJSONError) -> HeaderJSON {
        var reader = HeaderJSONReader(bytes: bytes)
        let value = try reader.value(depth: 0)
        reader.skipWhitespace()
        guard reader.i == bytes.count else { throw reader.failure("unexpected text after the JSON value") }
        return value
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private func failure(_ message: String) -> HeaderJSONError { HeaderJSONError(offset: i, message: message) }

    private mutating func skipWhitespace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    private mutating func expect(_ byte: UInt8, _ what: String) throws(HeaderJSONError) {
        skipWhitespace()
        guard i < bytes.count, bytes[i] == byte else { throw failure("expected \(what)") }
        i += 1
    }

    private mutating func value(depth: Int) throws(HeaderJSONError) -> HeaderJSON {
        guard depth <= Self.maxDepth else { throw failure("nested deeper than \(Self.maxDepth) levels") }
        skipWhitespace()
        guard i < bytes.count else { throw failure("unexpected end of the header") }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object(depth: depth)
        case UInt8(ascii: "["): return try array(depth: depth)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
        default: throw failure("expected a JSON value")
        }
    }

    private mutating func object(depth: Int) throws(HeaderJSONError) -> HeaderJSON {
        i += 1
        var members: [(key: String, value: HeaderJSON)] = []
        var seen = Set<String>()
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
            i += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw failure("expected a string key") }
            let keyOffset = i
            let key = try string()
            if depth > 0, !seen.insert(key).inserted {
                throw HeaderJSONError(offset: keyOffset, message: "duplicate key \"\(key)\"")
            }
            try expect(UInt8(ascii: ":"), "':' after a key")
            members.append((key, try value(depth: depth + 1)))
            skipWhitespace()
            guard i < bytes.count else { throw failure("unterminated object") }
            if bytes[i] == UInt8(ascii: "}") {
                i += 1
                return .object(members)
            }
            guard bytes[i] == UInt8(ascii: ",") else { throw failure("expected ',' or '}' in an object") }
            i += 1
        }
    }

    private mutating func array(depth: Int) throws(HeaderJSONError) -> HeaderJSON {
        i += 1
        var elements: [HeaderJSON] = []
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
            i += 1
            return .array(elements)
        }
        while true {
            elements.append(try value(depth: depth + 1))
            skipWhitespace()
            guard i < bytes.count else { throw failure("unterminated array") }
            if bytes[i] == UInt8(ascii: "]") {
                i += 1
                return .array(elements)
            }
            guard bytes[i] == UInt8(ascii: ",") else { throw failure("expected ',' or ']' in an array") }
            i += 1
        }
    }

    private mutating func literal(_ word: String) throws(HeaderJSONError) {
        for byte in word.utf8 {
            guard i < bytes.count, bytes[i] == byte else { throw failure("expected \(word)") }
            i += 1
        }
    }

    private mutating func skipDigits() -> Int {
        let from = i
        while i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) { i += 1 }
        return i - from
    }

    /// RFC 8259 number syntax; the text is kept, not converted.
    private mutating func number() throws(HeaderJSONError) -> String {
        let start = i
        if bytes[i] == UInt8(ascii: "-") { i += 1 }
        guard i < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[i]) else {
            throw failure("expected digits")
        }
        if bytes[i] == UInt8(ascii: "0") { i += 1 } else { _ = skipDigits() }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard skipDigits() > 0 else { throw failure("expected digits after '.'") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard skipDigits() > 0 else { throw failure("expected digits in the exponent") }
        }
        return String(decoding: bytes[start..<i], as: UTF8.self)
    }

    private mutating func string() throws(HeaderJSONError) -> String {
        i += 1
        var out = [UInt8]()
        while true {
            guard i < bytes.count else { throw failure("unterminated string") }
            let b = bytes[i]
            i += 1
            switch b {
            case UInt8(ascii: "\""):
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard i < bytes.count else { throw failure("unterminated string") }
                let e = bytes[i]
                i += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"): out.append(contentsOf: try unicodeEscape())
                default: throw failure("invalid escape in a string")
                }
            case 0..<0x20:
                throw failure("control character in a string")
            default:
                out.append(b)
            }
        }
    }

    /// After "\u": four hex digits, joined with a following low surrogate when needed.
    private mutating func unicodeEscape() throws(HeaderJSONError) -> [UInt8] {
        var scalar = try hex4()
        if (0xD800..<0xDC00).contains(scalar) {
            guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                throw failure("unpaired surrogate in a string")
            }
            i += 2
            let low = try hex4()
            guard (0xDC00..<0xE000).contains(low) else { throw failure("unpaired surrogate in a string") }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        }
        guard let u = Unicode.Scalar(scalar) else { throw failure("unpaired surrogate in a string") }
        return Array(String(Character(u)).utf8)
    }

    private mutating func hex4() throws(HeaderJSONError) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard i < bytes.count, let d = Self.hexValue(bytes[i]) else { throw failure("expected four hex digits after \\u") }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private static func hexValue(_ b: UInt8) -> UInt32? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(b - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(b - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(b - UInt8(ascii: "A") + 10)
        default: nil
        }
    }
}
