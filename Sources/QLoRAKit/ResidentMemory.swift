import Foundation

/// This process's resident memory as Linux reports it in /proc/self/status:
/// what `--verbose` and the benchmarks print to show that a packed model
/// costs about its packed size.
public struct ResidentMemory: Sendable, Equatable {
    /// VmRSS: resident now, mapped file pages included.
    public var current: Int
    /// VmHWM: the peak of VmRSS so far.
    public var peak: Int

    /// nil where /proc is unavailable (not Linux).
    public static func now() -> ResidentMemory? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        func kilobytes(_ key: String) -> Int? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return nil }
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        }
        guard let rss = kilobytes("VmRSS"), let hwm = kilobytes("VmHWM") else { return nil }
        return ResidentMemory(current: rss * 1024, peak: hwm * 1024)
    }
}
