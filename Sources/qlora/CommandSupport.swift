import ArgumentParser
import Foundation
import QLoRAKit

// What the commands that write checkpoints share: reading a block format from
// their options, showing progress, printing the summary.

/// The block format named by --type, --block-size, --double-quant and --fp16-scales.
func quantSpec(type: String, blockSize: Int, doubleQuant: Bool, fp16Scales: Bool) throws -> QuantSpec {
    guard let quantType = QuantType(rawValue: type) else {
        throw ValidationError("--type must be one of \(QuantType.allCases.map(\.rawValue).joined(separator: ", ")), not \(type)")
    }
    guard QuantSpec.blockSizes.contains(blockSize) else {
        throw ValidationError("--block-size must be one of \(QuantSpec.blockSizes.map(String.init).joined(separator: ", ")), not \(blockSize)")
    }
    if doubleQuant && fp16Scales {
        throw ValidationError("--double-quant and --fp16-scales are two ways to store the scales; choose one")
    }
    return QuantSpec(type: quantType, blockSize: blockSize, scaleKind: doubleQuant ? .dq8 : fp16Scales ? .f16 : .f32)
}

extension ProgressLine {
    /// Shows where a quantization or merge is.
    func update(_ p: QuantizeProgress) {
        update(done: p.bytesDone, total: p.bytesTotal, label: "\(p.tensorIndex)/\(p.tensorCount) \(p.tensor)")
    }
}

/// Prints a summary as JSON (snake_case keys), or as `text`.
func printSummary(_ summary: some Encodable, json: Bool, text: () -> String) throws {
    guard json else {
        print(text())
        return
    }
    let encoder = JSONEncoder()
    encoder.keyEncodingStrategy = .convertToSnakeCase
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    FileHandle.standardOutput.write(try encoder.encode(summary))
    print()
}
