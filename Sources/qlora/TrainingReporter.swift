import Foundation
import QLoRAKit

/// What `train` and `demo` print about a run: the plan before it starts, a
/// progress line while it runs (on a terminal only), each validation loss and
/// checkpoint, and a summary.
final class TrainingReporter {
    /// Everything goes through it, so lines and the progress line never interleave.
    let line = ProgressLine()
    /// Put before every printed line (the demo nests the run under its own headings).
    var indent = ""
    private var firstStep = 0
    private var secondsSoFar = 0.0

    /// The model, data, adapters, steps and memory estimate.
    func describe(_ trainer: Trainer, model loaded: LoadedModel) {
        let c = trainer.configuration, m = loaded.model.configuration
        let base = loaded.format == .packed
            ? "packed checkpoint, \(Self.packedSpec(loaded.model) ?? "packed") base: QLoRA"
            : "Hugging Face folder, fp32 base: LoRA"
        emit("model: \(loaded.url.path) (\(base)); \(m.hiddenLayers) layers, hidden \(m.hiddenSize), vocabulary \(m.vocabularySize)")
        emit("train: \(trainer.data.files.train.path): \(trainer.data.train.statistics)")
        if let valid = trainer.data.valid, let url = trainer.data.files.valid {
            emit("valid: \(url.path): \(valid.statistics)")
        }
        let lora = c.lora
        emit("adapters: LoRA r=\(lora.rank), alpha \(lora.alpha)\(lora.useRSLoRA ? " (rsLoRA)" : ""), dropout \(lora.dropout), "
              + "on \(lora.targetModules.joined(separator: ","))" + (lora.layers.map { " in layers \($0.map(String.init).joined(separator: ","))" } ?? ""))
        let batching = c.batching == .packed ? "packed rows of \(c.maxSequenceLength) tokens" : "padded, at most \(c.maxSequenceLength) tokens"
        emit("steps: \(trainer.totalSteps) of batch \(c.batchSize) × \(c.gradientAccumulation) (\(batching)); "
              + "learning rate \(c.learningRate), \(c.schedule) schedule, \(c.warmupSteps) warm-up steps"
              + (c.gradientCheckpointing ? "; gradient checkpointing" : ""))
        emit("memory estimate: \(trainer.memoryEstimate)")
    }

    /// Runs the trainer, drawing progress and printing evaluations and checkpoints.
    /// `interruptible`: the first Ctrl-C (SIGINT) stops the run after its current
    /// step with a checkpoint that --resume continues from; a second quits at once.
    func run(_ trainer: Trainer, resume: Bool = false, interruptible: Bool = false) throws -> TrainingSummary {
        defer { line.finish() }
        let interruption = interruptible ? TrainingInterruption() : nil
        var source: (any DispatchSourceSignal)?
        if let interruption {
            signal(SIGINT, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
            s.setEventHandler {
                if interruption.isRequested { exit(130) }
                interruption.request()
                FileHandle.standardError.write(Data("\ninterrupted: stopping after this step with a checkpoint (Ctrl-C again quits at once)\n".utf8))
            }
            s.resume()
            source = s
        }
        defer {
            if let source {
                source.cancel()
                signal(SIGINT, SIG_DFL)
            }
        }
        return try trainer.run(resume: resume, interruption: interruption) { event in
            switch event {
            case let .started(first, total):
                firstStep = first
                if first > 0 { emit("resuming after step \(first) of \(total)") }
            case let .loftqInitialized(report):
                emit(String(format: "LoftQ initialization of %d adapters: quantization error %.2f %% → %.2f %% of the weights' norm",
                            report.modules, 100 * report.relativeErrorBefore, 100 * report.relativeErrorAfter))
            case let .stepFinished(report):
                secondsSoFar += report.seconds
                line.show(progress(report))
            case let .evaluated(step, loss):
                emit(step == 0 || step == firstStep && firstStep > 0
                           ? String(format: "validation loss before step %d: %.4f", step + 1, loss)
                           : String(format: "step %d: validation loss %.4f", step, loss))
            case let .checkpointSaved(_, url):
                emit("saved \(url.path)")
            case let .resumedOnOtherThreads(saved, now):
                emit("note: the checkpoint was made on \(saved) thread\(saved == 1 ? "" : "s") and this run has \(now) (--threads \(saved) repeats "
                     + "the uninterrupted run's losses bit for bit; otherwise they differ in the last bits)")
            }
        }
    }

    /// The closing summary.
    func conclude(_ s: TrainingSummary) {
        let range = s.firstStep + 1 <= s.step ? "steps \(s.firstStep + 1)–\(s.step)" : "no steps"
        var text = String(format: "trained %@ of %d in %.1f s (%.0f tokens/s)", range, s.totalSteps, s.trainingSeconds, s.tokensPerSecond)
        if let loss = s.trainLoss { text += String(format: "; last training loss %.4f", loss) }
        emit(text)
        if let before = s.initialValidLoss, let after = s.finalValidLoss {
            emit(String(format: "validation loss: %.4f → %.4f", before, after))
        }
        if let peak = s.peakResidentBytes { emit("peak resident memory: \(Format.bytes(peak))") }
        if let adapter = s.adapterDirectory {
            emit("adapter: \(adapter.appendingPathComponent("adapter_model.safetensors").path) (+ adapter_config.json)")
        }
        emit("metrics: \(s.metrics.path)" + (s.lossChart.map { "; loss curve: \($0.path)" } ?? ""))
        if let checkpoint = s.lastCheckpoint { emit("last checkpoint: \(checkpoint.path)") }
        if s.interrupted { emit("interrupted after step \(s.step): the same command with --resume continues from there") }
    }

    private func emit(_ text: String) { line.print(indent + text) }

    private func progress(_ r: StepReport) -> String {
        let done = r.step - firstStep, left = r.totalSteps - r.step
        let eta = done > 0 ? secondsSoFar / Double(done) * Double(left) : 0
        var text = String(format: "step %d/%d  loss %.4f  lr %.2e  %.0f tok/s  ETA %@", r.step, r.totalSteps, r.result.loss,
                          r.result.learningRate, r.tokensPerSecond, ProgressLine.clock(eta))
        if let rss = r.memory.current { text += "  RSS " + Format.bytes(rss) }
        return text
    }

    /// "nf4/64/dq8" for a model whose projections are packed, nil otherwise.
    static func packedSpec(_ model: LlamaModel) -> String? {
        guard let packed = model.layers.first?.queryProjection.base as? PackedLinear else { return nil }
        return "\(packed.spec)"
    }
}
