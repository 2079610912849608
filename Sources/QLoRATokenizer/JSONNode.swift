import Foundation

/// A JSON value together with where it came from, so every type error can name the file and
/// the JSON path ("pre_tokenizer.pretokenizers[0].pattern").
struct JSONNode {
    let value: JSONValue
    let path: String
    let file: URL

    /// Parses `contents` when given (a file held in memory, named `url` in errors), or reads `url`.
    static func load(_ url: URL, contents: Data? = nil) throws(TokenizerError) -> JSONNode {
        let data: Data
        do {
            data = try contents ?? Data(contentsOf: url)
        } catch {
            throw .unreadableFile(url, reason: error.localizedDescription)
        }
        do {
            return JSONNode(value: try JSONParser.parse(data), path: "", file: url)
        } catch {
            throw .invalidJSON(url, reason: "\(error.message) at byte \(error.offset)")
        }
    }

    func invalid(_ reason: String) -> TokenizerError {
        .invalidValue(file, path: path.isEmpty ? "(top level)" : path, reason: reason)
    }

    func unsupported(_ type: String, supported: String) -> TokenizerError {
        .unsupported(file, path: path, type: type, supported: supported)
    }

    /// The component's "type" names something this package does not implement.
    func unsupportedType(_ type: String, supported: String) -> TokenizerError {
        .unsupported(file, path: child("type"), type: type, supported: supported)
    }

    private func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The member named `key`; nil when absent or JSON null (serde treats both as "not set").
    func optional(_ key: String) -> JSONNode? {
        guard case let .object(members) = value,
              let member = members.last(where: { $0.key.utf8.elementsEqual(key.utf8) }) else { return nil }
        if case .null = member.value { return nil }
        return JSONNode(value: member.value, path: child(key), file: file)
    }

    func required(_ key: String) throws(TokenizerError) -> JSONNode {
        guard case .object = value else { throw invalid("expected an object, found \(value.typeName)") }
        guard let node = optional(key) else { throw JSONNode(value: .null, path: child(key), file: file).invalid("missing") }
        return node
    }

    func string() throws(TokenizerError) -> String {
        guard case let .string(s) = value else { throw invalid("expected a string, found \(value.typeName)") }
        return s
    }

    func bool() throws(TokenizerError) -> Bool {
        guard case let .bool(b) = value else { throw invalid("expected a boolean, found \(value.typeName)") }
        return b
    }

    func int() throws(TokenizerError) -> Int {
        switch value {
        case let .integer(i): return i
        case let .number(d) where d.rounded() == d && abs(d) < 1e15: return Int(d)
        default: throw invalid("expected an integer, found \(value.typeName)")
        }
    }

    func double() throws(TokenizerError) -> Double {
        switch value {
        case let .integer(i): return Double(i)
        case let .number(d): return d
        default: throw invalid("expected a number, found \(value.typeName)")
        }
    }

    func array() throws(TokenizerError) -> [JSONNode] {
        guard case let .array(elements) = value else { throw invalid("expected an array, found \(value.typeName)") }
        return elements.enumerated().map { JSONNode(value: $1, path: "\(path)[\($0)]", file: file) }
    }

    func members() throws(TokenizerError) -> [(key: String, node: JSONNode)] {
        guard case let .object(members) = value else { throw invalid("expected an object, found \(value.typeName)") }
        return members.map { ($0.key, JSONNode(value: $0.value, path: child($0.key), file: file)) }
    }

    // MARK: - Shorthands for members

    func string(_ key: String) throws(TokenizerError) -> String { try required(key).string() }

    func optionalString(_ key: String) throws(TokenizerError) -> String? { try optional(key)?.string() }

    func bool(_ key: String, default fallback: Bool) throws(TokenizerError) -> Bool {
        try optional(key)?.bool() ?? fallback
    }

    /// The "type" tag of a component object.
    func typeTag() throws(TokenizerError) -> String { try string("type") }
}
