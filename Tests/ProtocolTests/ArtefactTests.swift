import Foundation
import JobCore
import XCTest

/// One metadata schema for every Δ artefact (JobCore/Artefact.swift).
final class ArtefactTests: XCTestCase {
    static let md = DeltaMetadata(
        model: "smollm2-135m-instruct", modelSHA256: String(repeating: "ab", count: 32), task: "antonym",
        method: "intervention", layer: 4, heads: 2, headDim: 3, seed: 7, lambda: 0.01, gamma: 0.02,
        steps: 200, lr: 0.1, solver: "adam-avg", precision: "int8", trainSize: 10, finalLoss: 0.85707814,
        extra: ["prompt_format": "Q: {input}\nA:", "exact_match": "0.3"])

    func testRoundTripThroughSafetensors() throws {
        let a = DeltaArtefact(delta: [1, -2, 0, 0, 0.5, 3], metadata: Self.md)
        let b = try DeltaArtefact(data: a.data)
        XCTAssertEqual(b, a)
        XCTAssertEqual(b.metadata.schema, DeltaMetadata.currentSchema)
        XCTAssertEqual(b.metadata.positions, "last")
        // the header holds the flat string map other tools read
        let (_, raw) = try Safetensors.read(a.data)
        XCTAssertEqual(raw["layer"], "4")
        XCTAssertEqual(raw["model_sha256"], Self.md.modelSHA256)
        XCTAssertEqual(raw["exact_match"], "0.3")
        XCTAssertEqual(raw["schema"], "1")
    }

    /// Artefacts written before the schema had a version (intervention and opinion jobs) still read.
    func testSchemaZeroArtefactsStillRead() throws {
        let intervention: [String: String] = [
            "model": "m", "model_sha256": "00", "task": "antonym", "layer": "4", "seed": "0", "lambda": "0.01",
            "gamma": "0.01",
            "steps": "200", "lr": "0.1", "solver": "adam-avg", "precision": "int8", "final_loss": "0.7", "heads": "9",
            "head_dim": "64", "train_size": "10", "prompt_format": "Q: {input}\nA:", "target_format": " {output}",
            "exact_match": "0.3",
        ]
        let a = try DeltaMetadata(intervention)
        XCTAssertEqual(a.schema, 0)
        XCTAssertEqual(a.method, "intervention")
        XCTAssertEqual(a.positions, "last")
        XCTAssertEqual(a.heads * a.headDim, 576)
        XCTAssertEqual(a.extra["target_format"], " {output}")
        var opinion = intervention
        opinion["lr"] = nil
        opinion["train_size"] = nil
        opinion["task"] = "opinion:Northeast"
        opinion["data"] = "x.json"
        let o = try DeltaMetadata(opinion)
        XCTAssertEqual(o.lr, 0)
        XCTAssertEqual(o.trainSize, 0)
        XCTAssertEqual(o.extra["data"], "x.json")
    }

    func testBadMetadataNamesTheKey() {
        var d = Self.md.dictionary
        d["layer"] = "four"
        XCTAssertThrowsError(try DeltaMetadata(d)) {
            XCTAssertEqual("\($0)", #"Δ metadata "layer": not an integer: four"#)
        }
        d = Self.md.dictionary
        d["heads"] = nil
        XCTAssertThrowsError(try DeltaMetadata(d)) { XCTAssertEqual("\($0)", #"Δ metadata "heads": missing"#) }
        d = Self.md.dictionary
        d["schema"] = "9"
        XCTAssertThrowsError(try DeltaMetadata(d)) {
            XCTAssertTrue("\($0)".contains("newer than this build reads"), "\($0)")
        }
        let wrongShape = Safetensors.write(tensors: [("delta", [5], [0, 0, 0, 0, 0])], metadata: Self.md.dictionary)
        XCTAssertThrowsError(try DeltaArtefact(data: wrongShape)) {
            XCTAssertTrue("\($0)".contains("2 heads × 3"), "\($0)")
        }
    }
}
