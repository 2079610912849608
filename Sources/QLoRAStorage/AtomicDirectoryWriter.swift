import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Builds a folder so that its destination either keeps what it held or gets the
/// complete new contents: files go into a hidden folder `.<name>.tmp-XXXXXX`
/// beside the destination, which `commit()` fsyncs and renames into place.
/// A destination that is a non-empty folder is first moved aside as
/// `.<name>.old-XXXXXX` (rename(2) replaces only an empty one) and deleted once the
/// new folder is in place; if the second rename fails it is moved back. Any
/// failure, or dropping the writer without committing, removes the hidden folder.
public final class AtomicDirectoryWriter {
    public let destination: URL
    /// Where the files go until `commit()`.
    public let temporary: URL
    private var finished = false

    /// - Throws: `FileError.directoryMissing` when the destination's parent folder
    ///   does not exist, `.writeFailed` when the hidden folder cannot be made.
    public init(destination: URL) throws {
        self.destination = destination
        temporary = try Self.makeHiddenFolder(beside: destination, kind: "tmp")
    }

    deinit { abort() }

    /// Syncs the new folder, moves it into place and makes the rename durable.
    public func commit() throws {
        precondition(!finished, "[AtomicDirectoryWriter] commit after commit or abort")
        Self.sync(temporary)
        let occupied = !((try? FileManager.default.contentsOfDirectory(atPath: destination.path))?.isEmpty ?? true)
        do {
            if occupied {
                let displaced = try Self.makeHiddenFolder(beside: destination, kind: "old")
                try Self.rename(destination, to: displaced)
                do {
                    try Self.rename(temporary, to: destination)
                } catch {
                    try? Self.rename(displaced, to: destination)
                    throw error
                }
                try? FileManager.default.removeItem(at: displaced)
            } else {
                try Self.rename(temporary, to: destination)
            }
        } catch {
            abort()
            throw error
        }
        finished = true
        Self.sync(destination.deletingLastPathComponent())
    }

    /// Removes the hidden folder; the destination is untouched.
    public func abort() {
        guard !finished else { return }
        finished = true
        try? FileManager.default.removeItem(at: temporary)
    }

    private static func makeHiddenFolder(beside destination: URL, kind: String) throws -> URL {
        let parent = destination.deletingLastPathComponent()
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: parent.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw FileError.directoryMissing(parent)
        }
        var template = Array(parent.appendingPathComponent(".\(destination.lastPathComponent).\(kind)-XXXXXX").path.utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw FileError.writeFailed(destination, errno: errno)
        }
        // mkdtemp makes it private (0700); the result is as readable as any other output.
        chmod(template, 0o755)
        return URL(fileURLWithPath: String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self), isDirectory: true)
    }

    private static func rename(_ from: URL, to: URL) throws {
        #if canImport(Glibc)
        let moved = Glibc.rename(from.path, to.path)
        #else
        let moved = Darwin.rename(from.path, to.path)
        #endif
        guard moved == 0 else { throw FileError.writeFailed(to, errno: errno) }
    }

    /// Makes new entries of `folder` durable.
    private static func sync(_ folder: URL) {
        let fd = open(folder.path, O_RDONLY)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}
