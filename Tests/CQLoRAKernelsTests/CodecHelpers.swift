import CQLoRAKernels
import QLoRAStorage
import _TestSupport

/// Array-level calls of the C block codec, through the dispatcher (the AVX2 path on
/// this machine) or the scalar reference.
enum Codec {
    static func quantize(_ x: [Float], _ type: QuantType, blockSize: Int,
                         reference: Bool = false) -> (codes: [UInt8], absmax: [Float]) {
        let blocks = (x.count + blockSize - 1) / blockSize
        var codes = [UInt8](repeating: 0, count: blocks * qk_block_bytes(type.code, Int32(blockSize)))
        var absmax = [Float](repeating: 0, count: blocks)
        let run = reference ? qk_quantize_ref : qk_quantize
        run(&codes, &absmax, x, Int64(x.count), type.code, Int32(blockSize))
        return (codes, absmax)
    }

    static func dequantize(_ codes: [UInt8], absmax: [Float], _ type: QuantType, blockSize: Int,
                           reference: Bool = false) -> [Float] {
        var y = [Float](repeating: .nan, count: absmax.count * blockSize)
        let run = reference ? qk_dequantize_ref : qk_dequantize
        run(&y, codes, absmax, Int64(absmax.count), type.code, Int32(blockSize))
        return y
    }

    /// The 4-bit code of every element, undoing the split-halves order in each block.
    static func nibbles(_ codes: [UInt8], blockSize: Int) -> [UInt8] {
        let half = blockSize / 2
        return (0..<codes.count * 2).map { i in
            let block = i / blockSize, j = i % blockSize
            let byte = codes[block * half + j % half]
            return j < half ? byte & 15 : byte >> 4
        }
    }

    /// value(code) of a 4-bit table entry.
    static func value(of nibble: UInt8, _ type: QuantType) -> Float {
        withUnsafePointer(to: type == .nf4 ? qk_nf4_table : qk_fp4_table) {
            UnsafeRawPointer($0).assumingMemoryBound(to: Float.self)[Int(nibble)]
        }
    }

    /// Entry `i` of the signed dynamic 8-bit map of double quantization.
    static func dynamic8(_ i: Int) -> Float {
        withUnsafePointer(to: qk_dynamic8_table) { UnsafeRawPointer($0).assumingMemoryBound(to: Float.self)[i] }
    }

    /// The midpoints between neighbouring values of a 4-bit code table, sorted.
    static func midpoints(_ type: QuantType) -> [Float] {
        let table = (0..<16).map { value(of: UInt8($0), type) }.sorted()
        return (0..<15).map { (table[$0] + table[$0 + 1]) / 2 }
    }

    /// DQ8 storage of fp32 block scales: 8-bit codes, one scale per 256 blocks, the offset.
    static func doubleQuantize(_ absmax: [Float]) -> (codes: [UInt8], groupScales: [Float], offset: Float) {
        let n = absmax.count
        var codes = [UInt8](repeating: 0, count: n), scales = [Float](repeating: 0, count: (n + 255) / 256)
        var offset: Float = 0
        qk_double_quantize(&codes, &scales, &offset, absmax, Int64(n))
        return (codes, scales, offset)
    }

    /// fp32 scales back from their DQ8 storage, through qk_scales_decode.
    static func decodeDoubleQuantized(_ q: [UInt8], groupScales: [Float], offset: Float) -> [Float] {
        var out = [Float](repeating: .nan, count: q.count)
        q.withUnsafeBufferPointer { qp in
            groupScales.withUnsafeBufferPointer { gp in
                var w = qk_packed(type: QuantType.nf4.code, block_size: 64, scale_kind: ScaleKind.dq8.code, reserved: 0,
                                  rows: 1, cols: Int64(q.count) * 64, codes: nil, scales: UnsafeRawPointer(qp.baseAddress),
                                  group_scales: gp.baseAddress, offset: offset)
                qk_scales_decode(&out, &w, 0, Int64(q.count))
            }
        }
        return out
    }
}

/// The first few indices where two arrays differ ([-1] if their lengths do), so a
/// failure message stays short.
func differences<T: Equatable>(_ a: [T], _ b: [T], limit: Int = 8) -> [Int] {
    a.count == b.count ? Array(a.indices.lazy.filter { a[$0] != b[$0] }.prefix(limit)) : [-1]
}

extension Array where Element == Float {
    /// Bit patterns, so that -0 and +0 (and NaN payloads) count as different.
    var bits: [UInt32] { map(\.bitPattern) }
}

/// Weight-like data of `count` values with what breaks codecs, block by block:
/// all-zero blocks with -0, values exactly on a rounding boundary (NF4/FP4 midpoints,
/// INT4/INT8 products landing on k + 0.5), huge, tiny and subnormal magnitudes,
/// and partial last blocks (when `count` is not a multiple of the block size).
func awkwardData(count: Int, type: QuantType, blockSize: Int, seed: UInt64) -> [Float] {
    var rng = SeededGenerator(seed: seed)
    var x = rng.gaussian(count: count, std: 0.05)
    let ties = boundaryValues(type)
    for start in stride(from: 0, to: count, by: blockSize) {
        let block = start..<Swift.min(count, start + blockSize)
        switch (start / blockSize + Int(seed)) % 8 {
        case 0:
            for i in block { x[i] = i % 3 == 0 ? -0.0 : 0 }
        case 1:
            x[block.lowerBound] = ties.absmax
            for (k, i) in block.dropFirst().enumerated() { x[i] = ties.values[k % ties.values.count] }
        case 2:
            for i in block { x[i] *= 1e30 }
        case 3:
            for i in block { x[i] *= 1e-30 }
        case 4:  // (1/absmax) · 127 overflows: INT8/INT4 cap it
            for i in block { x[i] *= 1e-36 }
        case 6:  // subnormal, below bitsandbytes' 1e-38 absmax floor
            for i in block { x[i] *= 1e-38 }
        case 5:  // repeated ±absmax and signed zeros
            for i in block where i % 5 == 0 { x[i] = i % 2 == 0 ? -0.0 : -x[block.lowerBound] }
        default:
            break
        }
    }
    return x
}

/// A block absmax and values whose scaled value lies exactly on a boundary between two codes.
private func boundaryValues(_ type: QuantType) -> (absmax: Float, values: [Float]) {
    switch type {
    case .nf4, .fp4:
        // With a power-of-two absmax, x · (1/m) is exact, so x = mid · m is a tie.
        return (4, Codec.midpoints(type).flatMap { [$0 * 4, -$0 * 4] })
    case .int8, .int4:
        let top: Float = type == .int8 ? 127 : 7, m: Float = 0.37
        let inv = (1 / m) * top
        var values: [Float] = []
        for k in stride(from: -top, to: top, by: 1) {
            let target = k + 0.5, guess = target / inv
            if let x = [guess.nextDown, guess, guess.nextUp].first(where: { $0 * inv == target }) { values.append(x) }
        }
        return (m, values)
    }
}
