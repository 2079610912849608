import Foundation
import QLoRAStorage
import Testing
import _TestSupport

// MARK: - Helpers shared by the Packed* and Quantize* suites

let sampleConfig = Data(#"{"hidden_size": 64, "model_type": "llama"}"#.utf8)

/// The tensors of `writeSample`: their fp32 values before packing.
struct Sample {
    var quantized: [(name: String, shape: [Int], spec: QuantSpec, values: [Float])]
    var floats: [(name: String, dtype: TensorDType, shape: [Int], bytes: [UInt8])]
    var file = (name: "tokenizer.json", contents: Data(#"{"model": {"type": "BPE"}}"#.utf8))

    init() {
        var rng = SeededGenerator(seed: 42)
        quantized = [
            ("a.q_proj.weight", [16, 64], QuantSpec(type: .nf4, blockSize: 64, scaleKind: .dq8), rng.gaussian(count: 1024, std: 0.02)),
            ("a.down_proj.weight", [8, 43], QuantSpec(type: .int8, blockSize: 32, scaleKind: .f16), rng.gaussian(count: 344, std: 0.02)),
            ("a.up_proj.weight", [3, 100], QuantSpec(type: .fp4, blockSize: 128, scaleKind: .f32), rng.gaussian(count: 300, std: 0.02)),
        ]
        // A norm of ones compresses well, so the compressed file really has a zstd tensor.
        let ones = [Float](repeating: 1, count: 64)
        floats = [
            ("a.norm.weight", .F32, [64], ones.withUnsafeBytes { Array($0) }),
            ("a.half.weight", .F16, [2, 3], [0x00, 0x3c, 0x00, 0x40, 0x00, 0xc2, 0x00, 0x00, 0x00, 0x38, 0x00, 0x3e]),
            ("a.brain.weight", .BF16, [3], [0x80, 0x3f, 0x00, 0x40, 0x40, 0xc0]),
            ("a.empty.weight", .F32, [0, 4], []),
        ]
    }

    func write(to url: URL, compress: Bool = false, simulateDiskFullAfter: Int? = nil) throws {
        let writer = try PackedCheckpointWriter(url: url, configJSON: sampleConfig, metadata: ["producer": "tests"], compress: compress)
        writer.simulateDiskFullAfter = simulateDiskFullAfter
        try writer.addFile(name: file.name, contents: file.contents)
        for t in quantized {
            try writer.add(try BlockCodec.quantize(t.values, shape: t.shape, spec: t.spec), name: t.name)
        }
        for t in floats {
            try t.bytes.withUnsafeBytes { try writer.add(name: t.name, dtype: t.dtype, shape: t.shape, bytes: $0) }
        }
        try writer.finish()
    }
}

// MARK: - Round trips

@Suite struct PackedCheckpointTests {
    @Test(arguments: [false, true])
    func writtenTensorsReadBackIdentical(compress: Bool) throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("model.qlora")
        let sample = Sample()
        try sample.write(to: url, compress: compress)

        let packed = try PackedCheckpoint(url: url)
        #expect(packed.version == 1)
        #expect(packed.configJSON == sampleConfig)
        #expect(packed.metadata == ["producer": "tests"])
        #expect(try packed.embeddedFile("tokenizer.json") == sample.file.contents)
        #expect(packed.tensors.map(\.name) == sample.quantized.map(\.name) + sample.floats.map(\.name))
        try packed.verify()

        for t in sample.quantized {
            let expected = try BlockCodec.quantize(t.values, shape: t.shape, spec: t.spec)
            let got = try packed.quantized(t.name)
            #expect(got.spec == t.spec && got.shape == t.shape)
            #expect(got.regionBytes == expected.regionBytes)
            #expect(got.dequantized() == expected.dequantized())
            #expect(try packed.floats(t.name).array == expected.dequantized())
            got.withPacked { p in
                // Zero-copy views are aligned for SIMD loads.
                #expect(Int(bitPattern: p.pointee.codes) % 64 == 0 && Int(bitPattern: p.pointee.scales) % 64 == 0)
                #expect(p.pointee.group_scales == nil || Int(bitPattern: p.pointee.group_scales) % 64 == 0)
                #expect(p.pointee.rows == Int64(got.rows) && p.pointee.cols == Int64(got.cols))
                #expect(p.pointee.offset == expected.offset)
            }
        }
        #expect(try packed.floats("a.norm.weight").array == [Float](repeating: 1, count: 64))
        #expect(try packed.floats("a.half.weight").array == [1, 2, -3, 0, 0.5, 1.5])
        #expect(try packed.floats("a.brain.weight").array == [1, 2, -3])
        #expect(try packed.floats("a.empty.weight").count == 0)
        #expect(try packed.info("a.norm.weight").isCompressed == compress)
    }

    @Test func fileLayoutIsTheSpecs() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("example.qlora")
        let writer = try PackedCheckpointWriter(url: url, configJSON: sampleConfig)
        try writer.add(try BlockCodec.quantize(specExample, shape: [2, 24], spec: QuantSpec(type: .nf4, blockSize: 32, scaleKind: .dq8)), name: "w")
        try writer.finish()

        let bytes = try [UInt8](Data(contentsOf: url))
        func u64(_ at: Int) -> UInt64 { bytes[at..<(at + 8)].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        #expect(Array(bytes[0..<8]) == Array("QLORAPAK".utf8))
        #expect(Array(bytes[8..<12]) == [1, 0, 0, 0] && bytes[12..<64].allSatisfy { $0 == 0 })
        // The region starts right after the preamble: codes, then the DQ8 scales at +64, group part at +128.
        #expect(bytes[64] == 0xc0 && Array(bytes[128..<130]) == [0xff, 0x00])
        #expect(Array(bytes[192..<200]) == [0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x40, 0x3f])
        let footer = bytes.count - 64
        let headerOffset = Int(u64(footer)), headerLength = Int(u64(footer + 8))
        let headerBytes = Array(bytes[headerOffset..<(headerOffset + headerLength)])
        #expect(headerOffset == 256)
        #expect(bytes.count == (headerOffset + headerLength + 63) / 64 * 64 + 64)
        #expect(u64(footer + 16) == headerBytes.withUnsafeBytes { PackedCheckpointFormat.xxh64($0) })
        #expect(Array(bytes[(footer + 24)..<(footer + 28)]) == [1, 0, 0, 0])
        #expect(Array(bytes[(bytes.count - 8)...]) == Array("QLORAPAK".utf8))

        let header = try JSONSerialization.jsonObject(with: Data(headerBytes)) as! [String: Any]
        let t = (header["tensors"] as! [[String: Any]])[0]
        #expect(t["dtype"] as? String == "nf4" && t["block_size"] as? Int == 32 && t["scale_kind"] as? String == "dq8")
        #expect(t["offset"] as? Int == 64 && t["length"] as? Int == 136 && t["size"] as? Int == 136)
        let parts = t["parts"] as! [String: [Int]]
        #expect(parts == ["codes": [0, 32], "scales": [64, 66], "group_scales": [128, 136]])
        let region = bytes.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[64..<200]) }
        #expect(t["xxh64"] as? String == PackedCheckpointFormat.hex(PackedCheckpointFormat.xxh64(region)))
    }

    @Test func checksumIsXXH64() {
        // Reference values from the xxHash library (XXH64, seed 0).
        func h(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { PackedCheckpointFormat.xxh64($0) } }
        #expect(h([]) == 0xef46_db37_51d8_e999)
        #expect(h(Array("a".utf8)) == 0xd24e_c4f1_a98c_6e5b)
        #expect(h(Array("abc".utf8)) == 0x44bc_2cf5_ad77_0999)
        #expect(h(Array("0123456789abcdef0123456789abcdef0123456789".utf8)) == 0xa761_90c3_acf0_8a1c)
        #expect(h((0..<4).flatMap { _ in (0..<256).map { UInt8($0) } } + Array("xyz".utf8)) == 0xe146_cb31_b65b_c21a)
        #expect(PackedCheckpointFormat.hex(0xab) == "00000000000000ab")
    }

    @Test func hashingInPiecesEqualsOneCall() {
        var rng = SeededGenerator(seed: 9)
        let bytes = (0..<5000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes.withUnsafeBytes { all in
            for piece in [1, 3, 31, 32, 33, 100, 4999] {
                var hasher = PackedCheckpointFormat.Hasher()
                for start in stride(from: 0, to: all.count, by: piece) {
                    hasher.update(UnsafeRawBufferPointer(rebasing: all[start..<min(all.count, start + piece)]))
                }
                #expect(hasher.digest == PackedCheckpointFormat.xxh64(all), "pieces of \(piece)")
            }
        }
        #expect(PackedCheckpointFormat.Hasher().digest == 0xef46_db37_51d8_e999)
    }

    // MARK: - Writing fails cleanly

    @Test func diskFullLeavesNoFileAndKeepsTheOldOne() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("model.qlora")
        let sample = Sample()
        #expect(throws: FileError.self) { try sample.write(to: url, simulateDiskFullAfter: 1000) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)

        let old = Data("an older file".utf8)
        try old.write(to: url)
        #expect(throws: FileError.self) { try sample.write(to: url, simulateDiskFullAfter: 100) }
        #expect(try Data(contentsOf: url) == old)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["model.qlora"])
    }

    @Test func missingFolderIsAClearError() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let missing = dir.appendingPathComponent("no/such")
        let error = #expect(throws: FileError.self) {
            try PackedCheckpointWriter(url: missing.appendingPathComponent("model.qlora"), configJSON: sampleConfig)
        }
        guard case let .directoryMissing(folder) = error else {
            Issue.record("expected a missing folder, got \(String(describing: error))")
            return
        }
        #expect(folder.standardizedFileURL.path == missing.standardizedFileURL.path)
        #expect(error?.localizedDescription.contains("folder does not exist") == true)
    }

    @Test func writerRefusesWhatTheFormatCannotHold() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("model.qlora")
        #expect(throws: PackedCheckpointError.self) { try PackedCheckpointWriter(url: url, configJSON: Data("[1, 2]".utf8)) }
        let writer = try PackedCheckpointWriter(url: url, configJSON: sampleConfig)
        let q = try BlockCodec.quantize([Float](repeating: 1, count: 64), shape: [64], spec: QuantSpec(type: .nf4, blockSize: 64))
        try writer.add(q, name: "w")
        #expect(throws: PackedCheckpointError.self) { try writer.add(q, name: "w") }
        #expect(throws: PackedCheckpointError.self) { try writer.addFile(name: "../escape", contents: Data()) }
        #expect(throws: PackedCheckpointError.self) {
            try [UInt8](repeating: 0, count: 6).withUnsafeBytes { try writer.add(name: "v", dtype: .F32, shape: [2], bytes: $0) }
        }
        #expect(throws: PackedCheckpointError.self) {
            try [UInt8](repeating: 0, count: 8).withUnsafeBytes { try writer.add(name: "i", dtype: .I32, shape: [2], bytes: $0) }
        }
        writer.abort()
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
    }
}
