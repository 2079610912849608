import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One status line on stderr, redrawn in place (at most ten times a second) with
/// the fraction done, the rate and the time left. Silent when stderr is not a
/// terminal, so logs and pipes get only the final output.
final class ProgressLine {
    private let enabled = isatty(STDERR_FILENO) != 0
    private let started = Date()
    private var lastDraw = Date.distantPast
    private var drawn = false

    /// `done` and `total` are bytes; `label` says what is being worked on.
    func update(done: Int, total: Int, label: String) {
        guard enabled else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.1 || done == total else { return }
        lastDraw = now
        let elapsed = now.timeIntervalSince(started)
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let percent = total > 0 ? 100 * done / total : 100
        let head = String(format: "[%3d%%] %7.1f MB/s  ETA %@  ", percent, rate / 1e6, Self.clock(eta))
        let room = max(0, Self.columns() - head.count - 1)
        let tail = label.count > room ? "…" + label.suffix(max(0, room - 1)) : label
        write("\r\u{1B}[K" + head + tail)
        drawn = true
    }

    /// Redraws the line with `text` (cut to the terminal's width), at most ten
    /// times a second unless `force`.
    func show(_ text: String, force: Bool = false) {
        guard enabled else { return }
        let now = Date()
        guard force || now.timeIntervalSince(lastDraw) >= 0.1 else { return }
        lastDraw = now
        let room = max(1, Self.columns() - 1)
        write("\r\u{1B}[K" + (text.count > room ? String(text.prefix(room - 1)) + "…" : text))
        drawn = true
    }

    /// Prints `line` on stdout above the progress line, which is drawn again on the next update.
    func print(_ line: String) {
        finish()
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }

    /// Erases the line so what follows starts clean.
    func finish() {
        guard enabled, drawn else { return }
        write("\r\u{1B}[K")
        drawn = false
    }

    private func write(_ s: String) {
        FileHandle.standardError.write(Data(s.utf8))
    }

    static func clock(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }

    private static func columns() -> Int {
        var size = winsize()
        guard ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }
}
