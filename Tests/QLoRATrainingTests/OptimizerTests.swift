// AdamW, gradient clipping and learning-rate schedules against PyTorch and
// transformers (reference.json), and gradient accumulation against one big batch.

import Foundation
import QLoRATraining
import Testing
import _TestSupport

@Suite struct OptimizerTests {
    let reference: TrainingReference

    init() throws { reference = try TrainingReference.load() }

    @Test func adamWMatchesTorchStepByStep() throws {
        let r = reference.adamw
        let groups = [
            AdamW.ParameterGroup(name: "decay", ranges: [0..<r.group_sizes[0]], weightDecay: r.weight_decay[0]),
            AdamW.ParameterGroup(name: "no_decay", ranges: [r.group_sizes[0]..<(r.group_sizes[0] + r.group_sizes[1])],
                                 weightDecay: r.weight_decay[1]),
        ]
        var adam = try AdamW(parameterCount: r.initial.count,
                             hyperparameters: .init(beta1: r.betas[0], beta2: r.betas[1], epsilon: r.eps), groups: groups)
        var parameters = r.initial
        for (step, (gradients, lr)) in zip(r.gradients, r.learning_rates).enumerated() {
            adam.update(parameters: &parameters, gradients: gradients, learningRate: lr)
            let expected = r.parameters_after_step[step]
            for i in parameters.indices {
                #expect(close(parameters[i], expected[i], 2e-6), "step \(step + 1) parameter \(i): \(parameters[i]) vs torch \(expected[i])")
            }
        }
        #expect(adam.step == r.gradients.count)
        for i in parameters.indices {
            #expect(close(adam.firstMoment[i], r.exp_avg[i], 2e-6), "exp_avg[\(i)]")
            #expect(close(adam.secondMoment[i], r.exp_avg_sq[i], 2e-6), "exp_avg_sq[\(i)]")
        }
    }

    @Test func groupsComeFromTheLayout() throws {
        let layout = try ParameterLayout([("a.lora_A", [2, 3]), ("norm.weight", [3]), ("b.lora_B", [3, 2]), ("bias", [1])])
        let groups = AdamW.groups(for: layout, weightDecay: 0.05) { $0.hasSuffix("norm.weight") || $0 == "bias" }
        #expect(groups == [
            AdamW.ParameterGroup(name: "decay", ranges: [0..<6, 9..<15], weightDecay: 0.05),
            AdamW.ParameterGroup(name: "no_decay", ranges: [6..<9, 15..<16], weightDecay: 0),
        ])
        _ = try AdamW(parameterCount: layout.count, groups: groups)
    }

    @Test func badGroupsAreRefused() {
        #expect(throws: AdamWError.uncovered(index: 3)) {
            try AdamW(parameterCount: 4, groups: [.init(name: "g", ranges: [0..<3], weightDecay: 0)])
        }
        #expect(throws: AdamWError.groupsOverlap(index: 2)) {
            try AdamW(parameterCount: 4, groups: [.init(name: "a", ranges: [0..<3], weightDecay: 0), .init(name: "b", ranges: [2..<4], weightDecay: 0)])
        }
        #expect(throws: AdamWError.groupOutOfBounds(group: "a", range: 0..<5, count: 4)) {
            try AdamW(parameterCount: 4, groups: [.init(name: "a", ranges: [0..<5], weightDecay: 0)])
        }
        #expect(throws: AdamWError.invalidSetting("beta2", 1)) {
            try AdamW(parameterCount: 1, hyperparameters: .init(beta2: 1))
        }
    }

    @Test func clippingMatchesTorch() throws {
        for c in reference.clip_grad_norm {
            var first = c.gradients[0], second = c.gradients[1]
            let norm = first.withUnsafeMutableBufferPointer { a in
                second.withUnsafeMutableBufferPointer { b in GradientClipping.clipGlobalNorm([a, b], maxNorm: c.max_norm) }
            }
            #expect(close(norm, c.total_norm, 1e-6))
            for (got, expected) in zip(first + second, c.clipped.joined()) {
                #expect(close(got, expected, 1e-6), "\(got) vs torch \(expected)")
            }
        }
    }

    @Test func nonFiniteNormLeavesGradientsForTheCheck() throws {
        var gradients: [Float] = [1, .nan, 3]
        let norm = GradientClipping.clipGlobalNorm(&gradients, maxNorm: 1)
        #expect(norm.isNaN)
        #expect(gradients[0] == 1 && gradients[2] == 3)
        let layout = try ParameterLayout([("a", [1]), ("b", [2])])
        #expect(throws: NonFiniteError.self) { try NonFiniteCheck.check(gradients: gradients, layout: layout, step: 7) }
        do {
            try NonFiniteCheck.check(gradients: gradients, layout: layout, step: 7)
        } catch let error as NonFiniteError {
            guard case let .gradient(step, tensor, index, _) = error else { Issue.record("wrong case \(error)"); return }
            #expect(step == 7 && tensor == "b" && index == 0)
            #expect(error.localizedDescription.contains("gradient of b"))
        }
        #expect(throws: NonFiniteError.loss(step: 3, value: .infinity)) { try NonFiniteCheck.check(loss: .infinity, step: 3) }
        try NonFiniteCheck.check(loss: 2.5, step: 3)
    }

    @Test func schedulesMatchTransformers() throws {
        let s = reference.schedules
        let cases: [(LearningRateSchedule, [Double])] = [
            (.constant, s.constant),
            (.constantWithWarmup(warmupSteps: s.warmup), s.constant_with_warmup),
            (.linear(warmupSteps: s.warmup, totalSteps: s.total), s.linear),
            (.cosine(warmupSteps: s.warmup, totalSteps: s.total), s.cosine),
            (.linear(warmupSteps: 0, totalSteps: s.total), s.linear_no_warmup),
            (.cosine(warmupSteps: 0, totalSteps: s.total), s.cosine_no_warmup),
        ]
        for (schedule, expected) in cases {
            for (step, value) in expected.enumerated() {
                #expect(abs(schedule.multiplier(step: step) - value) < 1e-12, "\(schedule) step \(step)")
            }
        }
        #expect(try LearningRateSchedule.named("cosine", warmupSteps: 3, totalSteps: 10) == .cosine(warmupSteps: 3, totalSteps: 10))
        #expect(LearningRateSchedule.constant.learningRate(step: 5, peak: 2e-4) == 2e-4)
        #expect(throws: ScheduleError.unknownName("step")) { try LearningRateSchedule.named("step", warmupSteps: 0, totalSteps: 1) }
    }

    @Test func accumulationWeightsEveryTokenLikeOneBatch() throws {
        // Examples with 1 to 6 targets: micro-batches end up with different target counts.
        let examples = (1...6).map { n in
            TrainingExample(inputIDs: (0...n).map { Int32($0 + 20) }, labels: (0...n).map { Int32($0 + 20) })
        }
        var loader = try BatchLoader(examples: examples, batchSize: 2, maxSequenceLength: 8, padTokenID: 0, seed: 1)
        let accumulation = try GradientAccumulation(microBatches: 3)
        let step = accumulation.nextStep(from: &loader)
        #expect(step.batches.count == 3)
        #expect(step.targetCount == 21)
        #expect(loader.cursor.position == 6)
        // A made-up per-token loss; scaled micro-batch sums must equal the mean over all tokens.
        func tokenLoss(_ target: Int32) -> Double { Double(target % 7) + 0.5 }
        let accumulated = step.batches.reduce(0.0) { sum, batch in
            sum + step.lossScale * batch.targets.filter { $0 != TrainingExample.ignoreIndex }.reduce(0) { $0 + tokenLoss($1) }
        }
        let all = step.batches.flatMap(\.targets).filter { $0 != TrainingExample.ignoreIndex }
        #expect(abs(accumulated - all.reduce(0) { $0 + tokenLoss($1) } / Double(all.count)) < 1e-12)
        #expect(throws: BatchLoaderError.invalidSize("gradient accumulation steps", 0)) { try GradientAccumulation(microBatches: 0) }
    }
}
