import Foundation
import QLoRATokenizer
import Testing

/// Every case make_reference.py recorded from the `tokenizers` library: encode with and without
/// special tokens, token strings, both decodes, decodes of random id sequences, and
/// DecodeStream steps, for six tokenizers covering both BPE families.
@Suite struct LibraryReferenceTests {
    @Test(arguments: ReferenceTokenizers.names)
    func encodeAndDecodeMatchLibrary(name: String) throws {
        let reference = try #require(try LibraryReference.load().tokenizers[name])
        let tokenizer = try ReferenceTokenizers.load(name)
        #expect(tokenizer.vocabularySize == reference.vocabSize)
        for c in reference.cases { expectCase(c, tokenizer, name) }
    }

    /// Random ids: invalid UTF-8 from byte tokens, special tokens anywhere, unknown ids.
    @Test(arguments: ReferenceTokenizers.names)
    func decodeRandomIDsLikeLibrary(name: String) throws {
        let reference = try #require(try LibraryReference.load().tokenizers[name])
        let tokenizer = try ReferenceTokenizers.load(name)
        for c in reference.decodeCases {
            expectDecodes(c.ids, skip: c.skip, keep: c.keep, tokenizer, name)
        }
    }

    @Test(arguments: ReferenceTokenizers.names)
    func streamingMatchesDecodeStream(name: String) throws {
        let reference = try #require(try LibraryReference.load().tokenizers[name])
        let tokenizer = try ReferenceTokenizers.load(name)
        for c in reference.streamCases {
            var stream = StreamingDecoder(tokenizer: tokenizer, skipSpecialTokens: c.skipSpecial)
            var steps: [StreamStep] = []
            var emitted = ""
            for id in c.ids {
                do {
                    let text = try stream.append(id)
                    steps.append(text.map(StreamStep.text) ?? .pending)
                    emitted += text ?? ""
                } catch {
                    steps.append(.error)
                    break
                }
            }
            #expect(steps.count == c.steps.count && zip(steps, c.steps).allSatisfy { step, expected in
                switch (step, expected) {
                case let (.text(a), .text(b)): return sameScalars(a, b)
                default: return step == expected
                }
            }, "\(name): \(c.ids) -> \(steps), expected \(c.steps)")
            // For valid UTF-8 the chunks plus the held-back rest are exactly the full decode.
            // (Invalid byte runs cut by the window decode differently, in the library too.)
            let full = tokenizer.decode(c.ids, skipSpecialTokens: c.skipSpecial)
            if !full.unicodeScalars.contains("\u{FFFD}") {
                #expect(sameScalars(emitted + stream.finish(), full), "\(name): \(c.ids)")
            }
        }
    }

    /// A stream that continues a prompt: the prompt's text followed by the chunks is the
    /// decode of prompt and continuation together, at every cut of each streamed case.
    @Test(arguments: ReferenceTokenizers.names)
    func streamingContinuesAPrompt(name: String) throws {
        let reference = try #require(try LibraryReference.load().tokenizers[name])
        let tokenizer = try ReferenceTokenizers.load(name)
        var cuts = 0
        for c in reference.streamCases {
            let full = tokenizer.decode(c.ids, skipSpecialTokens: c.skipSpecial)
            guard !full.unicodeScalars.contains("\u{FFFD}") else { continue }
            for cut in 1..<max(c.ids.count, 1) {
                let prompt = Array(c.ids[..<cut])
                let shown = tokenizer.decode(prompt, skipSpecialTokens: c.skipSpecial)
                // A cut inside a character: no text of whole characters to continue.
                guard !shown.unicodeScalars.contains("\u{FFFD}") else { continue }
                var stream = StreamingDecoder(tokenizer: tokenizer, skipSpecialTokens: c.skipSpecial, prompt: prompt)
                var streamed = ""
                for id in c.ids[cut...] { streamed += try stream.append(id) ?? "" }
                streamed += stream.finish()
                #expect(sameScalars(shown + streamed, full), "\(name): \(prompt) | \(Array(c.ids[cut...]))")
                cuts += 1
            }
        }
        #expect(cuts > 0)
    }
}
