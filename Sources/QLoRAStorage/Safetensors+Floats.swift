// Floating tensors as fp32, a slice at a time.
//
// A quantizer walks a 7B checkpoint one tensor, and one band of rows, at a time:
// it converts a range of elements straight from the mapped file into its own
// buffer, so memory stays bounded by that buffer, not by the tensor.

import CQLoRAKernels
import Foundation

extension SafetensorsFile {
    /// Elements converted per step when a whole tensor is scanned (256 KB of fp32).
    private static let scanChunk = 1 << 16

    /// Converts elements `elements` of the row-major flattened tensor `name` (F32,
    /// F16 or BF16) to fp32 into `destination`, which must hold `elements.count` values.
    /// - Throws: `SafetensorsError.missingTensor` or `.notFloatingPoint`.
    /// - Precondition: `elements` lies within the tensor (a caller bug otherwise).
    public func readFloats(_ name: String, elements: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let info = try floatInfo(name)
        precondition(elements.lowerBound >= 0 && elements.upperBound <= info.count,
                     "[SafetensorsFile.readFloats] elements \(elements) outside \(name) (\(info.count) elements)")
        precondition(destination.count >= elements.count,
                     "[SafetensorsFile.readFloats] destination holds \(destination.count) < \(elements.count) values")
        guard !elements.isEmpty else { return }
        convert(info, elements, into: destination.baseAddress!)
    }

    /// Converts rows `rows` of `name`, seen as [rowCount, rowLength] (see `TensorInfo`),
    /// to fp32 into `destination`, which must hold `rows.count · rowLength` values.
    public func readRows(_ name: String, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let info = try floatInfo(name)
        precondition(rows.lowerBound >= 0 && rows.upperBound <= info.rowCount,
                     "[SafetensorsFile.readRows] rows \(rows) outside \(name) (\(info.rowCount) rows)")
        let n = info.rowLength
        try readFloats(name, elements: (rows.lowerBound * n)..<(rows.upperBound * n), into: destination)
    }

    /// A whole floating tensor converted to fp32.
    public func floats(_ name: String) throws -> [Float] {
        let info = try floatInfo(name)
        return [Float](unsafeUninitializedCapacity: info.count) { out, initialized in
            if info.count > 0 { convert(info, 0..<info.count, into: out.baseAddress!) }
            initialized = info.count
        }
    }

    /// A whole floating tensor converted to fp32, for a model that computes with it.
    /// - Throws: `SafetensorsError.nonFinite` with the flat index of the first NaN or ±Inf
    ///   (which would turn every output it touches into NaN), and what `floats` throws.
    public func finiteFloats(_ name: String) throws -> [Float] {
        let values = try floats(name)
        let k = values.withUnsafeBufferPointer { $0.isEmpty ? -1 : Int(qk_find_nonfinite($0.baseAddress!, Int64($0.count))) }
        if k >= 0 { throw SafetensorsError.nonFinite(url, tensor: name, index: k, value: values[k]) }
        return values
    }

    /// Throws `SafetensorsError.nonFinite` with the flat index of the first NaN or
    /// ±Inf in `name`, scanning in fixed-size chunks.
    public func checkFinite(_ name: String) throws {
        let info = try floatInfo(name)
        let total = info.count
        guard total > 0 else { return }
        try withUnsafeTemporaryAllocation(of: Float.self, capacity: min(total, Self.scanChunk)) { buffer in
            var start = 0
            while start < total {
                let n = min(buffer.count, total - start)
                convert(info, start..<(start + n), into: buffer.baseAddress!)
                let k = Int(qk_find_nonfinite(buffer.baseAddress!, Int64(n)))
                if k >= 0 {
                    throw SafetensorsError.nonFinite(url, tensor: name, index: start + k, value: buffer[k])
                }
                start += n
            }
        }
    }

    private func floatInfo(_ name: String) throws -> TensorInfo {
        let info = try info(name)
        guard info.dtype.isFloatWeightType else {
            throw SafetensorsError.notFloatingPoint(url, tensor: name, dtype: info.dtype)
        }
        return info
    }

    /// `elements` is non-empty and inside `info`, which is a floating tensor of this file.
    private func convert(_ info: TensorInfo, _ elements: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        let size = info.dtype.byteSize
        let base = info.byteRange.lowerBound
        let raw = file.bytes((base + elements.lowerBound * size)..<(base + elements.upperBound * size))
        let n = elements.count
        switch info.dtype {
        case .F32:
            // A byte copy, so the source's alignment does not matter.
            _ = memcpy(out, raw.baseAddress!, n * 4)
        case .F16, .BF16:
            let halfToFloat = info.dtype == .F16 ? qk_f16_to_f32 : qk_bf16_to_f32
            if Int(bitPattern: raw.baseAddress!) % 2 == 0 {
                halfToFloat(out, raw.baseAddress!.assumingMemoryBound(to: UInt16.self), Int64(n))
            } else {
                // A header of odd length leaves 16-bit data misaligned; realign through a small buffer.
                withUnsafeTemporaryAllocation(of: UInt16.self, capacity: min(n, 4096)) { scratch in
                    var done = 0
                    while done < n {
                        let m = min(scratch.count, n - done)
                        _ = memcpy(scratch.baseAddress!, raw.baseAddress! + done * 2, m * 2)
                        halfToFloat(out + done, scratch.baseAddress!, Int64(m))
                        done += m
                    }
                }
            }
        default:
            preconditionFailure("[SafetensorsFile] convert called on \(info.dtype) tensor \(info.name)")
        }
    }
}
