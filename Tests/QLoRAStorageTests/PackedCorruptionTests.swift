import Foundation
import QLoRAStorage
import Testing

/// Files that lie: each test patches bytes of a good file and expects the reader
/// to name the check that failed.
@Suite final class PackedCorruptionTests {
    let dir: URL
    let good: [UInt8]

    init() throws {
        dir = try SafetensorsScratch.directory()
        let url = dir.appendingPathComponent("good.qlora")
        try Sample().write(to: url)
        good = try [UInt8](Data(contentsOf: url))
        try FileManager.default.removeItem(at: url)
    }

    deinit { SafetensorsScratch.remove(dir) }

    private func open(_ bytes: [UInt8], _ name: String = "bad.qlora") throws -> (URL, Result<PackedCheckpoint, PackedCheckpointError>) {
        let url = dir.appendingPathComponent(name)
        // Atomic writes: a checkpoint still mapped keeps its old bytes.
        try Data(bytes).write(to: url, options: .atomic)
        do {
            return (url, .success(try PackedCheckpoint(url: url)))
        } catch let e as PackedCheckpointError {
            return (url, .failure(e))
        }
    }

    /// The case name of the error opening `bytes` gives, and its message.
    private func failure(_ bytes: [UInt8]) throws -> (check: String, message: String) {
        switch try open(bytes).1 {
        case .success: return ("opened", "")
        case let .failure(e): return (Mirror(reflecting: e).children.first?.label ?? "\(e)", e.localizedDescription)
        }
    }

    private var footer: Int { good.count - 64 }
    private var headerOffset: Int { Int(read64(good, footer)) }

    /// The good file with its header edited, laid out again with a valid checksum,
    /// so only the edit is wrong.
    private func editingHeader(_ edit: (inout [String: Any]) -> Void) throws -> [UInt8] {
        let length = Int(read64(good, footer + 8))
        var header = try JSONSerialization.jsonObject(with: Data(good[headerOffset..<(headerOffset + length)])) as! [String: Any]
        edit(&header)
        return replacingHeader(with: [UInt8](try JSONSerialization.data(withJSONObject: header)))
    }

    private func replacingHeader(with json: [UInt8]) -> [UInt8] {
        var out = Array(good[0..<headerOffset]) + json
        out += [UInt8](repeating: 0, count: (64 - out.count % 64) % 64)
        let checksum = json.withUnsafeBytes { PackedCheckpointFormat.xxh64($0) }
        for v in [UInt64(headerOffset), UInt64(json.count), checksum] { out += withUnsafeBytes(of: v.littleEndian, Array.init) }
        out += [1, 0, 0, 0] + [UInt8](repeating: 0, count: 28) + PackedCheckpointFormat.magic
        return out
    }

    private func editingTensor(_ index: Int, _ edit: @escaping (inout [String: Any]) -> Void) throws -> [UInt8] {
        try editingHeader { h in
            var tensors = h["tensors"] as! [[String: Any]]
            edit(&tensors[index])
            h["tensors"] = tensors
        }
    }

    @Test func theUneditedRewriteStillOpens() throws {
        #expect(try failure(editingHeader { _ in }).check == "opened")
    }

    @Test func badMagic() throws {
        var b = good
        b[0] = UInt8(ascii: "X")
        let f = try failure(b)
        #expect(f.check == "badMagic" && f.message.contains("not a packed checkpoint"))
        #expect(try failure(Array("{\"a\": 1}                                                                                                                           ".utf8)).check == "badMagic")
    }

    @Test func versionFromTheFuture() throws {
        var b = good
        b[8] = 2
        let f = try failure(b)
        #expect(f.check == "unsupportedVersion" && f.message.contains("version 2") && f.message.contains("up to 1"))
        var c = good
        c[footer + 24] = 2
        #expect(try failure(c).check == "versionMismatch")
    }

    @Test func truncationAnywhereIsCaught() throws {
        for size in [0, 5, 100, good.count / 2, good.count - 64, good.count - 1] {
            let f = try failure(Array(good[0..<size]))
            #expect(f.check == "truncated", "cut at \(size): \(f)")
        }
        #expect(try failure(good + [0]).check == "truncated")
    }

    @Test func headerRunningPastTheFooter() throws {
        var b = good
        b[footer + 9] &+= 100  // header_length + 25600
        let f = try failure(b)
        #expect(f.check == "headerOutOfBounds" && f.message.contains("header truncated"))
        var c = good
        c[footer + 7] = 0x80  // an offset beyond any file
        #expect(try failure(c).check == "headerOutOfBounds")
    }

    @Test func damagedHeader() throws {
        var b = good
        b[headerOffset + 5] ^= 0x20
        #expect(try failure(b).check == "headerChecksumMismatch")
        #expect(try failure(replacingHeader(with: Array("{\"config\": ".utf8))).check == "invalidHeader")
        let f = try failure(editingHeader { $0.removeValue(forKey: "tensors") })
        #expect(f.check == "invalidHeader" && f.message.contains("tensors"))
    }

    @Test func offsetsOutOfBoundsOrMisaligned() throws {
        let past = try failure(editingTensor(0) { $0["offset"] = 1 << 40 })
        #expect(past.check == "outOfBounds" && past.message.contains("a.q_proj.weight"))
        #expect(try failure(editingTensor(0) { $0["offset"] = 0 }).check == "outOfBounds")
        #expect(try failure(editingTensor(1) { $0["offset"] = ($0["offset"] as! Int) + 4 }).check == "misaligned")
        #expect(try failure(editingTensor(0) { $0["length"] = -1 }).check == "invalidEntry")
    }

    @Test func overlappingTensors() throws {
        let f = try failure(editingHeader { h in
            var tensors = h["tensors"] as! [[String: Any]]
            tensors[2]["offset"] = tensors[1]["offset"]
            tensors[2]["xxh64"] = tensors[1]["xxh64"]
            h["tensors"] = tensors
        })
        #expect(f.check == "overlap" && f.message.contains("a.down_proj.weight") && f.message.contains("a.up_proj.weight"))
        let g = try failure(editingHeader { h in
            var files = h["files"] as! [[String: Any]]
            files[0]["length"] = 1000
            h["files"] = files
        })
        #expect(g.check == "overlap" && g.message.contains("tokenizer.json"))
    }

    @Test func sizesThatDoNotMatchTheType() throws {
        // Each edit makes the stored parts disagree with what dtype, block size and shape imply.
        let edits: [(inout [String: Any]) -> Void] = [
            { $0["shape"] = [16, 65] },
            { $0["block_size"] = 128 },
            { $0["scale_kind"] = "f32" },
            { $0["dtype"] = "int8" },
            { $0["parts"] = ["codes": [0, 512], "scales": [512, 576]] },
            { $0["size"] = 4096 },
            { $0["length"] = 64 },
        ]
        for edit in edits {
            let f = try failure(editingTensor(0, edit))
            #expect(f.check == "invalidEntry" && f.message.contains("a.q_proj.weight"), "\(f)")
        }
        for edit: (inout [String: Any]) -> Void in [{ $0["dtype"] = "nf5" }, { $0["block_size"] = 48 },
                                                    { $0["compression"] = "lz4" }, { $0["shape"] = [-1, 64] },
                                                    { $0["shape"] = [1 << 40, 1 << 40] }, { $0["xxh64"] = "xyz" }] {
            #expect(try failure(editingTensor(0, edit)).check == "invalidEntry")
        }
        #expect(try failure(editingHeader { h in
            var tensors = h["tensors"] as! [[String: Any]]
            tensors[1]["name"] = tensors[0]["name"]
            h["tensors"] = tensors
        }).check == "invalidEntry")
    }

    @Test func checksumMismatchNamesTheTensor() throws {
        let (url, opened) = try open(good)
        let info = try opened.get().info("a.down_proj.weight")
        var b = good
        b[info.fileRange.lowerBound + 10] ^= 1
        try Data(b).write(to: url, options: .atomic)
        let packed = try PackedCheckpoint(url: url)  // structure is fine
        try packed.verify(tensor: "a.q_proj.weight")
        let e = #expect(throws: PackedCheckpointError.self) { try packed.verify(tensor: "a.down_proj.weight") }
        guard case let .checksumMismatch(_, name, range, _, _) = e else {
            Issue.record("expected a checksum mismatch, got \(String(describing: e))")
            return
        }
        #expect(name == "a.down_proj.weight" && range == info.fileRange)
        #expect(throws: PackedCheckpointError.self) { try packed.verify() }
        let report = packed.report(verify: true)
        #expect(report.checksumFailures == ["a.down_proj.weight"])
        #expect(report.tensors.first { $0.name == "a.q_proj.weight" }?.checksum == "ok")
    }

    @Test func damagedEmbeddedFileIsRefused() throws {
        let (url, opened) = try open(good)
        let file = try opened.get().files[0]
        var b = good
        b[file.fileRange.lowerBound] ^= 1
        try Data(b).write(to: url, options: .atomic)
        #expect(throws: PackedCheckpointError.self) { try PackedCheckpoint(url: url).embeddedFile("tokenizer.json") }
    }

    @Test func damagedCompressedTensorFailsToDecompress() throws {
        let url = dir.appendingPathComponent("z.qlora")
        try Sample().write(to: url, compress: true)
        let info = try PackedCheckpoint(url: url).info("a.norm.weight")
        #expect(info.isCompressed)
        var b = try [UInt8](Data(contentsOf: url))
        b[info.fileRange.upperBound - 6] ^= 0xff
        try Data(b).write(to: url, options: .atomic)
        let e = #expect(throws: PackedCheckpointError.self) { try PackedCheckpoint(url: url).floats("a.norm.weight") }
        guard case .decompressionFailed = e else {
            Issue.record("expected a decompression failure, got \(String(describing: e))")
            return
        }
    }
}

func read64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
    bytes[at..<(at + 8)].reversed().reduce(0) { $0 << 8 | UInt64($1) }
}
