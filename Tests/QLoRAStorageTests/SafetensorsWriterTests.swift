// What SafetensorsWriter refuses, and that a failed write leaves nothing behind.

import Foundation
import QLoRAStorage
import Testing

@Suite struct SafetensorsWriterTests {
    @Test func refusesInconsistentTensors() throws {
        var writer = SafetensorsWriter()
        try writer.add("w", shape: [2], floats: [1, 2])
        #expect(throws: SafetensorsWriterError.duplicateName("w")) { try writer.add("w", shape: [1], floats: [1]) }
        #expect(throws: SafetensorsWriterError.reservedName("__metadata__")) {
            try writer.add("__metadata__", shape: [1], floats: [1])
        }
        #expect(throws: SafetensorsWriterError.sizeMismatch("x", dtype: .F16, shape: [3], expected: 6, found: 4)) {
            try writer.add("x", dtype: .F16, shape: [3], bytes: [0, 0, 0, 0])
        }
        #expect(throws: SafetensorsWriterError.invalidShape("y", shape: [-1, 2])) {
            try writer.add("y", dtype: .U8, shape: [-1, 2], bytes: [])
        }
        #expect(writer.names == ["w"])
    }

    @Test func missingFolderFailsWithoutWriting() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        var writer = SafetensorsWriter()
        try writer.add("w", shape: [1], floats: [1])
        let folder = dir.appendingPathComponent("absent", isDirectory: true)
        #expect(throws: FileError.directoryMissing(folder)) {
            try writer.write(to: folder.appendingPathComponent("a.safetensors"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
    }

    @Test func namesNeedingEscapesRoundTrip() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let names = ["quote\"d", "back\\slash", "ctl\u{01}", "ünï ✓", "tab\tnew\nline"]
        var writer = SafetensorsWriter()
        for (i, name) in names.enumerated() { try writer.add(name, shape: [1], floats: [Float(i)]) }
        let url = dir.appendingPathComponent("names.safetensors")
        try writer.write(to: url)
        let file = try SafetensorsFile(url: url)
        for (i, name) in names.enumerated() { #expect(try file.floats(name) == [Float(i)]) }
    }
}
