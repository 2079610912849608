// The metrics log (append, read back, resume) and resident-memory sampling.

import Foundation
import QLoRATraining
import Testing
import _TestSupport

@Suite struct MetricsTests {
    @Test func appendsAndReadsBack() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.appending("metrics.jsonl")
        let records = [
            MetricsRecord(step: 1, epoch: 0.01, loss: 2.5, learningRate: 1e-4, gradientNorm: 0.7, tokensPerSecond: 812.5,
                          residentBytes: 1 << 20, peakResidentBytes: 2 << 20),
            MetricsRecord(step: 2, loss: .nan, validLoss: .infinity),
        ]
        do {
            let writer = try MetricsWriter(url: url)
            for r in records { try writer.append(r) }
        }
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines[0].hasPrefix(#"{"epoch":0.01,"grad_norm":0.7,"learning_rate":0.0001,"loss":2.5,"peak_rss_bytes":2097152"#))
        #expect(lines[1] == #"{"loss":"nan","step":2,"valid_loss":"inf"}"#)
        let back = try MetricsLog.read(url)
        #expect(back[0] == records[0])
        #expect(back[1].loss!.isNaN && back[1].validLoss == .infinity && back[1].step == 2)
    }

    @Test func resumingDropsLinesPastTheCheckpoint() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let url = dir.appending("metrics.jsonl")
        do {
            let writer = try MetricsWriter(url: url)
            for step in 1...5 { try writer.append(MetricsRecord(step: step, loss: Double(step))) }
        }
        do {
            let writer = try MetricsWriter(url: url, resumingAfter: 3)
            try writer.append(MetricsRecord(step: 4, loss: 40))
        }
        #expect(try MetricsLog.read(url).map(\.step) == [1, 2, 3, 4])
        #expect(try MetricsLog.read(url).last?.loss == 40)
        try Data("{\"step\": 1}\n{\"loss\": 2}\n".utf8).write(to: url)
        #expect(throws: MetricsLogError.invalidLine(url, line: 2)) { try MetricsLog.read(url) }
    }

    @Test func residentMemory() {
        let status = "Name:\tqlora\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t3\n"
        #expect(ResidentMemory.parse(procStatus: status) == ResidentMemory(current: 1024 * 1024, peak: 2048 * 1024))
        let now = ResidentMemory.sample()
        #expect((now.peak ?? 0) > 0)
        #if os(Linux)
        #expect((now.current ?? 0) > 0 && now.current! <= now.peak!)
        #endif
    }
}
