// Training checkpoints: an exact round trip, and that a full disk, a killed process
// or pruning never costs the last good checkpoint.

import Foundation
import QLoRAStorage
import QLoRATraining
import Testing
import _TestSupport

@Suite struct CheckpointStoreTests {
    struct Settings: Codable, Equatable, Sendable {
        var learningRate: Double
        var rank: Int
    }

    /// A checkpoint after `step` made-up AdamW updates of a two-tensor adapter.
    private func checkpoint(step: Int) throws -> TrainingCheckpoint<Settings> {
        let layout = try ParameterLayout([("layers.0.q_proj.lora_A.weight", [2, 3]), ("layers.0.q_proj.lora_B.weight", [3, 2])])
        var rng = Xoshiro256(seed: UInt64(step))
        var parameters = (0..<layout.count).map { _ in rng.nextFloat() - 0.5 }
        var adam = try AdamW(parameterCount: layout.count)
        for _ in 0..<step {
            adam.update(parameters: &parameters, gradients: (0..<layout.count).map { _ in rng.nextFloat() - 0.5 }, learningRate: 1e-2)
        }
        return TrainingCheckpoint(step: step, layout: layout, parameters: parameters, optimizer: adam, random: rng,
                                  dataCursor: DataCursor(epoch: 1, position: step, fingerprint: "abc"),
                                  configuration: Settings(learningRate: 1e-2, rank: 2),
                                  extraFiles: ["adapter_config.json": Data(#"{"r": 2}"#.utf8)])
    }

    @Test func roundTripIsExact() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = CheckpointStore(directory: dir.appending("checkpoints"))
        #expect(try store.latest() == nil)
        let saved = try checkpoint(step: 3)
        let url = try store.save(saved)
        #expect(url.lastPathComponent == "checkpoint-3")
        #expect(try FileManager.default.contentsOfDirectory(atPath: url.path).sorted()
            == ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"])
        let loaded = try store.load(url, as: Settings.self)
        #expect(loaded.step == 3 && loaded.layout == saved.layout && loaded.parameters == saved.parameters)
        #expect(loaded.optimizer == saved.optimizer)
        #expect(loaded.random == saved.random && loaded.dataCursor == saved.dataCursor)
        #expect(loaded.configuration == saved.configuration && loaded.extraFiles == saved.extraFiles)
        #expect(loaded.adapterMetadata == ["format": "pt"])
        // The adapter file is a plain safetensors adapter with the tensor names and shapes.
        let adapter = try SafetensorsFile(url: url.appendingPathComponent(CheckpointStore.adapterFileName))
        #expect(try adapter.info("layers.0.q_proj.lora_B.weight").shape == [3, 2])
    }

    @Test func aFullDiskKeepsTheLastGoodCheckpoint() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        var store = CheckpointStore(directory: dir.url, keepLast: 1)
        let good = try store.save(try checkpoint(step: 1))
        let before = try Data(contentsOf: good.appendingPathComponent(CheckpointStore.stateFileName))
        store.simulateDiskFullAfter = 10
        #expect(throws: FileError.self) { try store.save(try checkpoint(step: 2)) }
        // Nothing new appeared, nothing old changed or was pruned.
        #expect(try dir.contents() == ["checkpoint-1"])
        #expect(try store.latest() == good)
        #expect(try Data(contentsOf: good.appendingPathComponent(CheckpointStore.stateFileName)) == before)
        #expect(try store.load(good, as: Settings.self).step == 1)
        store.simulateDiskFullAfter = nil
        #expect(try store.save(try checkpoint(step: 2)).lastPathComponent == "checkpoint-2")
        #expect(try dir.contents() == ["checkpoint-2"])
    }

    @Test func leftoversOfAKilledSaveAreIgnoredThenCleared() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = CheckpointStore(directory: dir.url)
        let good = try store.save(try checkpoint(step: 4))
        // A process killed while writing step 5 leaves a hidden, incomplete folder.
        let partial = dir.appending(".checkpoint-5.tmp-Ab12Cd")
        try FileManager.default.createDirectory(at: partial, withIntermediateDirectories: false)
        try Data([1, 2, 3]).write(to: partial.appendingPathComponent(CheckpointStore.adapterFileName))
        #expect(try store.latest() == good)
        try store.save(try checkpoint(step: 5))
        #expect(try dir.contents() == ["checkpoint-4", "checkpoint-5"])
    }

    @Test func keepsTheNewestAndReplacesTheSameStep() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = CheckpointStore(directory: dir.url, keepLast: 2)
        for step in [2, 10, 7] { try store.save(try checkpoint(step: step)) }
        // Ordered by step, not by name or time: 2 goes.
        #expect(try store.checkpoints().map(\.step) == [7, 10])
        var again = try checkpoint(step: 10)
        again.configuration.rank = 99
        try store.save(again)
        #expect(try store.load(try store.latest()!, as: Settings.self).configuration.rank == 99)
        #expect(try dir.contents() == ["checkpoint-10", "checkpoint-7"])
    }

    @Test func aReplacementInterruptedBetweenRenamesIsRecovered() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = CheckpointStore(directory: dir.url)
        let url = try store.save(try checkpoint(step: 6))
        // As if the process died after moving the old copy aside and before moving the new one in.
        try FileManager.default.moveItem(at: url, to: dir.appending(".checkpoint-6.old-x1y2z3"))
        #expect(try store.latest()?.lastPathComponent == "checkpoint-6")
        #expect(try store.load(url, as: Settings.self).step == 6)
    }

    @Test func damagedCheckpointsAreRefusedByName() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let store = CheckpointStore(directory: dir.url)
        let url = try store.save(try checkpoint(step: 1))
        let state = url.appendingPathComponent(CheckpointStore.stateFileName)
        let original = try Data(contentsOf: state)

        try Data(#"{"format": "something-else", "version": 1}"#.utf8).write(to: state)
        #expect(throws: CheckpointStoreError.unsupportedFormat(state, format: "something-else", version: 1)) {
            try store.load(url, as: Settings.self)
        }
        let newer = String(decoding: original, as: UTF8.self).replacingOccurrences(of: #""version" : 1"#, with: #""version" : 2"#)
        try Data(newer.utf8).write(to: state)
        #expect(throws: CheckpointStoreError.unsupportedFormat(state, format: "qlorakit-training-state", version: 2)) {
            try store.load(url, as: Settings.self)
        }
        let reshaped = String(decoding: original, as: UTF8.self).replacingOccurrences(of: "[\n        3,\n        2\n      ]", with: "[\n        2,\n        3\n      ]")
        #expect(reshaped != String(decoding: original, as: UTF8.self))
        try Data(reshaped.utf8).write(to: state)
        #expect(throws: CheckpointStoreError.self) { try store.load(url, as: Settings.self) }
        try Data(original.dropLast(20)).write(to: state)
        #expect(throws: CheckpointStoreError.self) { try store.load(url, as: Settings.self) }
        try FileManager.default.removeItem(at: state)
        #expect(throws: CheckpointStoreError.missingFile(url, CheckpointStore.stateFileName)) { try store.load(url, as: Settings.self) }
    }
}
