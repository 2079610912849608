// A folder appears whole or not at all: new, replacing an empty or a full one,
// or abandoned, leaving no hidden folder behind.

import Foundation
import QLoRAStorage
import Testing
import _TestSupport

@Suite struct AtomicDirectoryWriterTests {
    private func fill(_ writer: AtomicDirectoryWriter, _ names: [String]) throws {
        for name in names { try Data(name.utf8).write(to: writer.temporary.appendingPathComponent(name)) }
    }

    @Test func appearsOnCommitOnly() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let out = scratch.appending("out")
        let writer = try AtomicDirectoryWriter(destination: out)
        try fill(writer, ["a", "b"])
        #expect(try scratch.contents().count == 1 && !FileManager.default.fileExists(atPath: out.path))
        #expect(try scratch.contents()[0].hasPrefix(".out.tmp-"))
        try writer.commit()
        #expect(try scratch.contents() == ["out"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted() == ["a", "b"])
        let permissions = try FileManager.default.attributesOfItem(atPath: out.path)[.posixPermissions] as? Int
        #expect(permissions == 0o755)
    }

    @Test func replacesEmptyAndFullFolders() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        let out = scratch.appending("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        for contents in [["a"], ["b", "c"]] {
            let writer = try AtomicDirectoryWriter(destination: out)
            try fill(writer, contents)
            try writer.commit()
            #expect(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted() == contents)
            #expect(try scratch.contents() == ["out"])
        }
    }

    @Test func abandonedWritesLeaveNothing() throws {
        let scratch = try TemporaryDirectory()
        defer { scratch.remove() }
        do {
            let writer = try AtomicDirectoryWriter(destination: scratch.appending("out"))
            try fill(writer, ["a"])
        }
        #expect(try scratch.contents().isEmpty)
        let missing = scratch.appending("missing/out")
        #expect(throws: FileError.directoryMissing(missing.deletingLastPathComponent())) {
            try AtomicDirectoryWriter(destination: missing)
        }
    }
}
