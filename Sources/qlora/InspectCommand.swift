import ArgumentParser
import Foundation
import QLoRAKit

/// `qlora inspect FILE [--json]`: what a packed checkpoint holds, what it costs,
/// and whether every checksum holds.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "List a packed checkpoint's configuration and tensors, and verify every checksum."
    )

    @Argument(help: "The packed checkpoint (written by `qlora quantize`).")
    var file: String

    @Flag(name: .long, help: "Print one JSON object instead of a table.")
    var json = false

    @Flag(name: .customLong("no-verify"), help: "Skip checksum verification (reads only the header).")
    var noVerify = false

    func run() throws {
        let packed = try PackedCheckpoint(url: URL(fileURLWithPath: file))
        let progress = ProgressLine()
        let report = packed.report(verify: !noVerify) { done, total in
            progress.update(done: done, total: total, label: "verifying checksums")
        }
        progress.finish()
        if json {
            FileHandle.standardOutput.write(try report.jsonData())
            print()
        } else {
            print(Self.text(report))
        }
        if !report.checksumFailures.isEmpty {
            throw ValidationFailure("\(file): \(report.checksumFailures.count) checksum mismatch(es): \(report.checksumFailures.joined(separator: ", ")); the file is damaged")
        }
    }

    static func text(_ r: PackedCheckpointReport) -> String {
        var lines = ["\(r.file): packed checkpoint v\(r.formatVersion), \(Format.bytes(r.fileBytes))"]
        if let c = try? LlamaConfiguration(jsonData: Data(r.configJSON.utf8), source: URL(fileURLWithPath: r.file)) {
            lines.append("config: \(c.modelType), hidden \(c.hiddenSize), intermediate \(c.intermediateSize), \(c.hiddenLayers) layers, "
                         + "\(c.attentionHeads) heads (\(c.kvHeads) kv) of \(c.headDimensions), vocabulary \(c.vocabularySize)"
                         + (c.tieWordEmbeddings ? ", tied embeddings" : ""))
        } else {
            lines.append("config: not a Llama configuration this qlora reads")
        }
        if !r.metadata.isEmpty {
            lines.append("metadata: " + r.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))
        }
        for f in r.files { lines.append("file \(f.name): \(Format.bytes(f.bytes)), checksum \(f.checksum)") }
        let width = max(4, r.tensors.map(\.name.count).max() ?? 0)
        lines.append("")
        lines.append(Format.pad("tensor", width) + "  type          shape          bytes       bits/w  checksum")
        for t in r.tensors {
            let type = t.blockSize.map { "\(t.dtype)/\($0)/\(t.scaleKind ?? "")" } ?? t.dtype
            let shape = "[" + t.shape.map(String.init).joined(separator: ", ") + "]"
            let stored = t.compressed ? " (zstd \(Format.bytes(t.storedBytes)))" : ""
            lines.append(Format.pad(t.name, width) + "  " + Format.pad(type, 12) + "  " + Format.pad(shape, 13) + "  "
                         + Format.pad(Format.bytes(t.bytes), 10) + "  " + String(format: "%6.3f", t.bitsPerWeight) + "  " + t.checksum + stored)
        }
        lines.append("")
        let quantized = r.tensors.filter { $0.blockSize != nil }.count
        lines.append("\(r.tensors.count) tensors (\(quantized) quantized), \(r.parameters) parameters (\(r.quantizedParameters) quantized)")
        lines.append(String(format: "bits per weight: %.4f overall, %.4f quantized tensors", r.bitsPerWeight, r.quantizedBitsPerWeight))
        if r.verified {
            lines.append(r.checksumFailures.isEmpty ? "checksums: all \(r.tensors.count + r.files.count) verified"
                                                    : "checksums: \(r.checksumFailures.count) MISMATCH")
        } else {
            lines.append("checksums: not verified (--no-verify)")
        }
        return lines.joined(separator: "\n")
    }
}

/// A runtime failure with a message and no usage text.
struct ValidationFailure: Error, LocalizedError {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}

/// Human-readable numbers for the commands' output.
enum Format {
    static func bytes(_ n: Int) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var v = Double(n), u = 0
        while v >= 1000 && u < units.count - 1 {
            v /= 1000
            u += 1
        }
        return u == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[u])
    }

    static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }
}
