// GPT-2's byte-level alphabet: every byte gets a printable scalar so that any UTF-8 text,
// even invalid pieces of it, can be spelled with 256 base tokens. Printable Latin-1 bytes
// map to themselves; the other 68 bytes map to U+0100 onward in byte order (space -> "Ġ").

enum ByteLevel {
    /// Scalar for each byte.
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            let printable = (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
            if printable {
                table[byte] = Unicode.Scalar(UInt8(byte))
            } else {
                table[byte] = Unicode.Scalar(next)!  // 256...323, always valid scalars
                next += 1
            }
        }
        return table
    }()

    /// Byte for each scalar value below 324 that is in the alphabet, -1 otherwise.
    static let scalarToByte: [Int16] = {
        var table = [Int16](repeating: -1, count: 324)
        for (byte, scalar) in byteToScalar.enumerated() { table[Int(scalar.value)] = Int16(byte) }
        return table
    }()

    /// GPT-2's pre-tokenization pattern, which ByteLevel applies when use_regex is true.
    static let splitPattern: ScalarRegex = {
        // A fixed, known-good pattern: failure here is a bug in the regex parser, not bad input.
        try! ScalarRegex(pattern: #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#)
    }()

    /// The UTF-8 bytes of `scalars`, spelled in the byte-level alphabet.
    static func encode(utf8Of scalars: Scalars) -> Scalars {
        var result = Scalars()
        result.reserveCapacity(scalars.count)
        for s in scalars {
            if s.value < 0x80 {
                result.append(byteToScalar[Int(s.value)])
            } else {
                UTF8.encode(s) { result.append(byteToScalar[Int($0)]) }
            }
        }
        return result
    }

    /// The bytes a token spells, or nil when it uses a scalar outside the alphabet.
    static func bytes(of token: Scalars) -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(token.count)
        for s in token {
            guard s.value < 324, case let b = scalarToByte[Int(s.value)], b >= 0 else { return nil }
            bytes.append(UInt8(b))
        }
        return bytes
    }
}
