// Fine-tuning data as users bring it: JSON lines in one of three shapes.
//
//   {"text": "..."}                                  plain text, loss on every token
//   {"prompt": "...", "completion": "..."}           loss on the completion only
//   {"messages": [{"role": "user", "content": "..."}, ...]}
//                                                    a chat, rendered with a chat template;
//                                                    loss on the assistant turns
// Other keys on a line are ignored, so files carrying ids or metadata load as they
// are; a line matching two shapes is refused rather than guessed at. Blank lines
// are skipped. Every error names the file and the 1-based line number.
// A dataset is a folder with train.jsonl and, optionally, valid.jsonl (the layout
// mlx-lm uses), or a single .jsonl file used for training only.

import Foundation
import QLoRAStorage

/// Who speaks a chat message.
public enum ChatRole: String, CaseIterable, Hashable, Sendable, Codable {
    case system, user, assistant
}

/// One message of a chat record.
public struct ChatMessage: Hashable, Sendable, Codable {
    public var role: ChatRole
    public var content: String

    public init(role: ChatRole, content: String) {
        self.role = role
        self.content = content
    }
}

/// One line of a dataset file.
public struct DatasetRecord: Hashable, Sendable {
    public enum Content: Hashable, Sendable {
        case text(String)
        case promptCompletion(prompt: String, completion: String)
        case chat([ChatMessage])
    }

    public var content: Content
    /// The file and 1-based line it came from, for error messages.
    public var source: URL
    public var line: Int

    public init(_ content: Content, source: URL, line: Int) {
        self.content = content
        self.source = source
        self.line = line
    }
}

/// Reading JSON-lines dataset files.
public enum JSONLines {
    /// The records of `url`, in file order.
    /// - Throws: `FileError` when the file cannot be read; `DatasetError` for a malformed
    ///   line, a line in none (or several) of the formats, or a file without records.
    public static func read(_ url: URL) throws -> [DatasetRecord] {
        let file = try MappedFile(url: url)
        return try withExtendedLifetime(file) { try parse(file.bytes, source: url) }
    }

    /// The records in `bytes` (the contents of `source`).
    public static func parse(_ bytes: UnsafeRawBufferPointer, source: URL) throws -> [DatasetRecord] {
        var records: [DatasetRecord] = []
        var start = 0, line = 1
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
            if slice.contains(where: { !isJSONWhitespace($0) }) {
                records.append(try record(Data(slice), source: source, line: line))
            }
            start = end + 1
            line += 1
        }
        guard !records.isEmpty else { throw DatasetError.empty(source) }
        return records
    }

    private static func isJSONWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A }

    private static func record(_ data: Data, source: URL, line: Int) throws -> DatasetRecord {
        func fail(_ reason: String) -> DatasetError { .invalidLine(source, line: line, reason: reason) }
        guard String(data: data, encoding: .utf8) != nil else { throw fail("not valid UTF-8") }
        let raw: RawLine
        do {
            raw = try JSONDecoder().decode(RawLine.self, from: data)
        } catch let DecodingError.typeMismatch(_, context) {
            throw fail(context.codingPath.isEmpty
                ? "expected a JSON object"
                : "\"\(path(context.codingPath))\" has the wrong type (\(context.debugDescription))")
        } catch let DecodingError.keyNotFound(key, context) {
            throw fail("missing key \"\(path(context.codingPath + [key]))\"")
        } catch let DecodingError.valueNotFound(_, context) {
            throw fail("\"\(path(context.codingPath))\" is null")
        } catch let DecodingError.dataCorrupted(context) {
            let underlying = (context.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String
            throw fail("not valid JSON (\(underlying ?? context.debugDescription))")
        }
        let shapes = [raw.messages != nil, raw.prompt != nil || raw.completion != nil, raw.text != nil]
        guard shapes.filter({ $0 }).count == 1 else {
            throw fail(shapes.contains(true)
                ? "has keys of more than one format (\"text\", \"prompt\"/\"completion\", \"messages\"); keep one"
                : "needs \"text\", \"prompt\" and \"completion\", or \"messages\"; found keys \(raw.keys.sorted())")
        }
        if let messages = raw.messages {
            guard !messages.isEmpty else { throw fail("\"messages\" is empty") }
            var out: [ChatMessage] = []
            for (i, m) in messages.enumerated() {
                guard let role = ChatRole(rawValue: m.role) else {
                    throw fail("messages[\(i)].role \"\(m.role)\" is not one of \(ChatRole.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                out.append(ChatMessage(role: role, content: m.content))
            }
            return DatasetRecord(.chat(out), source: source, line: line)
        }
        if shapes[1] {
            guard let prompt = raw.prompt else { throw fail("missing key \"prompt\" (a completion needs its prompt)") }
            guard let completion = raw.completion else { throw fail("missing key \"completion\"") }
            return DatasetRecord(.promptCompletion(prompt: prompt, completion: completion), source: source, line: line)
        }
        return DatasetRecord(.text(raw.text!), source: source, line: line)
    }

    /// "messages[2].role" for a coding path.
    private static func path(_ keys: [any CodingKey]) -> String {
        var out = ""
        for key in keys {
            if let i = key.intValue { out += "[\(i)]" } else { out += (out.isEmpty ? "" : ".") + key.stringValue }
        }
        return out
    }

    /// A line decoded loosely: the keys of every format, all optional, the rest ignored.
    private struct RawLine: Decodable {
        struct Message: Decodable {
            var role: String
            var content: String
        }

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        var keys: [String]
        var text, prompt, completion: String?
        var messages: [Message]?

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: Key.self)
            keys = c.allKeys.map(\.stringValue)
            text = try c.decodeIfPresent(String.self, forKey: Key(stringValue: "text"))
            prompt = try c.decodeIfPresent(String.self, forKey: Key(stringValue: "prompt"))
            completion = try c.decodeIfPresent(String.self, forKey: Key(stringValue: "completion"))
            messages = try c.decodeIfPresent([Message].self, forKey: Key(stringValue: "messages"))
        }
    }
}

/// The files of a dataset.
public struct DatasetFiles: Hashable, Sendable {
    public static let trainFileName = "train.jsonl"
    public static let validFileName = "valid.jsonl"

    public var train: URL
    public var valid: URL?

    /// `url` is a folder holding train.jsonl (and maybe valid.jsonl), or a .jsonl file
    /// used for training alone.
    /// - Throws: `DatasetError.missingTrainFile` for a folder without train.jsonl,
    ///   `FileError.cannotOpen` for a path that does not exist.
    public init(locating url: URL) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw FileError.cannotOpen(url, errno: ENOENT)
        }
        guard isDirectory.boolValue else {
            train = url
            valid = nil
            return
        }
        train = url.appendingPathComponent(Self.trainFileName)
        guard FileManager.default.fileExists(atPath: train.path) else { throw DatasetError.missingTrainFile(url) }
        let v = url.appendingPathComponent(Self.validFileName)
        valid = FileManager.default.fileExists(atPath: v.path) ? v : nil
    }
}

/// Data that cannot be trained on. Every case names the file.
public enum DatasetError: Error, LocalizedError, Equatable {
    /// Line `line` (1-based) is not a usable record.
    case invalidLine(URL, line: Int, reason: String)
    /// The file holds no records (or only blank lines).
    case empty(URL)
    /// A dataset folder without train.jsonl.
    case missingTrainFile(URL)
    /// Every record was dropped (no loss tokens left after truncation).
    case nothingToTrain(URL, records: Int, maxSequenceLength: Int)
    /// A chat the template cannot render (for example roles that do not alternate).
    case unsupportedChat(URL, line: Int, template: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .invalidLine(url, line, reason): "\(url.path):\(line): \(reason)"
        case let .empty(url): "\(url.path): the dataset is empty (no JSON lines)"
        case let .missingTrainFile(url):
            "\(url.path): no \(DatasetFiles.trainFileName) in this folder (a dataset folder holds \(DatasetFiles.trainFileName) and optionally \(DatasetFiles.validFileName))"
        case let .nothingToTrain(url, records, length):
            "\(url.path): none of the \(records) records has a token to learn from within \(length) tokens; raise the maximum sequence length or shorten the prompts"
        case let .unsupportedChat(url, line, template, reason): "\(url.path):\(line): the \(template) chat template cannot render this chat: \(reason)"
        }
    }
}
