import Foundation

/// Why a tokenizer could not be loaded or a stream could not continue.
///
/// Every loading error names the file, the JSON path inside it and what is wrong, so a
/// tokenizer.json that this package does not handle fails loudly instead of encoding
/// text differently from the `tokenizers` library.
public enum TokenizerError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The file could not be read (missing, permissions, …).
    case unreadableFile(URL, reason: String)
    /// The file is not valid JSON.
    case invalidJSON(URL, reason: String)
    /// A value is missing, has the wrong JSON type, or is inconsistent with the rest of the file.
    case invalidValue(URL, path: String, reason: String)
    /// A component type (model, normalizer, pre-tokenizer, decoder, post-processor) or an
    /// option of it that this package does not implement.
    case unsupported(URL, path: String, type: String, supported: String)
    /// A regular expression uses syntax outside the supported subset.
    case unsupportedPattern(URL, path: String, pattern: String, reason: String)
    /// The streaming decoder's previous text is no longer a prefix of the decoded window
    /// (the `tokenizers` library's `DecodeStream` fails on the same input).
    case streamPrefixMismatch(tokenID: Int, expected: String, actual: String)

    public var description: String {
        switch self {
        case let .unreadableFile(url, reason):
            return "[tokenizer] cannot read \(url.path): \(reason)"
        case let .invalidJSON(url, reason):
            return "[tokenizer] \(url.path) is not valid JSON: \(reason)"
        case let .invalidValue(url, path, reason):
            return "[tokenizer] \(url.path): \(path): \(reason)"
        case let .unsupported(url, path, type, supported):
            return "[tokenizer] \(url.path): \(path) \"\(type)\" is not supported (supported: \(supported))"
        case let .unsupportedPattern(url, path, pattern, reason):
            return "[tokenizer] \(url.path): \(path): regular expression \(pattern.debugDescription) is not supported: \(reason)"
        case let .streamPrefixMismatch(tokenID, expected, actual):
            return "[tokenizer] streaming decode at token \(tokenID): expected the text to start with "
                + "\(expected.debugDescription), got \(actual.debugDescription)"
        }
    }

    public var errorDescription: String? { description }
}
