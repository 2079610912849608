// Batches: layout of padded and packed batches, shifted targets, epochs that visit
// every example once, seeded order, and resuming from a saved cursor.

import Foundation
import QLoRATraining
import Testing

@Suite struct BatchLoaderTests {
    let ignore = TrainingExample.ignoreIndex

    /// Example i has i + 2 tokens (100·i + 0, 100·i + 1, ...), the first not trained.
    private func examples(_ count: Int) -> [TrainingExample] {
        (0..<count).map { i in
            let ids = (0..<(i + 2)).map { Int32(100 * i + $0) }
            return TrainingExample(inputIDs: ids, labels: [TrainingExample.ignoreIndex] + ids.dropFirst())
        }
    }

    @Test func paddedBatchShiftsTargetsAndPads() throws {
        var loader = try BatchLoader(examples: examples(2), batchSize: 2, maxSequenceLength: 8, padTokenID: -1, seed: 0, shuffle: false)
        let b = loader.next()
        #expect(b.rows == 2 && b.columns == 3 && b.exampleCount == 2)
        #expect(b.inputIDs == [0, 1, -1, 100, 101, 102])
        #expect(b.targets == [1, ignore, ignore, 101, 102, ignore])
        #expect(b.positionIDs == [0, 1, 0, 0, 1, 2])
        #expect(b.sequenceIDs == [1, 1, 0, 1, 1, 1])
        #expect(b.attentionMask == [1, 1, 0, 1, 1, 1])
        #expect(b.targetCount == 3 && b.tokenCount == 5)
    }

    @Test func packedRowsKeepSequencesApart() throws {
        // Lengths 2, 3, 4, 5 into rows of 6: [2 3] [4] [5].
        var loader = try BatchLoader(examples: examples(4), batchSize: 2, mode: .packed, maxSequenceLength: 6, padTokenID: 0,
                                     seed: 0, shuffle: false)
        let first = loader.next()
        #expect(first.rows == 2 && first.columns == 5 && first.exampleCount == 3)
        #expect(first.inputIDs == [0, 1, 100, 101, 102, 200, 201, 202, 203, 0])
        // No target crosses from one sequence into the next.
        #expect(first.targets == [1, ignore, 101, 102, ignore, 201, 202, 203, ignore, ignore])
        #expect(first.positionIDs == [0, 1, 0, 1, 2, 0, 1, 2, 3, 0])
        #expect(first.sequenceIDs == [1, 1, 2, 2, 2, 1, 1, 1, 1, 0])
        let second = loader.next()
        #expect(second.rows == 1 && second.exampleCount == 1 && second.inputIDs == [300, 301, 302, 303, 304])
        #expect(loader.cursor.position == 4 && loader.cursor.epoch == 0)
        #expect(loader.batchCount(epoch: 0) == 2)
    }

    @Test func everyEpochVisitsEachExampleOnceInASeededOrder() throws {
        let data = examples(10)
        var loader = try BatchLoader(examples: data, batchSize: 3, maxSequenceLength: 16, padTokenID: 0, seed: 42)
        func epoch(_ loader: inout BatchLoader) -> [Int32] {
            (0..<loader.batchCount(epoch: loader.cursor.epoch)).flatMap { _ in
                let b = loader.next()
                return (0..<b.rows).map { b.inputIDs[$0 * b.columns] / 100 }
            }
        }
        let first = epoch(&loader), second = epoch(&loader)
        #expect(first.sorted() == Array(0..<10) && second.sorted() == Array(0..<10))
        #expect(first != second)
        #expect(first != Array(0..<10))
        var again = try BatchLoader(examples: data, batchSize: 3, maxSequenceLength: 16, padTokenID: 0, seed: 42)
        #expect(epoch(&again) == first)
        var other = try BatchLoader(examples: data, batchSize: 3, maxSequenceLength: 16, padTokenID: 0, seed: 43)
        #expect(epoch(&other) != first)
        #expect(loader.cursor.epoch == 1 && loader.cursor.position == 10)
        _ = loader.next()
        #expect(loader.cursor.epoch == 2 && abs(loader.progress - 2.3) < 1e-9)
    }

    @Test func aRestoredCursorContinuesExactly() throws {
        let data = examples(7)
        for mode in BatchingMode.allCases {
            var straight = try BatchLoader(examples: data, batchSize: 2, mode: mode, maxSequenceLength: 9, padTokenID: 0, seed: 7)
            for _ in 0..<5 { _ = straight.next() }
            let saved = try JSONDecoder().decode(DataCursor.self, from: JSONEncoder().encode(straight.cursor))
            let expected = (0..<6).map { _ in straight.next() }
            var resumed = try BatchLoader(examples: data, batchSize: 2, mode: mode, maxSequenceLength: 9, padTokenID: 0, seed: 7)
            try resumed.restore(saved)
            #expect((0..<6).map { _ in resumed.next() } == expected, "\(mode)")
        }
    }

    @Test func aCursorFromOtherDataIsRefused() throws {
        var a = try BatchLoader(examples: examples(5), batchSize: 2, maxSequenceLength: 9, padTokenID: 0, seed: 1)
        _ = a.next()
        var b = try BatchLoader(examples: examples(6), batchSize: 2, maxSequenceLength: 9, padTokenID: 0, seed: 1)
        #expect(throws: BatchLoaderError.self) { try b.restore(a.cursor) }
        var c = try BatchLoader(examples: examples(5), batchSize: 2, maxSequenceLength: 9, padTokenID: 0, seed: 2)
        #expect(throws: BatchLoaderError.self) { try c.restore(a.cursor) }
        var past = a.cursor
        past.position = 99
        #expect(throws: BatchLoaderError.self) { try a.restore(past) }
    }

    @Test func validationBatchesLeaveTheCursorAlone() throws {
        let loader = try BatchLoader(examples: examples(5), batchSize: 2, maxSequenceLength: 9, padTokenID: 0, seed: 1, shuffle: false)
        let batches = Array(loader.batches(epoch: 0))
        #expect(batches.map(\.exampleCount) == [2, 2, 1])
        #expect(loader.cursor.position == 0)
    }

    @Test func badSettingsAreRefused() {
        #expect(throws: BatchLoaderError.noExamples) { try BatchLoader(examples: [], batchSize: 1, maxSequenceLength: 4, padTokenID: 0, seed: 0) }
        #expect(throws: BatchLoaderError.invalidSize("batch size", 0)) {
            try BatchLoader(examples: examples(1), batchSize: 0, maxSequenceLength: 4, padTokenID: 0, seed: 0)
        }
        #expect(throws: BatchLoaderError.exampleLength(index: 3, length: 5, maxSequenceLength: 4)) {
            try BatchLoader(examples: examples(4), batchSize: 1, maxSequenceLength: 4, padTokenID: 0, seed: 0)
        }
    }
}
