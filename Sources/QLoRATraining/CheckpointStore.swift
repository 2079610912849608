// Saving training checkpoints so that a crash or a full disk never costs the last good one.
//
// Layout: <directory>/checkpoint-<step>/ (the Hugging Face Trainer's naming).
// Saving step N:
//   1. write every file into a fresh hidden folder .checkpoint-N.tmp-XXXXXX beside
//      the others (each file fsync'ed, trainer_state.json last, then the folder);
//   2. rename it to checkpoint-N in one step, and fsync the parent folder;
//   3. only then delete the oldest checkpoints beyond keepLast.
// Until step 2 completes, the previous checkpoints are untouched; a failure removes
// the hidden folder, and one left behind by a killed process is ignored and cleared
// by the next save. Replacing an existing checkpoint-N (saving the same step twice)
// moves the old one aside as .checkpoint-N.old-XXXXXX first; if the process dies
// between the two renames, the next listing puts it back.

import Foundation
import QLoRAStorage
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A folder of training checkpoints.
public struct CheckpointStore: Sendable {
    public static let adapterFileName = "adapter_model.safetensors"
    public static let optimizerFileName = "optimizer.safetensors"
    public static let stateFileName = "trainer_state.json"
    static let prefix = "checkpoint-"

    public let directory: URL
    /// How many checkpoints to keep (the newest); nil keeps all.
    public var keepLast: Int?
    /// Testing hook: writing trainer_state.json or an extra file fails with ENOSPC
    /// after this many bytes, as on a full disk.
    public var simulateDiskFullAfter: Int?

    public init(directory: URL, keepLast: Int? = nil) {
        self.directory = directory
        self.keepLast = keepLast
    }

    // MARK: - Listing

    /// Complete checkpoints, oldest first.
    /// - Throws: `FileError` when the folder exists but cannot be read.
    public func checkpoints() throws -> [(step: Int, url: URL)] {
        let names = try entries()
        var found: [(Int, URL)] = []
        for name in names {
            if let step = Self.step(ofFolder: name) {
                found.append((step, directory.appendingPathComponent(name, isDirectory: true)))
            } else if let step = Self.step(ofDisplaced: name), !names.contains(Self.folderName(step)) {
                // A replacement died between its two renames: the displaced copy is the good one.
                let url = directory.appendingPathComponent(Self.folderName(step), isDirectory: true)
                if rename(directory.appendingPathComponent(name).path, url.path) == 0 { found.append((step, url)) }
            }
        }
        return found.sorted { $0.0 < $1.0 }.map { (step: $0.0, url: $0.1) }
    }

    /// The newest complete checkpoint, nil when there is none.
    public func latest() throws -> URL? { try checkpoints().last?.url }

    // MARK: - Saving

    /// Writes `checkpoint` as checkpoint-<step> and prunes to `keepLast`.
    /// - Returns: the checkpoint folder.
    /// - Throws: `FileError` when a write fails (earlier checkpoints are then untouched
    ///   and nothing partial remains), `CheckpointStoreError` for inconsistent contents.
    @discardableResult
    public func save<C>(_ checkpoint: TrainingCheckpoint<C>) throws -> URL {
        guard checkpoint.parameters.count == checkpoint.layout.count, checkpoint.optimizer.parameterCount == checkpoint.layout.count else {
            throw CheckpointStoreError.inconsistent(directory, "the layout has \(checkpoint.layout.count) values, the parameters \(checkpoint.parameters.count), the optimizer \(checkpoint.optimizer.parameterCount)")
        }
        let reserved = [Self.adapterFileName, Self.optimizerFileName, Self.stateFileName]
        if let bad = checkpoint.extraFiles.keys.first(where: { reserved.contains($0) || $0.contains("/") || $0.hasPrefix(".") || $0.isEmpty }) {
            throw CheckpointStoreError.inconsistent(directory, "extra file name \"\(bad)\" is reserved or not a plain file name")
        }
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw FileError.directoryMissing(directory)
        }
        let existing = try checkpoints()
        try removeLeftovers()

        let folder = Self.folderName(checkpoint.step)
        let temporary = try makeTemporaryFolder("." + folder + ".tmp-")
        do {
            try write(checkpoint, into: temporary)
            syncDirectory(temporary)
            let final = directory.appendingPathComponent(folder, isDirectory: true)
            if existing.contains(where: { $0.step == checkpoint.step }) {
                let displaced = try makeTemporaryFolder("." + folder + ".old-")
                try renameOrThrow(final, displaced)
                try renameOrThrow(temporary, final)
                try? FileManager.default.removeItem(at: displaced)
            } else {
                try renameOrThrow(temporary, final)
            }
            syncDirectory(directory)
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw error
        }
        if let keepLast {
            let all = try checkpoints()
            for old in all.dropLast(max(keepLast, 1)) where old.step != checkpoint.step {
                try? FileManager.default.removeItem(at: old.url)
            }
        }
        return directory.appendingPathComponent(folder, isDirectory: true)
    }

    private func write<C>(_ c: TrainingCheckpoint<C>, into folder: URL) throws {
        var adapter = SafetensorsWriter(metadata: c.adapterMetadata)
        for e in c.layout.entries {
            try adapter.add(e.name, shape: e.shape, floats: Array(c.parameters[e.range]))
        }
        try adapter.write(to: folder.appendingPathComponent(Self.adapterFileName))

        var optimizer = SafetensorsWriter()
        try optimizer.add("exp_avg", shape: [c.layout.count], floats: c.optimizer.firstMoment)
        try optimizer.add("exp_avg_sq", shape: [c.layout.count], floats: c.optimizer.secondMoment)
        try optimizer.write(to: folder.appendingPathComponent(Self.optimizerFileName))

        for (name, data) in c.extraFiles.sorted(by: { $0.key < $1.key }) {
            try writeFile(data, to: folder.appendingPathComponent(name))
        }
        let state = TrainerState(
            format: TrainerState<C>.format, version: TrainerState<C>.version, step: c.step,
            parameters: c.layout.entries.map { .init(name: $0.name, shape: $0.shape) },
            optimizer: .init(step: c.optimizer.step, hyperparameters: c.optimizer.hyperparameters, groups: c.optimizer.groups),
            random: c.random, dataCursor: c.dataCursor, configuration: c.configuration, extraFiles: c.extraFiles.keys.sorted(),
            threads: c.threads)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFile(try encoder.encode(state), to: folder.appendingPathComponent(Self.stateFileName))
    }

    private func writeFile(_ data: Data, to url: URL) throws {
        let out = try AtomicFileWriter(destination: url)
        out.simulateDiskFullAfter = simulateDiskFullAfter
        try out.write(data)
        try out.commit()
    }

    // MARK: - Loading

    /// Reads the checkpoint in `folder`.
    /// - Throws: `FileError` for unreadable files, `SafetensorsError` for a damaged
    ///   tensor file, `CheckpointStoreError` when the pieces are missing or do not fit.
    public func load<C>(_ folder: URL, as: C.Type = C.self) throws -> TrainingCheckpoint<C> {
        let stateURL = folder.appendingPathComponent(Self.stateFileName)
        guard FileManager.default.fileExists(atPath: stateURL.path) else { throw CheckpointStoreError.missingFile(folder, Self.stateFileName) }
        let stateFile = try MappedFile(url: stateURL)
        let stateData = withExtendedLifetime(stateFile) { Data(stateFile.bytes) }
        let state: TrainerState<C>
        do {
            let header = try JSONDecoder().decode(StateHeader.self, from: stateData)
            guard header.format == TrainerState<C>.format, let version = header.version, version <= TrainerState<C>.version else {
                throw CheckpointStoreError.unsupportedFormat(stateURL, format: header.format ?? "none", version: header.version ?? 0)
            }
            state = try JSONDecoder().decode(TrainerState<C>.self, from: stateData)
        } catch let error as DecodingError {
            throw CheckpointStoreError.invalidState(stateURL, Self.describe(error))
        }
        let layout = try ParameterLayout(state.parameters.map { ($0.name, $0.shape) })

        let adapterURL = folder.appendingPathComponent(Self.adapterFileName)
        let adapter = try SafetensorsFile(url: adapterURL)
        var parameters = [Float](repeating: 0, count: layout.count)
        for e in layout.entries {
            let info = try adapter.info(e.name)
            guard info.dtype == .F32, info.shape == e.shape else {
                throw CheckpointStoreError.inconsistent(adapterURL, "tensor \(e.name) is \(info.dtype.rawValue) \(info.shape), the state expects F32 \(e.shape)")
            }
            try parameters.withUnsafeMutableBufferPointer { p in
                try adapter.readFloats(e.name, elements: 0..<e.count, into: UnsafeMutableBufferPointer(rebasing: p[e.range]))
            }
        }
        let optimizerURL = folder.appendingPathComponent(Self.optimizerFileName)
        let moments = try SafetensorsFile(url: optimizerURL)
        var first: [Float] = [], second: [Float] = []
        for (name, out) in [("exp_avg", 0), ("exp_avg_sq", 1)] {
            let info = try moments.info(name)
            guard info.dtype == .F32, info.shape == [layout.count] else {
                throw CheckpointStoreError.inconsistent(optimizerURL, "tensor \(name) is \(info.dtype.rawValue) \(info.shape), expected F32 [\(layout.count)]")
            }
            if out == 0 { first = try moments.floats(name) } else { second = try moments.floats(name) }
        }
        let optimizer: AdamW
        do {
            optimizer = try AdamW(hyperparameters: state.optimizer.hyperparameters, groups: state.optimizer.groups,
                                  step: state.optimizer.step, firstMoment: first, secondMoment: second)
        } catch let error as AdamWError {
            throw CheckpointStoreError.inconsistent(stateURL, error.localizedDescription)
        }
        var extra: [String: Data] = [:]
        for name in state.extraFiles {
            guard !name.contains("/"), !name.hasPrefix(".") else { throw CheckpointStoreError.inconsistent(stateURL, "extra file name \"\(name)\" is not a plain file name") }
            let url = folder.appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: url.path) else { throw CheckpointStoreError.missingFile(folder, name) }
            let file = try MappedFile(url: url)
            extra[name] = withExtendedLifetime(file) { Data(file.bytes) }
        }
        return TrainingCheckpoint(step: state.step, layout: layout, parameters: parameters, optimizer: optimizer,
                                  random: state.random, dataCursor: state.dataCursor, configuration: state.configuration,
                                  adapterMetadata: adapter.metadata, extraFiles: extra, threads: state.threads)
    }

    // MARK: - File system

    static func folderName(_ step: Int) -> String { prefix + String(step) }

    /// N for "checkpoint-N".
    static func step(ofFolder name: String) -> Int? {
        guard name.hasPrefix(prefix) else { return nil }
        let digits = name.dropFirst(prefix.count)
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
        return Int(digits)
    }

    /// N for ".checkpoint-N.old-XXXXXX".
    static func step(ofDisplaced name: String) -> Int? {
        guard name.hasPrefix("."), let dot = name.range(of: ".old-") else { return nil }
        return step(ofFolder: String(name[name.index(after: name.startIndex)..<dot.lowerBound]))
    }

    private func entries() throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory) else { return [] }
        guard isDirectory.boolValue else { throw FileError.notRegularFile(directory) }
        do {
            return try FileManager.default.contentsOfDirectory(atPath: directory.path)
        } catch {
            throw FileError.cannotOpen(directory, errno: EACCES)
        }
    }

    /// Removes hidden folders a killed save left behind (displaced copies were restored by `checkpoints()`).
    private func removeLeftovers() throws {
        for name in try entries() where name.hasPrefix("." + Self.prefix) && (name.contains(".tmp-") || name.contains(".old-")) {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
    }

    private func makeTemporaryFolder(_ prefix: String) throws -> URL {
        var template = Array(directory.appendingPathComponent(prefix + "XXXXXX").path.utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw FileError.cannotOpen(directory, errno: errno)
        }
        // mkdtemp makes it private (0700); a checkpoint is as readable as any other output.
        chmod(template, 0o755)
        return URL(fileURLWithPath: String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self), isDirectory: true)
    }

    private func renameOrThrow(_ from: URL, _ to: URL) throws {
        guard rename(from.path, to.path) == 0 else { throw FileError.writeFailed(to, errno: errno) }
    }

    /// Makes renames and new files in `folder` durable.
    private func syncDirectory(_ folder: URL) {
        let fd = open(folder.path, O_RDONLY)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case let .keyNotFound(key, c): "missing \((c.codingPath + [key]).map(\.stringValue).joined(separator: "."))"
        case let .typeMismatch(_, c), let .valueNotFound(_, c), let .dataCorrupted(c):
            "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        @unknown default: "\(error)"
        }
    }
}

/// The fields of trainer_state.json read before anything else, to refuse other formats by name.
private struct StateHeader: Decodable {
    var format: String?
    var version: Int?
}

/// A checkpoint that cannot be saved or loaded as it is.
public enum CheckpointStoreError: Error, LocalizedError, Equatable {
    case missingFile(URL, String)
    case unsupportedFormat(URL, format: String, version: Int)
    case invalidState(URL, String)
    case inconsistent(URL, String)

    public var errorDescription: String? {
        switch self {
        case let .missingFile(folder, name): "\(folder.path): the checkpoint has no \(name) (not a checkpoint folder, or an incomplete copy)"
        case let .unsupportedFormat(url, format, version):
            "\(url.path): format \"\(format)\" version \(version) is not a training state this version reads (\"\(TrainerState<Int>.format)\" up to version \(TrainerState<Int>.version))"
        case let .invalidState(url, reason): "\(url.path): malformed training state: \(reason)"
        case let .inconsistent(url, reason): "\(url.path): \(reason)"
        }
    }
}
