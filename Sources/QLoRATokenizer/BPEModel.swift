import Foundation

// The BPE model: a word starts as one symbol per Unicode scalar (or its <0xNN> byte tokens,
// or <unk>), then the lowest-ranked adjacent merge is applied repeatedly, lowest position
// first among equal ranks, using a min-heap — O(n log n) per word instead of rescanning the
// word after every merge. Results for short words are cached, since natural text repeats
// the same words constantly.

/// The tokenizer.json "model" of type BPE.
struct BPEModel: Sendable {
    /// Token (UTF-8 bytes, compared exactly) to id.
    let vocab: [[UInt8]: Int32]
    /// Token text by id; nil where the id is unused.
    let tokensByID: [Scalars?]
    /// Ids of the single-scalar tokens, the starting symbols of every word: a table for the
    /// Basic Multilingual Plane (-1 where absent), a dictionary above it.
    private let bmpScalarIDs: [Int32]
    private let astralScalarIDs: [Unicode.Scalar: Int32]
    /// Ids of <0x00>...<0xFF> when byte_fallback is on (-1 where absent); empty when off.
    private let byteFallbackIDs: [Int32]
    /// (left id, right id) packed as left << 32 | right, to (rank, merged id).
    private let merges: [UInt64: Merge]
    let unkID: Int32?
    private let fuseUnk: Bool
    private let ignoreMerges: Bool
    private let cache = WordCache()

    /// Ids index dense tables, so an absurd id in a file must not size them (2^24 is far above
    /// any real vocabulary).
    static let maxID = 1 << 24

    struct Merge: Sendable {
        let rank: Int32
        let newID: Int32
    }

    var vocabularyCount: Int { vocab.count }

    // MARK: - Loading

    init(_ node: JSONNode) throws(TokenizerError) {
        let typeNode = node.optional("type")
        let type = try typeNode?.string() ?? (node.optional("merges") != nil ? "BPE" : "(missing)")
        guard type == "BPE" else { throw node.unsupportedType(type, supported: "BPE") }
        if let dropout = node.optional("dropout"), try dropout.double() != 0 {
            throw node.unsupported("dropout", supported: "dropout null or 0 (dropout makes encoding random)")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] where node.optional(key) != nil {
            throw node.unsupported(key, supported: "BPE without \(key)")
        }

        var vocab: [[UInt8]: Int32] = [:]
        var maxID = -1
        let vocabNode = try node.required("vocab")
        for (token, idNode) in try vocabNode.members() {
            let id = try idNode.int()
            guard id >= 0 && id < Self.maxID else { throw idNode.invalid("id \(id) out of range 0..<\(Self.maxID)") }
            vocab[Array(token.utf8)] = Int32(id)
            maxID = max(maxID, id)
        }
        var tokensByID = [Scalars?](repeating: nil, count: maxID + 1)
        var bmpScalarIDs = [Int32](repeating: -1, count: 0x10000)
        var astralScalarIDs: [Unicode.Scalar: Int32] = [:]
        for (bytes, id) in vocab {
            let scalars = Array(String(decoding: bytes, as: UTF8.self).unicodeScalars)
            if tokensByID[Int(id)] != nil {
                throw vocabNode.invalid("id \(id) is used by more than one token")
            }
            tokensByID[Int(id)] = scalars
            if scalars.count == 1 {
                if scalars[0].value < 0x10000 { bmpScalarIDs[Int(scalars[0].value)] = id } else { astralScalarIDs[scalars[0]] = id }
            }
        }
        self.vocab = vocab
        self.tokensByID = tokensByID
        self.bmpScalarIDs = bmpScalarIDs
        self.astralScalarIDs = astralScalarIDs

        if try node.bool("byte_fallback", default: false) {
            byteFallbackIDs = (0..<256).map { vocab[Array(ByteFallback.tokenName($0).utf8)] ?? -1 }
        } else {
            byteFallbackIDs = []
        }
        fuseUnk = try node.bool("fuse_unk", default: false)
        ignoreMerges = try node.bool("ignore_merges", default: false)
        if let unkNode = node.optional("unk_token") {
            let unk = try unkNode.string()
            guard let id = vocab[Array(unk.utf8)] else { throw unkNode.invalid("unk token \"\(unk)\" is not in model.vocab") }
            unkID = id
        } else {
            unkID = nil
        }
        merges = try Self.parseMerges(try node.required("merges"), vocab: vocab)
    }

    private static func parseMerges(_ node: JSONNode, vocab: [[UInt8]: Int32]) throws(TokenizerError) -> [UInt64: Merge] {
        var merges: [UInt64: Merge] = [:]
        var rank: Int32 = 0
        for entry in try node.array() {
            let left: String
            let right: String
            if case .string(let line) = entry.value {
                // Legacy form "a b"; merges.txt-style "#version" lines are skipped.
                if line.hasPrefix("#version") { continue }
                let parts = line.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw entry.invalid("expected \"left right\" with one space") }
                (left, right) = (String(parts[0]), String(parts[1]))
            } else {
                let pair = try entry.array()
                guard pair.count == 2 else { throw entry.invalid("expected a pair of tokens") }
                (left, right) = (try pair[0].string(), try pair[1].string())
            }
            let leftBytes = Array(left.utf8)
            let rightBytes = Array(right.utf8)
            guard let a = vocab[leftBytes] else { throw entry.invalid("token \"\(left)\" is not in model.vocab") }
            guard let b = vocab[rightBytes] else { throw entry.invalid("token \"\(right)\" is not in model.vocab") }
            guard let merged = vocab[leftBytes + rightBytes] else {
                throw entry.invalid("merged token \"\(left + right)\" is not in model.vocab")
            }
            // A repeated pair keeps its last rank, as the library's map does.
            merges[UInt64(UInt32(a)) << 32 | UInt64(UInt32(b))] = Merge(rank: rank, newID: merged)
            rank += 1
        }
        return merges
    }

    // MARK: - Encoding

    /// Appends the ids of one pre-tokenized word.
    func tokenize(_ word: Scalars, into ids: inout [Int32]) {
        guard !word.isEmpty else { return }
        if ignoreMerges, let id = vocab[Array(String(scalars: word).utf8)] {
            ids.append(id)
            return
        }
        let cacheable = word.count <= WordCache.maxWordLength
        if cacheable, let hit = cache[word] {
            ids.append(contentsOf: hit)
            return
        }
        let result = merge(symbols: initialSymbols(word))
        if cacheable { cache[word] = result }
        ids.append(contentsOf: result)
    }

    /// One symbol per scalar: its token, else its byte-fallback tokens, else <unk> (runs of
    /// unknown scalars fused into one <unk> when fuse_unk is set).
    private func initialSymbols(_ word: Scalars) -> [Int32] {
        var symbols: [Int32] = []
        symbols.reserveCapacity(word.count)
        var pendingUnk = false
        for s in word {
            let known = s.value < 0x10000 ? bmpScalarIDs[Int(s.value)] : astralScalarIDs[s] ?? -1
            if known >= 0, case let id = known {
                if pendingUnk, let unk = unkID { symbols.append(unk) }
                pendingUnk = false
                symbols.append(id)
                continue
            }
            if !byteFallbackIDs.isEmpty {
                var bytes: [Int32] = []
                UTF8.encode(s) { bytes.append(byteFallbackIDs[Int($0)]) }
                if !bytes.contains(-1) {
                    // Like the library, a pending <unk> stays pending across byte tokens.
                    symbols.append(contentsOf: bytes)
                    continue
                }
            }
            guard let unk = unkID else { continue }  // no unk token: the scalar is dropped
            if pendingUnk && !fuseUnk { symbols.append(unk) }
            pendingUnk = true
        }
        if pendingUnk, let unk = unkID { symbols.append(unk) }
        return symbols
    }

    private func merge(symbols start: [Int32]) -> [Int32] {
        let n = start.count
        guard n > 1 else { return start }
        var ids = start
        var prev = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
            for i in 0..<n { buffer[i] = Int32(i - 1) }
            count = n
        }
        var next = [Int32](unsafeUninitializedCapacity: n) { buffer, count in
            for i in 0..<n { buffer[i] = i + 1 < n ? Int32(i + 1) : -1 }
            count = n
        }
        var removed = [Bool](repeating: false, count: n)
        var heap = MergeHeap()
        for i in 0..<(n - 1) {
            if let m = merges[Self.key(ids[i], ids[i + 1])] { heap.push(.init(rank: m.rank, pos: Int32(i), newID: m.newID)) }
        }
        while let top = heap.pop() {
            let pos = Int(top.pos)
            if removed[pos] || next[pos] == -1 { continue }
            let right = Int(next[pos])
            // Skip entries made stale by an earlier merge at this position.
            guard let current = merges[Self.key(ids[pos], ids[right])], current.newID == top.newID else { continue }
            ids[pos] = top.newID
            removed[right] = true
            next[pos] = next[right]
            if next[right] >= 0 { prev[Int(next[right])] = Int32(pos) }
            if prev[pos] >= 0 {
                let p = Int(prev[pos])
                if let m = merges[Self.key(ids[p], ids[pos])] { heap.push(.init(rank: m.rank, pos: Int32(p), newID: m.newID)) }
            }
            if next[pos] >= 0 {
                if let m = merges[Self.key(ids[pos], ids[Int(next[pos])])] { heap.push(.init(rank: m.rank, pos: top.pos, newID: m.newID)) }
            }
        }
        var result: [Int32] = []
        result.reserveCapacity(n)
        for i in 0..<n where !removed[i] { result.append(ids[i]) }
        return result
    }

    @inline(__always)
    private static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(a)) << 32 | UInt64(UInt32(b)) }
}

/// A binary min-heap of candidate merges ordered by (rank, position).
private struct MergeHeap {
    struct Entry {
        let rank: Int32
        let pos: Int32
        let newID: Int32

        @inline(__always)
        func precedes(_ other: Entry) -> Bool { rank != other.rank ? rank < other.rank : pos < other.pos }
    }

    private var entries: [Entry] = []

    mutating func push(_ entry: Entry) {
        entries.append(entry)
        var child = entries.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].precedes(entries[parent]) else { break }
            entries.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Entry? {
        guard let last = entries.popLast() else { return nil }
        guard !entries.isEmpty else { return last }
        let top = entries[0]
        entries[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < entries.count else { break }
            var best = left
            if left + 1 < entries.count && entries[left + 1].precedes(entries[left]) { best = left + 1 }
            guard entries[best].precedes(entries[parent]) else { break }
            entries.swapAt(best, parent)
            parent = best
        }
        return top
    }
}

/// Merge results of recently seen words, shared by all copies of a tokenizer and safe to use
/// from several threads. It stops growing when full, like the library's cache.
final class WordCache: @unchecked Sendable {
    static let maxWordLength = 64
    private static let capacity = 65_536
    private let lock = NSLock()
    private var words: [Scalars: [Int32]] = [:]

    subscript(word: Scalars) -> [Int32]? {
        get { lock.withLock { words[word] } }
        set {
            lock.withLock {
                if words.count < Self.capacity { words[word] = newValue }
            }
        }
    }
}
