// The safetensors reader against well-formed files and against each way a file can lie.

import Foundation
import QLoRAStorage
import Testing
import _TestSupport

/// Scratch files for the safetensors, configuration and checkpoint tests.
enum SafetensorsScratch {
    /// A fresh empty folder; the caller removes it.
    static func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("qlora-safetensors-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    static func remove(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }

    /// A file of exactly: length (default: the header's), header text, data.
    static func raw(_ dir: URL, header: String, data: [UInt8] = [], declaredLength: UInt64? = nil) throws -> URL {
        let url = dir.appendingPathComponent("raw-\(UUID().uuidString).safetensors")
        var length = (declaredLength ?? UInt64(header.utf8.count)).littleEndian
        let bytes = withUnsafeBytes(of: &length) { Array($0) } + Array(header.utf8) + data
        try Data(bytes).write(to: url)
        return url
    }

    /// The error `body` throws, or nil.
    static func error<E: Error>(_: E.Type, _ body: () throws -> Void) -> E? {
        do {
            try body()
            return nil
        } catch let e as E {
            return e
        } catch {
            return nil
        }
    }
}

@Suite struct SafetensorsReadTests {
    @Test func writerOutputReadsBackWithAlignedData() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        var writer = SafetensorsWriter(metadata: ["format": "pt", "note": "a \"quoted\"\nline"])
        try writer.add("b.f32", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6])
        try writer.add("a.u8", dtype: .U8, shape: [3], bytes: [7, 8, 9])
        try writer.add("c.i64", dtype: .I64, shape: [1], bytes: [UInt8](repeating: 1, count: 8))
        try writer.add("scalar", dtype: .F16, shape: [], bytes: [0x00, 0x3C])
        try writer.add("empty", dtype: .F32, shape: [0, 4], bytes: [])
        let url = dir.appendingPathComponent("t.safetensors")
        try writer.write(to: url)

        let file = try SafetensorsFile(url: url)
        #expect(file.metadata == ["format": "pt", "note": "a \"quoted\"\nline"])
        #expect(file.dataStart % 8 == 0)
        // Larger elements first, then by name: every tensor aligned to its element size.
        #expect(file.tensors.map(\.name) == ["c.i64", "b.f32", "empty", "scalar", "a.u8"])
        for t in file.tensors { #expect(t.byteRange.lowerBound % t.dtype.byteSize == 0) }
        #expect(try file.floats("b.f32") == [1, 2, 3, 4, 5, 6])
        #expect(try file.floats("scalar") == [1])
        #expect(try file.floats("empty") == [])
        #expect(try Array(file.bytes("a.u8")) == [7, 8, 9])
        #expect(try file.info("b.f32").shape == [2, 3])
        #expect(try file.info("b.f32").rowLength == 3)
    }

    @Test func writerBytesDependOnlyOnContent() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        var first = SafetensorsWriter(metadata: ["x": "1", "y": "2"])
        var second = SafetensorsWriter(metadata: ["y": "2", "x": "1"])
        try first.add("w", shape: [2], floats: [1, 2])
        try first.add("v", shape: [1], floats: [3])
        try second.add("v", shape: [1], floats: [3])
        try second.add("w", shape: [2], floats: [1, 2])
        let a = dir.appendingPathComponent("a.safetensors"), b = dir.appendingPathComponent("b.safetensors")
        try first.write(to: a)
        try second.write(to: b)
        #expect(try Data(contentsOf: a) == Data(contentsOf: b))
    }

    @Test func halfAndBFloatTensorsMatchReferences() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        var rng = SeededGenerator(seed: 7)
        let values = rng.gaussian(count: 7 * 13, std: 3) + [0, -0.0, 65504, 1e-7]
        let halves = values.map { Float16($0) }
        let bfloats = values.map { UInt16(truncatingIfNeeded: $0.bitPattern >> 16) }
        var writer = SafetensorsWriter()
        try writer.add("h", dtype: .F16, shape: [values.count], bytes: halves.withUnsafeBytes { Array($0) })
        try writer.add("b", dtype: .BF16, shape: [values.count], bytes: bfloats.withUnsafeBytes { Array($0) })
        let url = dir.appendingPathComponent("half.safetensors")
        try writer.write(to: url)
        let file = try SafetensorsFile(url: url)
        let halfReference = halves.map { Float($0) }
        let bfloatReference = bfloats.map { Float(bitPattern: UInt32($0) << 16) }
        #expect(try file.floats("h") == halfReference)
        #expect(try file.floats("b") == bfloatReference)

        // A range that starts and ends mid-way, as a quantizer's band would.
        var band = [Float](repeating: .nan, count: 11)
        try band.withUnsafeMutableBufferPointer { try file.readFloats("b", elements: 5..<16, into: $0) }
        #expect(band == Array(bfloatReference[5..<16]))
    }

    @Test func misalignedHalfDataIsRealigned() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        // An odd header length puts the 16-bit data at an odd address.
        let values: [Float16] = (0..<5000).map { Float16(Float($0) * 0.25 - 300) }
        var header = #"{"h":{"dtype":"F16","shape":[50,100],"data_offsets":[0,10000]}}"#
        if header.utf8.count % 2 == 0 { header += " " }
        let url = try SafetensorsScratch.raw(dir, header: header, data: values.withUnsafeBytes { Array($0) })
        let file = try SafetensorsFile(url: url)
        #expect(file.dataStart % 2 == 1)
        var rows = [Float](repeating: 0, count: 3 * 100)
        try rows.withUnsafeMutableBufferPointer { try file.readRows("h", rows: 47..<50, into: $0) }
        #expect(rows == values[4700..<5000].map { Float($0) })
        #expect(try file.floats("h") == values.map { Float($0) })
    }

    @Test func firstNonFiniteIsReportedByFlatIndex() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        // Past one scan chunk (65 536), so the index must carry the chunk offset.
        var big = [Float](repeating: 0.5, count: 70_000)
        big[65_541] = .nan
        big[69_000] = .infinity
        let halves: [Float16] = [1, 2, 3, -.infinity, .nan]
        var writer = SafetensorsWriter()
        try writer.add("big", shape: [700, 100], floats: big)
        try writer.add("half", dtype: .F16, shape: [5], bytes: halves.withUnsafeBytes { Array($0) })
        try writer.add("fine", shape: [3], floats: [1, -2, 3])
        try writer.add("ids", dtype: .I32, shape: [1], bytes: [1, 0, 0, 0])
        let url = dir.appendingPathComponent("nan.safetensors")
        try writer.write(to: url)
        let file = try SafetensorsFile(url: url)

        let bigError = SafetensorsScratch.error(SafetensorsError.self) { try file.checkFinite("big") }
        guard case let .nonFinite(_, tensor, index, value)? = bigError else {
            Issue.record("expected nonFinite, got \(String(describing: bigError))")
            return
        }
        #expect(tensor == "big" && index == 65_541 && value.isNaN)
        #expect(bigError?.localizedDescription.contains("65541") == true)

        let halfError = SafetensorsScratch.error(SafetensorsError.self) { try file.checkFinite("half") }
        guard case let .nonFinite(_, _, halfIndex, halfValue)? = halfError else {
            Issue.record("expected nonFinite, got \(String(describing: halfError))")
            return
        }
        #expect(halfIndex == 3 && halfValue == -.infinity)
        try file.checkFinite("fine")
        #expect(throws: SafetensorsError.notFloatingPoint(url, tensor: "ids", dtype: .I32)) { try file.checkFinite("ids") }
        #expect(throws: SafetensorsError.missingTensor(url, tensor: "nope")) { try file.floats("nope") }
    }
}

@Suite struct SafetensorsBadInputTests {
    private static let entry = #"{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"#

    @Test func fileShorterThanTheLengthField() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("short.safetensors")
        try Data([1, 2, 3, 4, 5]).write(to: url)
        #expect(throws: SafetensorsError.truncated(url, size: 5)) { try SafetensorsFile(url: url) }
    }

    @Test func truncatedData() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        var writer = SafetensorsWriter()
        try writer.add("first", shape: [4], floats: [1, 2, 3, 4])
        try writer.add("last", shape: [4], floats: [5, 6, 7, 8])
        let url = dir.appendingPathComponent("cut.safetensors")
        try writer.write(to: url)
        let whole = try Data(contentsOf: url)
        try whole.dropLast(6).write(to: url)
        let error = SafetensorsScratch.error(SafetensorsError.self) { _ = try SafetensorsFile(url: url) }
        #expect(error == .offsetsPastEnd(url, tensor: "last", end: 32, dataSize: 26))
        #expect(error?.localizedDescription.contains(url.path) == true)
    }

    @Test func headerLengthBeyondTheFile() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = try SafetensorsScratch.raw(dir, header: "{}", declaredLength: 1000)
        #expect(throws: SafetensorsError.headerPastEnd(url, length: 1000, fileSize: 10)) { try SafetensorsFile(url: url) }
        let huge = try SafetensorsScratch.raw(dir, header: "{}", declaredLength: UInt64.max)
        #expect(throws: SafetensorsError.headerTooLarge(huge, length: UInt64.max)) { try SafetensorsFile(url: huge) }
    }

    @Test(arguments: [
        #"{"a":"#, "{not json}", "", #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x"#,
        String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000),
        #"{"a\u12":1}"#, #"{"\ud800":1}"#, "{\"tab\there\":1}",
    ])
    func headerThatIsNotJSON(header: String) throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = try SafetensorsScratch.raw(dir, header: header)
        let error = SafetensorsScratch.error(SafetensorsError.self) { _ = try SafetensorsFile(url: url) }
        guard case .invalidJSON(url, _, _)? = error else {
            Issue.record("expected invalidJSON, got \(String(describing: error))")
            return
        }
    }

    @Test func headerThatIsNotUTF8() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = dir.appendingPathComponent("latin1.safetensors")
        try Data([6, 0, 0, 0, 0, 0, 0, 0, 0x7B, 0x22, 0xE9, 0x22, 0x3A, 0x31]).write(to: url)
        #expect(throws: SafetensorsError.invalidJSON(url, offset: 0, reason: "the header is not valid UTF-8")) {
            try SafetensorsFile(url: url)
        }
    }

    @Test func headerThatIsNotAnObject() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = try SafetensorsScratch.raw(dir, header: "[1, 2]  ")
        #expect(throws: SafetensorsError.headerNotObject(url)) { try SafetensorsFile(url: url) }
    }

    @Test func overlappingOffsets() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let header = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#
        let url = try SafetensorsScratch.raw(dir, header: header, data: [UInt8](repeating: 0, count: 24))
        #expect(throws: SafetensorsError.overlap(url, tensor: "b", other: "a")) { try SafetensorsFile(url: url) }
    }

    @Test func offsetsPastTheEnd() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = try SafetensorsScratch.raw(dir, header: #"{"w":\#(Self.entry)}"#, data: [UInt8](repeating: 0, count: 8))
        #expect(throws: SafetensorsError.offsetsPastEnd(url, tensor: "w", end: 16, dataSize: 8)) { try SafetensorsFile(url: url) }
    }

    @Test func holesAndTrailingBytes() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let gapHeader = #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}"#
        let gap = try SafetensorsScratch.raw(dir, header: gapHeader, data: [UInt8](repeating: 0, count: 10))
        #expect(throws: SafetensorsError.gap(gap, tensor: "b", from: 4, to: 6)) { try SafetensorsFile(url: gap) }
        let trailing = try SafetensorsScratch.raw(dir, header: #"{"w":\#(Self.entry)}"#, data: [UInt8](repeating: 0, count: 20))
        #expect(throws: SafetensorsError.trailingBytes(trailing, covered: 16, dataSize: 20)) { try SafetensorsFile(url: trailing) }
    }

    @Test func sizeThatDisagreesWithShape() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = try SafetensorsScratch.raw(
            dir, header: #"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#, data: [UInt8](repeating: 0, count: 12))
        let error = SafetensorsScratch.error(SafetensorsError.self) { _ = try SafetensorsFile(url: url) }
        #expect(error == .sizeMismatch(url, tensor: "w", dtype: .F32, shape: [2, 2], expected: 16, found: 12))
        #expect(error?.localizedDescription.contains("\"w\"") == true)
        let overflow = try SafetensorsScratch.raw(
            dir, header: #"{"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,0]}}"#)
        #expect(throws: SafetensorsError.sizeOverflow(overflow, tensor: "w", shape: [1 << 62, 8])) { try SafetensorsFile(url: overflow) }
    }

    @Test func unsupportedDTypeIsNamedWithTheSupportedOnes() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = try SafetensorsScratch.raw(
            dir, header: #"{"scale":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0])
        let error = SafetensorsScratch.error(SafetensorsError.self) { _ = try SafetensorsFile(url: url) }
        #expect(error == .unsupportedDType(url, tensor: "scale", dtype: "F8_E4M3"))
        let message = error?.localizedDescription ?? ""
        #expect(message.contains("\"scale\"") && message.contains("F8_E4M3"))
        #expect(message.contains("F32") && message.contains("BF16") && message.contains("F16"))
    }

    @Test(arguments: [
        (#"{"w":[1]}"#, "entry"),
        (#"{"w":{"shape":[1],"data_offsets":[0,4]}}"#, "dtype"),
        (#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, "shape"),
        (#"{"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}"#, "shape"),
        (#"{"w":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}"#, "shape"),
        (#"{"w":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}"#, "shape"),
        (#"{"w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}"#, "shape"),
        (#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#, "data_offsets"),
        (#"{"w":{"dtype":"F32","shape":[1],"data_offsets":["0","4"]}}"#, "data_offsets"),
    ])
    func malformedEntries(header: String, field: String) throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let url = try SafetensorsScratch.raw(dir, header: header, data: [0, 0, 0, 0])
        #expect(throws: SafetensorsError.malformedEntry(url, tensor: "w", field: field)) { try SafetensorsFile(url: url) }
    }

    @Test func reversedOffsetsDuplicatesAndMetadata() throws {
        let dir = try SafetensorsScratch.directory()
        defer { SafetensorsScratch.remove(dir) }
        let reversed = try SafetensorsScratch.raw(dir, header: #"{"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#)
        #expect(throws: SafetensorsError.reversedOffsets(reversed, tensor: "w", begin: 4, end: 0)) { try SafetensorsFile(url: reversed) }
        let twice = try SafetensorsScratch.raw(dir, header: #"{"w":\#(Self.entry),"w":\#(Self.entry)}"#, data: [UInt8](repeating: 0, count: 16))
        #expect(throws: SafetensorsError.duplicateName(twice, name: "w")) { try SafetensorsFile(url: twice) }
        let badMetadata = try SafetensorsScratch.raw(dir, header: #"{"__metadata__":{"format":"pt","step":3}}"#)
        #expect(throws: SafetensorsError.invalidMetadata(badMetadata, key: "step")) { try SafetensorsFile(url: badMetadata) }
    }
}
