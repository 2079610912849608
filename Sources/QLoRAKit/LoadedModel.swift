import Foundation

/// A model opened by path, whichever form it is in: a Hugging Face folder
/// (config.json, safetensors, tokenizer files; loaded in fp32) or a packed
/// checkpoint file (its linears computed from the mapped blocks, its
/// tokenizer from the files it embeds). The one entry point of the CLI's
/// generate and eval commands.
public struct LoadedModel {
    public enum Format: String, Sendable {
        case huggingFace = "Hugging Face folder"
        case packed = "packed checkpoint"
    }

    public let url: URL
    public let format: Format
    public let model: LlamaModel
    /// The opened file of a packed model (nil for a folder).
    public let checkpoint: PackedCheckpoint?

    /// Opens `url`: a folder as a Hugging Face checkpoint, a file as a packed checkpoint.
    /// - Throws: `CheckpointError`, `PackedCheckpointError`, `FileError` and the
    ///   model's loading errors, each naming the file.
    public init(contentsOf url: URL, pool: ComputePool = .shared) throws {
        self.url = url
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
            throw LoadedModelError.notFound(url)
        }
        if isDirectory.boolValue {
            format = .huggingFace
            checkpoint = nil
            model = try LlamaModel(directory: url)
        } else {
            let packed = try PackedCheckpoint(url: url)
            format = .packed
            checkpoint = packed
            model = try LlamaModel(packed: packed, pool: pool)
        }
    }

    /// The tokenizer: the folder's tokenizer files, or those the packed file embeds.
    /// - Throws: `TokenizerError` naming the file when there is none or it is not supported.
    public func tokenizer() throws -> Tokenizer {
        guard let checkpoint else { return try Tokenizer(directory: url) }
        var files: [String: Data] = [:]
        for file in checkpoint.files where HFCheckpoint.tokenizerFileNames.contains(file.name) {
            files[file.name] = try checkpoint.embeddedFile(file.name)
        }
        return try Tokenizer(files: files, source: url)
    }

    /// The chat template the folder or the packed file's embedded files carry, if any.
    /// - Throws: `ChatTemplateError` naming the file when one is there but unusable.
    public func chatTemplate() throws -> ChatTemplate? {
        guard let checkpoint else { return try ChatTemplate.fromModel(directory: url) }
        var files: [String: Data] = [:]
        for file in checkpoint.files where ChatTemplate.modelFileNames.contains(file.name) {
            files[file.name] = try checkpoint.embeddedFile(file.name)
        }
        return try ChatTemplate.fromModel(files: files, source: url)
    }

    /// `body`'s result given the template for chat data: `chosen`, else the model's own
    /// (`ChatTemplate.resolving`).
    public func withChatTemplate<T>(_ chosen: ChatTemplate? = nil, _ body: (ChatTemplate?) throws -> T) throws -> T {
        try ChatTemplate.resolving(chosen, own: chatTemplate, body)
    }

    /// Bytes of the model's weights on disk: the packed file, or the folder's safetensors files.
    public var weightFileBytes: Int {
        if let checkpoint { return checkpoint.file.size }
        let files = (try? FileManager.default.contentsOfDirectory(at: url, includingPropertiesForKeys: [.fileSizeKey])) ?? []
        return files.filter { $0.pathExtension == "safetensors" }
            .reduce(0) { $0 + ((try? $1.resourceValues(forKeys: [.fileSizeKey]).fileSize) ?? 0) }
    }
}

public enum LoadedModelError: Error, LocalizedError, Equatable {
    case notFound(URL)

    public var errorDescription: String? {
        switch self {
        case let .notFound(url):
            "\(url.path): no such file or folder (expected a Hugging Face model folder or a packed checkpoint)"
        }
    }
}
