// Tests/Fixtures/training/reference.json, written by make_reference.py beside it
// (torch.optim.AdamW, clip_grad_norm_, transformers' schedules and chat templates,
// and an independent xoshiro256**), and a small tokenizer for the data tests.

import Foundation
import QLoRATraining
import _TestSupport

struct TrainingReference: Decodable {
    struct AdamWCase: Decodable {
        var betas: [Double]
        var eps: Double
        var weight_decay: [Double]
        var group_sizes: [Int]
        var initial: [Float]
        var gradients: [[Float]]
        var learning_rates: [Double]
        var parameters_after_step: [[Float]]
        var exp_avg: [Float]
        var exp_avg_sq: [Float]
    }

    struct ClipCase: Decodable {
        var gradients: [[Float]]
        var max_norm: Float
        var total_norm: Float
        var clipped: [[Float]]
    }

    struct Schedules: Decodable {
        var warmup: Int
        var total: Int
        var constant, constant_with_warmup, linear, cosine, linear_no_warmup, cosine_no_warmup: [Double]
    }

    struct Chat: Decodable {
        struct Template: Decodable {
            var name: String
            var template: String
            var rendered: [String]
            /// Each conversation less its last message, with add_generation_prompt=True.
            var prompted: [String]
        }

        var bos_token: String
        var eos_token: String
        var conversations: [[ChatMessage]]
        var templates: [Template]
    }

    struct XoshiroCase: Decodable {
        var seed: UInt64?
        var stream: UInt64?
        var initial_state_hex: [String]
        var outputs_hex: [String]
    }

    var adamw: AdamWCase
    var clip_grad_norm: [ClipCase]
    var schedules: Schedules
    var chat_templates: Chat
    var xoshiro: [XoshiroCase]

    static func load() throws -> TrainingReference {
        try JSONDecoder().decode(Self.self, from: Data(contentsOf: Fixtures.url("training/reference.json")))
    }
}

/// A character-level tokenizer with the two habits that make piecewise tokenization
/// wrong: it merges "ab" into one token (BPE across a seam), and with special tokens it
/// puts BOS first. Ids: BOS 1, EOS 2, "ab" 3, any other character its code point + 10.
struct ToyTokenizer: TrainingTokenizer {
    var bosTokenID: Int? = 1
    var eosTokenIDs: [Int] = [2]

    func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var ids = addSpecialTokens ? [1] : []
        let scalars = Array(text.unicodeScalars)
        var i = 0
        while i < scalars.count {
            if scalars[i] == "a", i + 1 < scalars.count, scalars[i + 1] == "b" {
                ids.append(3)
                i += 2
            } else {
                ids.append(Int(scalars[i].value) + 10)
                i += 1
            }
        }
        return ids
    }

    /// Ids of `text` without special tokens, for building expectations.
    func ids(_ text: String) -> [Int32] { encode(text, addSpecialTokens: false).map(Int32.init) }
}

/// |a − b| ≤ tolerance · max(1, |b|).
func close(_ a: Float, _ b: Float, _ tolerance: Float) -> Bool { abs(a - b) <= tolerance * max(1, abs(b)) }
