import Foundation

// What `qlora inspect` prints: a packed checkpoint's contents, its storage cost,
// and the outcome of verifying every checksum. Built here so the CLI stays a
// printer and tests can check the record without running the binary.

/// A summary of a packed checkpoint. `jsonData()` gives the `--json` form.
public struct PackedCheckpointReport: Sendable, Codable {
    public struct Tensor: Sendable, Codable {
        public var name: String
        /// nf4, int8, … or F32, F16, BF16.
        public var dtype: String
        public var blockSize: Int?
        public var scaleKind: String?
        public var shape: [Int]
        public var elements: Int
        /// Codes + scales + group scales, or the elements: what the weights cost.
        public var bytes: Int
        /// Bytes in the file (smaller when compressed).
        public var storedBytes: Int
        public var compressed: Bool
        public var bitsPerWeight: Double
        /// "ok", "mismatch", or "unchecked".
        public var checksum: String
    }

    public struct File: Sendable, Codable {
        public var name: String
        public var bytes: Int
        public var checksum: String
    }

    public var file: String
    public var fileBytes: Int
    public var formatVersion: UInt32
    public var metadata: [String: String]
    public var files: [File]
    public var tensors: [Tensor]
    public var parameters: Int
    public var quantizedParameters: Int
    /// Weight bytes of all tensors (no padding, header or embedded files).
    public var payloadBytes: Int
    /// 8 · payload / parameters: the whole model.
    public var bitsPerWeight: Double
    /// The same over the quantized tensors only.
    public var quantizedBitsPerWeight: Double
    /// Whether checksums were verified, and which failed.
    public var verified: Bool
    public var checksumFailures: [String]
    /// config.json text; emitted as an object under "config" by `jsonData()`.
    public var configJSON: String

    /// The `--json` output: one object with snake_case keys, `config` as a JSON object.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var object = try JSONSerialization.jsonObject(with: encoder.encode(self)) as? [String: Any] ?? [:]
        object.removeValue(forKey: "config_json")
        object["config"] = (try? JSONSerialization.jsonObject(with: Data(configJSON.utf8))) ?? configJSON
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    }
}

extension PackedCheckpoint {
    /// Describes the file; with `verify`, hashes every tensor and embedded file and
    /// records each outcome instead of stopping at the first mismatch.
    /// `progress` gets (done, total) bytes verified.
    public func report(verify: Bool, progress: ((Int, Int) -> Void)? = nil) -> PackedCheckpointReport {
        var failures: [String] = []
        let total = files.reduce(0) { $0 + $1.fileRange.count } + tensors.reduce(0) { $0 + $1.fileRange.count }
        var done = 0
        func check(_ name: String, _ range: Range<Int>, _ body: () throws -> Void) -> String {
            guard verify else { return "unchecked" }
            defer {
                done += range.count
                progress?(done, total)
            }
            do {
                try body()
                return "ok"
            } catch {
                failures.append(name)
                return "mismatch"
            }
        }

        let fileRecords = files.map { f in
            PackedCheckpointReport.File(name: f.name, bytes: f.fileRange.count,
                                        checksum: check(f.name, f.fileRange) { try self.verify(name: f.name, range: f.fileRange, checksum: f.checksum) })
        }
        let tensorRecords = tensors.map { t in
            var spec: QuantSpec?
            if case let .quantized(s) = t.storage { spec = s }
            return PackedCheckpointReport.Tensor(
                name: t.name, dtype: t.storage.dtypeName, blockSize: spec?.blockSize, scaleKind: spec?.scaleKind.rawValue,
                shape: t.shape, elements: t.count, bytes: t.payloadBytes, storedBytes: t.fileRange.count,
                compressed: t.isCompressed, bitsPerWeight: t.bitsPerWeight,
                checksum: check(t.name, t.fileRange) { try self.verify(tensor: t.name) })
        }
        let quantized = tensors.filter(\.isQuantized)
        func bits(_ ts: [PackedTensorInfo]) -> Double {
            let n = ts.reduce(0) { $0 + $1.count }
            return n == 0 ? 0 : Double(ts.reduce(0) { $0 + $1.payloadBytes } * 8) / Double(n)
        }
        return PackedCheckpointReport(
            file: url.path, fileBytes: file.size, formatVersion: version, metadata: metadata,
            files: fileRecords, tensors: tensorRecords,
            parameters: tensors.reduce(0) { $0 + $1.count },
            quantizedParameters: quantized.reduce(0) { $0 + $1.count },
            payloadBytes: tensors.reduce(0) { $0 + $1.payloadBytes },
            bitsPerWeight: bits(tensors), quantizedBitsPerWeight: bits(quantized),
            verified: verify, checksumFailures: failures,
            configJSON: String(decoding: configJSON, as: UTF8.self))
    }
}
