// Tensors whose bytes SafetensorsWriter asks for only while writing: the file is
// the one in-memory tensors give, and a producer that misbehaves leaves no file.

import Foundation
import QLoRAStorage
import Testing

@Suite struct SafetensorsWriterProducerTests {
    struct Failure: Error, Equatable {}

    @Test func producedTensorsWriteTheSameFile() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let a = (0..<1000).map { Float($0) / 7 }
        let b: [UInt8] = (0..<6).map { UInt8($0 * 3) }
        var memory = SafetensorsWriter(metadata: ["format": "pt"]), produced = memory
        try memory.add("a", shape: [10, 100], floats: a)
        try memory.add("b", dtype: .F16, shape: [3], bytes: b)
        // Pieces of awkward sizes, and one empty.
        try produced.add("a", dtype: .F32, shape: [10, 100]) { emit in
            try a.withUnsafeBytes { bytes in
                for start in stride(from: 0, to: bytes.count, by: 999) {
                    try emit(UnsafeRawBufferPointer(rebasing: bytes[start..<min(bytes.count, start + 999)]))
                }
                try emit(UnsafeRawBufferPointer(rebasing: bytes[0..<0]))
            }
        }
        try produced.add("b", dtype: .F16, shape: [3]) { emit in try b.withUnsafeBytes { try emit($0) } }
        #expect(produced.names == memory.names)
        try memory.write(to: dir.appendingPathComponent("memory.safetensors"))
        try produced.write(to: dir.appendingPathComponent("produced.safetensors"))
        #expect(try Data(contentsOf: dir.appendingPathComponent("produced.safetensors"))
                == Data(contentsOf: dir.appendingPathComponent("memory.safetensors")))
    }

    @Test func misbehavingProducersLeaveNoFile() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("t.safetensors")
        for count in [3, 8] {
            var writer = SafetensorsWriter()
            try writer.add("t", dtype: .F32, shape: [1]) { emit in try [UInt8](repeating: 1, count: count).withUnsafeBytes { try emit($0) } }
            #expect(throws: SafetensorsWriterError.sizeMismatch("t", dtype: .F32, shape: [1], expected: 4, found: count)) {
                try writer.write(to: url)
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        }
        var failing = SafetensorsWriter()
        try failing.add("t", dtype: .F32, shape: [1]) { _ in throw Failure() }
        #expect(throws: Failure()) { try failing.write(to: url) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        var writer = SafetensorsWriter()
        try writer.add("t", shape: [1], floats: [1])
        #expect(throws: SafetensorsWriterError.duplicateName("t")) { try writer.add("t", dtype: .F32, shape: [1]) { _ in } }
    }
}
