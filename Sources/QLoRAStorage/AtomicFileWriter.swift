import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if canImport(Glibc)
private let systemWrite = Glibc.write
#else
private let systemWrite = Darwin.write
#endif

/// Writes a file so that the destination either keeps its old contents or gets
/// the complete new ones: data goes to a temporary file beside it, which is
/// fsync'ed and renamed over the destination on `commit()`. Any failure, or
/// dropping the writer without committing, removes the temporary file.
public final class AtomicFileWriter {
    public let destination: URL
    public let temporary: URL
    /// Bytes written so far.
    public private(set) var offset: Int = 0
    private var fd: Int32
    private var finished = false
    /// Testing hook: fail with ENOSPC once this many bytes have been written,
    /// the way a full disk does.
    public var simulateDiskFullAfter: Int?

    public init(destination: URL) throws {
        self.destination = destination
        let dir = destination.deletingLastPathComponent()
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue else {
            throw FileError.directoryMissing(dir)
        }
        var template = Array(dir.appendingPathComponent(".\(destination.lastPathComponent).tmp-XXXXXX").path.utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw FileError.cannotOpen(destination, errno: errno) }
        self.fd = fd
        temporary = URL(fileURLWithPath: String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self))
        fchmod(fd, 0o644)
    }

    deinit { abort() }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            var chunk = bytes.count - done
            if let limit = simulateDiskFullAfter {
                chunk = min(chunk, max(0, limit - offset))
                if chunk == 0 { try fail(ENOSPC) }
            }
            let n = systemWrite(fd, bytes.baseAddress! + done, chunk)
            if n < 0 {
                if errno == EINTR { continue }
                try fail(errno)
            }
            done += n
            offset += n
        }
    }

    public func write(_ data: some ContiguousBytes) throws {
        try data.withUnsafeBytes { try write($0) }
    }

    /// Zero bytes up to the next multiple of `alignment`.
    public func pad(to alignment: Int) throws {
        let gap = (alignment - offset % alignment) % alignment
        if gap > 0 { try write([UInt8](repeating: 0, count: gap)) }
    }

    /// Flush to disk and move into place. After this the destination is complete.
    ///
    /// - Parameter droppingCachedPages: also evict the file's pages from the
    ///   page cache once they are on disk, for files that are mapped later
    ///   (see `MappedFile`): the pages a writer leaves there are small, and a
    ///   mapping can only use 2 MiB pages for a file read anew (Linux).
    public func commit(droppingCachedPages: Bool = false) throws {
        precondition(!finished, "[AtomicFileWriter] commit after commit or abort")
        if fsync(fd) != 0 { try fail(errno) }
        #if os(Linux)
        if droppingCachedPages { _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) }
        #endif
        close(fd)
        fd = -1
        if rename(temporary.path, destination.path) != 0 { try fail(errno) }
        finished = true
        // Make the rename itself durable.
        let dfd = open(destination.deletingLastPathComponent().path, O_RDONLY)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }

    /// Drop the temporary file; the destination is untouched.
    public func abort() {
        guard !finished else { return }
        finished = true
        if fd >= 0 { close(fd) }
        fd = -1
        unlink(temporary.path)
    }

    private func fail(_ code: Int32) throws -> Never {
        abort()
        throw FileError.writeFailed(destination, errno: code)
    }
}
