import CQLoRAKernels
import CZstd
import Foundation

/// Writes a packed checkpoint (formats/packed-checkpoint.md) in one forward pass:
/// the caller adds embedded files and tensors one at a time (only the one being
/// added needs to be in memory), then `finish()` appends the header and footer
/// and moves the file into place. Until then nothing exists at `url`; an error,
/// or dropping the writer, leaves the destination as it was.
public final class PackedCheckpointWriter {
    public let url: URL
    /// Compress each tensor's region with zstd (kept only where it is smaller).
    public let compress: Bool
    private let out: AtomicFileWriter
    private var header: PackedHeader
    private var names = Set<String>()
    private lazy var zstd = Compressor(url: url)

    /// - Parameters:
    ///   - configJSON: the model's config.json, stored byte for byte; must be a JSON object.
    ///   - metadata: free-form notes kept in the header (the quantizer records its options).
    /// - Throws: `FileError.directoryMissing` when the folder of `url` does not exist,
    ///   `PackedCheckpointError.invalidInput` when the config is not a JSON object.
    public init(url: URL, configJSON: Data, metadata: [String: String] = [:], compress: Bool = false) throws {
        guard let config = String(data: configJSON, encoding: .utf8),
              (try? JSONSerialization.jsonObject(with: configJSON)) is [String: Any]
        else { throw PackedCheckpointError.invalidInput(url, reason: "the model config is not a JSON object") }
        self.url = url
        self.compress = compress
        header = PackedHeader(config: config, metadata: metadata.isEmpty ? nil : metadata, files: [], tensors: [])
        out = try AtomicFileWriter(destination: url)
        var preamble = [UInt8](repeating: 0, count: PackedCheckpointFormat.preambleSize)
        preamble.replaceSubrange(0..<8, with: PackedCheckpointFormat.magic)
        preamble.withUnsafeMutableBytes { $0.storeBytes(of: PackedCheckpointFormat.version.littleEndian, toByteOffset: 8, as: UInt32.self) }
        try out.write(preamble)
    }

    /// Testing hook: fail like a full disk once this many bytes are written.
    public var simulateDiskFullAfter: Int? {
        get { out.simulateDiskFullAfter }
        set { out.simulateDiskFullAfter = newValue }
    }

    /// Bytes written so far.
    public var bytesWritten: Int { out.offset }

    /// Embeds a file (stored uncompressed).
    public func addFile(name: String, contents: Data) throws {
        guard !name.isEmpty, !name.contains("/") else {
            throw PackedCheckpointError.invalidInput(url, reason: "embedded file name \"\(name)\" must be a plain file name")
        }
        try claim(name)
        try out.pad(to: PackedCheckpointFormat.alignment)
        let offset = out.offset
        let checksum = contents.withUnsafeBytes { PackedCheckpointFormat.xxh64($0) }
        try out.write(contents)
        header.files.append(.init(name: name, offset: offset, length: contents.count, xxh64: PackedCheckpointFormat.hex(checksum)))
    }

    /// Adds a block-quantized tensor.
    public func add(_ tensor: QuantizedTensor, name: String) throws {
        try claim(name)
        var parts = ["codes": tensor.parts.codes, "scales": tensor.parts.scales]
        if tensor.spec.scaleKind == .dq8 { parts["group_scales"] = tensor.parts.groupScales }
        try withExtendedLifetime(tensor) {
            try addRegion(tensor.region, name: name, shape: tensor.shape, dtype: tensor.spec.type.rawValue,
                          blockSize: tensor.spec.blockSize, scaleKind: tensor.spec.scaleKind.rawValue, parts: parts)
        }
    }

    /// Adds an unquantized tensor: `bytes` are its little-endian elements, row-major.
    /// - Parameter written: called with each range of `bytes` once it is in the file,
    ///   so a caller reading `bytes` from a memory map can inspect those pages and drop
    ///   them as it goes (`MappedFile.release`), keeping resident memory flat on large
    ///   tensors. If it throws, the error is passed on and the writer must be abandoned.
    public func add(name: String, dtype: TensorDType, shape: [Int], bytes: UnsafeRawBufferPointer,
                    written: ((Range<Int>) throws -> Void)? = nil) throws {
        guard TensorDType.floatWeightTypes.contains(dtype) else {
            throw PackedCheckpointError.invalidInput(url, reason: "tensor \"\(name)\" has dtype \(dtype.rawValue); only F32, F16 and BF16 are stored")
        }
        let count = shape.reduce(1, *)
        guard shape.allSatisfy({ $0 >= 0 }), bytes.count == count * dtype.byteSize else {
            throw PackedCheckpointError.invalidInput(url, reason: "tensor \"\(name)\": \(bytes.count) bytes for \(dtype.rawValue) of shape \(shape)")
        }
        try claim(name)
        try addRegion(bytes, name: name, shape: shape, dtype: dtype.rawValue, blockSize: nil, scaleKind: nil,
                      parts: ["data": 0..<bytes.count], written: written)
    }

    /// Appends the header and footer, flushes and moves the file into place.
    public func finish() throws {
        let encoder = JSONEncoder()
        // Sorted keys: the same model and options always give the same bytes.
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = try encoder.encode(header)
        try out.pad(to: PackedCheckpointFormat.alignment)
        let footer = PackedFooter(headerOffset: out.offset, headerLength: json.count,
                                  headerChecksum: json.withUnsafeBytes { PackedCheckpointFormat.xxh64($0) },
                                  version: PackedCheckpointFormat.version)
        try out.write(json)
        try out.pad(to: PackedCheckpointFormat.alignment)
        try out.write(footer.encoded())
        try out.commit(droppingCachedPages: true)
    }

    /// Drops everything written; the destination is untouched.
    public func abort() { out.abort() }

    private func claim(_ name: String) throws {
        guard !name.isEmpty, names.insert(name).inserted else {
            throw PackedCheckpointError.invalidInput(url, reason: name.isEmpty ? "an empty tensor name" : "\"\(name)\" is added twice")
        }
    }

    /// Regions are hashed, compressed and written a slice at a time, so the bytes are
    /// read once and (with `written`) need not all be resident at once.
    private static let slice = 8 << 20

    private func addRegion(_ region: UnsafeRawBufferPointer, name: String, shape: [Int], dtype: String,
                           blockSize: Int?, scaleKind: String?, parts: [String: Range<Int>],
                           written: ((Range<Int>) throws -> Void)? = nil) throws {
        try out.pad(to: PackedCheckpointFormat.alignment)
        let offset = out.offset
        var checksum: UInt64
        var length = region.count
        var isCompressed = false
        if compress, region.count > 0 {
            // The frame buffer is mapped lazily: only the compressed bytes become resident.
            let bound = ZSTD_compressBound(region.count)
            guard let buffer = AlignedBuffer(count: bound) else {
                throw PackedCheckpointError.outOfMemory(url, name: name, bytes: bound)
            }
            let n = try zstd.compress(region, into: buffer, slice: Self.slice, name: name, consumed: written)
            if n < region.count {
                let frame = UnsafeRawBufferPointer(start: buffer.base, count: n)
                checksum = PackedCheckpointFormat.xxh64(frame)
                try withExtendedLifetime(buffer) { try out.write(frame) }
                length = n
                isCompressed = true
            } else {
                checksum = try writeSlices(region, written: nil)
            }
        } else {
            checksum = try writeSlices(region, written: written)
        }
        header.tensors.append(.init(
            name: name, shape: shape, dtype: dtype, blockSize: blockSize, scaleKind: scaleKind,
            offset: offset, length: length, size: region.count,
            parts: parts.mapValues { [$0.lowerBound, $0.upperBound] },
            compression: isCompressed ? "zstd" : nil, xxh64: PackedCheckpointFormat.hex(checksum)))
    }

    /// Writes `region` as stored bytes; returns their checksum.
    private func writeSlices(_ region: UnsafeRawBufferPointer, written: ((Range<Int>) throws -> Void)?) throws -> UInt64 {
        var hasher = PackedCheckpointFormat.Hasher()
        for start in stride(from: 0, to: region.count, by: Self.slice) {
            let range = start..<min(region.count, start + Self.slice)
            let piece = UnsafeRawBufferPointer(rebasing: region[range])
            hasher.update(piece)
            try out.write(piece)
            try written?(range)
        }
        return hasher.digest
    }
}

/// One zstd context reused for every tensor: level 3 (zstd's default, fast enough
/// to keep up with quantization) and a content checksum in each frame, so a damaged
/// frame fails to decompress even when nobody verified the file first.
private final class Compressor {
    let url: URL
    let context: OpaquePointer

    init(url: URL) {
        self.url = url
        context = ZSTD_createCCtx()
        ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, 3)
        ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1)
    }

    deinit { ZSTD_freeCCtx(context) }

    /// Compresses `source` into one frame in `buffer` (ZSTD_compressBound bytes, which
    /// zstd guarantees is enough), feeding it `slice` bytes at a time and calling
    /// `consumed` with each range once zstd has taken it. Returns the frame's length.
    func compress(_ source: UnsafeRawBufferPointer, into buffer: AlignedBuffer, slice: Int, name: String,
                  consumed: ((Range<Int>) throws -> Void)?) throws -> Int {
        ZSTD_CCtx_reset(context, ZSTD_reset_session_only)
        // Known up front, so the frame header records the content size readers check.
        ZSTD_CCtx_setPledgedSrcSize(context, UInt64(source.count))
        var output = ZSTD_outBuffer(dst: buffer.base, size: buffer.count, pos: 0)
        for start in stride(from: 0, to: source.count, by: slice) {
            let range = start..<min(source.count, start + slice)
            let last = range.upperBound == source.count
            var input = ZSTD_inBuffer(src: source.baseAddress! + start, size: range.count, pos: 0)
            while true {
                let left = ZSTD_compressStream2(context, &output, &input, last ? ZSTD_e_end : ZSTD_e_continue)
                if ZSTD_isError(left) != 0 {
                    throw PackedCheckpointError.invalidInput(url, reason: "zstd failed on \"\(name)\": \(String(cString: ZSTD_getErrorName(left)))")
                }
                if last ? left == 0 : input.pos == input.size { break }
                if output.pos == output.size {
                    throw PackedCheckpointError.invalidInput(url, reason: "zstd output of \"\(name)\" outgrew its bound")
                }
            }
            try consumed?(range)
        }
        return output.pos
    }
}
