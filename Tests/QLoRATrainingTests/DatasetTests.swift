// Reading JSON-lines datasets: the three formats, the folder layout, and errors that
// name the file and line.

import Foundation
import QLoRAStorage
import QLoRATraining
import Testing
import _TestSupport

@Suite struct DatasetTests {
    private func records(_ text: String) throws -> [DatasetRecord] {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.appending("data.jsonl")
        try Data(text.utf8).write(to: url)
        return try JSONLines.read(url)
    }

    /// The message of the error reading `text` throws.
    private func failure(_ text: String) throws -> String {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.appending("data.jsonl")
        try Data(text.utf8).write(to: url)
        do {
            _ = try JSONLines.read(url)
        } catch let error as DatasetError {
            let message = error.localizedDescription
            #expect(message.hasPrefix(url.path), "\(message)")
            return message
        }
        Issue.record("no error for \(text)")
        return ""
    }

    @Test func readsTheThreeFormats() throws {
        let text = """
            {"text": "plain", "id": 7}

            {"prompt": "Q", "completion": "A"}\r
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}
            """
        let r = try records(text)
        #expect(r.map(\.content) == [
            .text("plain"),
            .promptCompletion(prompt: "Q", completion: "A"),
            .chat([.init(role: .system, content: "S"), .init(role: .user, content: "U"), .init(role: .assistant, content: "A")]),
        ])
        #expect(r.map(\.line) == [1, 3, 4])
    }

    @Test func readsTheEmbeddedFineTuningSet() throws {
        // Sources/QLoRAKit/Resources/stories260K/train.jsonl: 400 prompt/completion lines (finetune_meta.json).
        let url = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources/QLoRAKit/Resources/stories260K/train.jsonl")
        let r = try JSONLines.read(url)
        #expect(r.count == 400)
        #expect(r.allSatisfy { if case let .promptCompletion(_, c) = $0.content { c.hasPrefix("\nThe moral of the story is that") } else { false } })
    }

    @Test func malformedLinesNameFileAndLine() throws {
        #expect(try failure("{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n").contains(":2: not valid JSON"))
        #expect(try failure("[1, 2]").contains(":1: expected a JSON object"))
        #expect(try failure("{\"text\": 5}").contains(":1: \"text\" has the wrong type"))
        #expect(try failure("{\"prompt\": \"p\"}").contains(":1: missing key \"completion\""))
        #expect(try failure("{\"completion\": \"c\"}").contains(":1: missing key \"prompt\""))
        #expect(try failure("{\"input\": \"x\", \"output\": \"y\"}").contains("found keys [\"input\", \"output\"]"))
        #expect(try failure("{\"text\": \"t\", \"prompt\": \"p\", \"completion\": \"c\"}").contains("more than one format"))
        #expect(try failure("{\"messages\": []}").contains("\"messages\" is empty"))
        #expect(try failure("{\"messages\": [{\"role\": \"user\"}]}").contains("missing key \"messages[0].content\""))
        #expect(try failure("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}").contains("messages[0].role \"bot\" is not one of system, user, assistant"))
        #expect(try failure("\n  \n").hasSuffix("the dataset is empty (no JSON lines)"))
    }

    @Test func invalidUTF8IsRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.appending("bad.jsonl")
        try Data([0x7B, 0x22, 0x74, 0x22, 0x3A, 0x22, 0xFF, 0x22, 0x7D]).write(to: url)
        #expect(throws: DatasetError.invalidLine(url, line: 1, reason: "not valid UTF-8")) { try JSONLines.read(url) }
    }

    @Test func locatesFolderAndFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        #expect(throws: DatasetError.missingTrainFile(dir.url)) { try DatasetFiles(locating: dir.url) }
        try Data("{\"text\":\"a\"}\n".utf8).write(to: dir.appending("train.jsonl"))
        var files = try DatasetFiles(locating: dir.url)
        #expect(files.train.lastPathComponent == "train.jsonl" && files.valid == nil)
        try Data("{\"text\":\"b\"}\n".utf8).write(to: dir.appending("valid.jsonl"))
        files = try DatasetFiles(locating: dir.url)
        #expect(files.valid?.lastPathComponent == "valid.jsonl")
        files = try DatasetFiles(locating: dir.appending("valid.jsonl"))
        #expect(files.train.lastPathComponent == "valid.jsonl" && files.valid == nil)
        #expect(throws: FileError.self) { try DatasetFiles(locating: dir.appending("absent")) }
    }
}
