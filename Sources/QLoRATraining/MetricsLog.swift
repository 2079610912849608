// Training metrics as JSON lines: one object per logged step, appended as training
// goes, so a crashed run still has its curve and `qlora plot` (or jq, or pandas)
// can read it while training runs.
//
//   {"learning_rate":0.0002,"loss":2.31,"peak_rss_bytes":...,"rss_bytes":...,"step":10,"tokens_per_second":812.5}
//
// Keys are snake_case and sorted; absent values are left out; NaN and ±Inf are
// written as the strings "nan", "inf" and "-inf" (JSON has no literal for them).
// Resuming from a checkpoint at step N first drops the lines after N, which the
// resumed run will log again.

import Foundation
import QLoRAStorage

/// One line of the metrics log.
public struct MetricsRecord: Hashable, Sendable, Codable {
    public var step: Int
    /// Epochs completed, with the fraction of the current one.
    public var epoch: Double?
    /// Mean training loss per target token over the logging interval.
    public var loss: Double?
    public var validLoss: Double?
    public var learningRate: Double?
    /// Global gradient norm before clipping.
    public var gradientNorm: Double?
    public var tokensPerSecond: Double?
    /// Resident memory now and at its peak (see ResidentMemory).
    public var residentBytes: Int?
    public var peakResidentBytes: Int?

    public init(step: Int, epoch: Double? = nil, loss: Double? = nil, validLoss: Double? = nil, learningRate: Double? = nil,
                gradientNorm: Double? = nil, tokensPerSecond: Double? = nil, residentBytes: Int? = nil, peakResidentBytes: Int? = nil) {
        self.step = step
        self.epoch = epoch
        self.loss = loss
        self.validLoss = validLoss
        self.learningRate = learningRate
        self.gradientNorm = gradientNorm
        self.tokensPerSecond = tokensPerSecond
        self.residentBytes = residentBytes
        self.peakResidentBytes = peakResidentBytes
    }

    enum CodingKeys: String, CodingKey {
        case step, epoch, loss
        case validLoss = "valid_loss", learningRate = "learning_rate", gradientNorm = "grad_norm"
        case tokensPerSecond = "tokens_per_second", residentBytes = "rss_bytes", peakResidentBytes = "peak_rss_bytes"
    }
}

/// Appends metrics records to a JSON-lines file.
public final class MetricsWriter {
    public let url: URL
    private let handle: FileHandle
    private let encoder: JSONEncoder

    /// Opens `url` for appending, creating it when absent.
    /// - Parameter resumingAfter: drop existing lines with a step above this first
    ///   (rewriting the file atomically); nil keeps every line.
    /// - Throws: `FileError` when the file cannot be written, `MetricsLogError` when the
    ///   existing lines cannot be read for resuming.
    public init(url: URL, resumingAfter step: Int? = nil) throws {
        self.url = url
        encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let exists = FileManager.default.fileExists(atPath: url.path)
        if let step, exists {
            let kept = try MetricsLog.read(url).filter { $0.step <= step }
            let out = try AtomicFileWriter(destination: url)
            for record in kept { try out.write(try Self.line(record, encoder)) }
            try out.commit()
        } else if !exists {
            let out = try AtomicFileWriter(destination: url)
            try out.commit()
        }
        guard let handle = FileHandle(forWritingAtPath: url.path) else { throw FileError.cannotOpen(url, errno: errno) }
        self.handle = handle
        handle.seekToEndOfFile()
    }

    deinit { try? handle.close() }

    /// Appends one line.
    public func append(_ record: MetricsRecord) throws {
        let data = try Self.line(record, encoder)
        do {
            try handle.write(contentsOf: data)
        } catch {
            let ns = error as NSError
            throw FileError.writeFailed(url, errno: ns.domain == NSPOSIXErrorDomain ? Int32(truncatingIfNeeded: ns.code) : EIO)
        }
    }

    private static func line(_ record: MetricsRecord, _ encoder: JSONEncoder) throws -> Data {
        var data = try encoder.encode(record)
        data.append(UInt8(ascii: "\n"))
        return data
    }
}

/// Reading a metrics log back.
public enum MetricsLog {
    /// The records of `url` in file order; blank lines are skipped.
    /// - Throws: `FileError`, or `MetricsLogError` naming the line that is not a record.
    public static func read(_ url: URL) throws -> [MetricsRecord] {
        let file = try MappedFile(url: url)
        let data = withExtendedLifetime(file) { Data(file.bytes) }
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        var records: [MetricsRecord] = []
        for (i, line) in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated()
        where line.contains(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0D }) {
            do {
                records.append(try decoder.decode(MetricsRecord.self, from: Data(line)))
            } catch {
                throw MetricsLogError.invalidLine(url, line: i + 1)
            }
        }
        return records
    }
}

public enum MetricsLogError: Error, LocalizedError, Equatable {
    case invalidLine(URL, line: Int)

    public var errorDescription: String? {
        switch self {
        case let .invalidLine(url, line): "\(url.path):\(line): not a metrics record (a JSON object with at least \"step\")"
        }
    }
}
