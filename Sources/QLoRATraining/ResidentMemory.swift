// How much memory this process holds: what the memory estimate is checked against
// and what the metrics log records.
//
// On Linux /proc/self/status has both the current resident set (VmRSS) and its peak
// (VmHWM, the "high water mark"), in kB. Elsewhere getrusage gives the peak only
// (ru_maxrss: kilobytes on Linux, bytes on macOS).

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Resident memory of this process, in bytes.
public struct ResidentMemory: Hashable, Sendable {
    /// Current resident set; nil where the system does not say.
    public var current: Int?
    /// Largest resident set so far.
    public var peak: Int?

    /// Reads the current values.
    public static func sample() -> ResidentMemory {
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) {
            let parsed = parse(procStatus: status)
            if parsed.current != nil || parsed.peak != nil { return parsed }
        }
        var usage = rusage()
        #if os(Linux)
        guard getrusage(Int32(RUSAGE_SELF.rawValue), &usage) == 0 else { return ResidentMemory() }
        return ResidentMemory(current: nil, peak: Int(usage.ru_maxrss) * 1024)
        #else
        guard getrusage(RUSAGE_SELF, &usage) == 0 else { return ResidentMemory() }
        return ResidentMemory(current: nil, peak: Int(usage.ru_maxrss))
        #endif
    }

    /// Restarts the peak from the current resident size, so that the next
    /// sample's `peak` covers only what ran since (Linux: "5" written to
    /// /proc/self/clear_refs resets VmHWM). Freed heap memory that malloc still
    /// holds is handed back first, so the restart is from what is in use.
    /// - Returns: false where the system offers no reset (the peak then stays
    ///   the process's lifetime peak).
    @discardableResult
    public static func resetPeak() -> Bool {
        _ = mallocTrim?(0)
        return (try? Data("5".utf8).write(to: URL(fileURLWithPath: "/proc/self/clear_refs"))) != nil
    }

    /// VmRSS and VmHWM from the text of /proc/<pid>/status.
    public static func parse(procStatus text: String) -> ResidentMemory {
        var out = ResidentMemory()
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, let value = Int(fields[1]) else { continue }
            let bytes = value * (fields.count >= 3 && fields[2] == "kB" ? 1024 : 1)
            switch fields[0] {
            case "VmRSS:": out.current = bytes
            case "VmHWM:": out.peak = bytes
            default: break
            }
        }
        return out
    }

    public init(current: Int? = nil, peak: Int? = nil) {
        self.current = current
        self.peak = peak
    }
}

/// glibc's malloc_trim, which returns freed heap pages to the system; looked up at
/// run time because Swift's Glibc module does not declare it (nil elsewhere).
private let mallocTrim: (@convention(c) (Int) -> Int32)? = {
    #if os(Linux)
    guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "malloc_trim") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
    #else
    return nil
    #endif
}()
