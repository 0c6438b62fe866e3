import Foundation
import JobCore

/// Learned Δs in the forms llama.cpp runs. llama.cpp has no o_proj-input site and no last-token
/// policy, so each form changes what Δ does; `Steering.asControlVector` and `positions: .all`
/// let this engine measure what each loses (`worker evaluate`).
///
/// - control vector: a GGUF of `direction.ℓ` = W_O·Δ (1-based in llama.cpp's count of layer
///   outputs, i.e. added to the residual stream leaving block ℓ, at every position); load with
///   `llama-cli --control-vector FILE`.
/// - o_proj bias: a copy of the model GGUF with `blk.ℓ.attn_output.bias` = W_O·Δ: the exact site,
///   at every position (W_O·(h + Δ) = W_O·h + W_O·Δ), i.e. `positions: .all`.
public enum DeltaExport {
    public struct ExportError: Error, CustomStringConvertible {
        public var description: String
    }

    /// W_O·Δ: layer ℓ's o_proj applied to Δ ([D], from the fp32 weights).
    public static func outputProjection(_ lm: LanguageModel, layer: Int, _ delta: [Float]) -> [Float] {
        let w = lm.model.blocks[layer].wo
        precondition(w.cols == delta.count)
        return (0..<w.rows).map { i in
            var s: Float = 0
            for j in 0..<w.cols { s += w.data[i * w.cols + j] * delta[j] }
            return s
        }
    }

    /// Both llama.cpp forms put W_O·Δ where the residual stream takes o_proj's output as it is; a
    /// family that normalises that output first (Gemma 3's post-attention RMSNorm) has no such
    /// site, so its Δs are refused rather than exported wrong.
    static func checkExportable(_ lm: LanguageModel, format: String) throws {
        guard !lm.config.postNorms else {
            throw ExportError(
                description: "\(lm.config.architecture) normalises o_proj's output before the residual add, so W_O·Δ "
                    + "as a \(format) would not act as Δ does; use the Δ with `worker generate` or the PyTorch hook "
                    + "(clients/python/intervene_delta.py), which apply it at its own site")
        }
    }

    /// The control-vector GGUF for `steering`'s head-output Δs (summed per layer, scaled).
    public static func controlVector(_ steering: Steering, model lm: LanguageModel) throws -> Data {
        guard !steering.byLayer.isEmpty else { throw ExportError(description: "no Δ to export") }
        try checkExportable(lm, format: "control vector")
        if steering.byLayer[0] != nil {
            throw ExportError(
                description: "a Δ at layer 0 has no control-vector form: llama.cpp numbers control vectors from 1 "
                    + "(direction.ℓ acts on the output of block ℓ, and direction.0 is refused); use --format bias")
        }
        var g = GGUFWriter()
        g.add("general.architecture", .string("controlvector"))
        g.add("controlvector.model_hint", .string(lm.config.architecture))
        g.add("controlvector.layer_count", .int32(Int32(steering.byLayer.count)))
        for l in steering.byLayer.keys.sorted() {
            g.addTensor("direction.\(l)", values: outputProjection(lm, layer: l, steering.byLayer[l]!))
        }
        return g.data()
    }

    /// A copy of the model file at `lm.path` with `blk.ℓ.attn_output.bias` = W_O·Δ for each layer.
    public static func modelWithBias(_ steering: Steering, model lm: LanguageModel) throws -> GGUFWriter {
        guard !steering.byLayer.isEmpty else { throw ExportError(description: "no Δ to export") }
        try checkExportable(lm, format: "o_proj bias")
        let f = try GGUFFile(path: lm.path)
        var g = GGUFWriter()
        g.alignment = f.alignment
        for k in f.metadataKeys { g.add(k, f.metadata[k]!) }
        for name in f.tensorOrder {
            if name.hasSuffix(".attn_output.bias"), let l = Int(name.split(separator: ".")[1]),
                steering.byLayer[l] != nil
            {
                throw ExportError(
                    description: "the model already has \(name); adding Δ to an existing bias is not supported")
            }
            let t = f.tensors[name]!
            let raw = f.rawBytes(t)
            g.addTensor(name, dims: t.dims, type: t.type, bytes: Data(raw))
        }
        for l in steering.byLayer.keys.sorted() {
            g.addTensor("blk.\(l).attn_output.bias", values: outputProjection(lm, layer: l, steering.byLayer[l]!))
        }
        return g
    }
}
