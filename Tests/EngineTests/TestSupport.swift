import Engine
import Foundation
import XCTest

enum TestPaths {
    /// Why the int8 tests skip on CPUs without an int8 kernel level.
    static let noInt8 =
        "this CPU has no int8 kernel level (AVX2, AVX-512 VNNI, aarch64 sdot): the int8 products never run here"
    /// The package root (…/main), from this file's location.
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    /// ../shared next to the package (datasets and reference outputs; absent for users).
    static let shared: URL = packageRoot.deletingLastPathComponent().appendingPathComponent("shared")
    static func sharedFile(_ rel: String) throws -> URL {
        let u = shared.appendingPathComponent(rel)
        guard FileManager.default.fileExists(atPath: u.path) else { throw XCTSkip("\(u.path) not present (shared data is only on the developers' machines)") }
        return u
    }
    /// The PyTorch reference's outputs (../shared/reference/parity.json), committed as a fixture so
    /// that parity and the backward are checked on a user's fresh clone too.
    static let parity: URL = packageRoot.appendingPathComponent("Tests/EngineTests/Fixtures/parity.json")
}

/// One model per test process: loading takes a fraction of a second, but there is no reason to
/// do it in every test.
enum SharedModel {
    static let result: Result<LanguageModel, Error> = Result {
        try LanguageModel(ModelRegistry.defaultModel, backend: CPUBackend(threads: 1), threads: 2)
    }
    static func get() throws -> LanguageModel {
        switch result {
        case let .success(m): return m
        case let .failure(e): XCTFail("the default model is needed (run cluster/setup.sh): \(e)"); throw e
        }
    }
}

func loadJSON(_ url: URL) throws -> Any { try JSONSerialization.jsonObject(with: Data(contentsOf: url)) }

/// Central differences of `loss` at the coordinates `picks` of θ (each moved by ±eps(θ_j)) against
/// `grad`: the worst relative error |fd − g| / max(|fd|, |g|, 0.01), and the largest |fd| seen
/// (a check that can fail must see some difference).
func centralDifferences(
    at theta: [Float], grad: [Float], picks: [Int], eps: (Float) -> Float = { _ in 1e-2 },
    loss: ([Float]) -> Float
) -> (worst: Double, largest: Double) {
    var worst: Double = 0, largest: Double = 0
    for j in picks {
        let e = eps(theta[j])
        var up = theta, down = theta
        up[j] += e
        down[j] -= e
        let fd = Double(loss(up) - loss(down)) / Double(2 * e)
        worst = max(worst, abs(fd - Double(grad[j])) / max(abs(fd), abs(Double(grad[j])), 1e-2))
        largest = max(largest, abs(fd))
    }
    return (worst, largest)
}

/// The single-token path must give the logits of a whole forward pass with Δ hooked in, at each
/// of `layers` (a fixed Δ, every prompt's last position).
func assertPathEqualsFullForward(_ lm: LanguageModel, prompts: [[Int]], layers: [Int], tolerance: Float,
                                 file: StaticString = #filePath, line: UInt = #line) {
    let A = lm.config.attnDim, V = lm.config.vocabSize
    let delta = (0..<A).map { Float(($0 % 7) - 3) * 0.1 }
    for layer in layers {
        let fast = InterventionPath(model: lm, layer: layer, prompts: prompts).logits(delta: delta)
        let full = lm.model.forward(tokens: prompts, caches: prompts.map { lm.model.makeCache(capacity: $0.count) },
                                    hooks: DeltaHook(layer: layer, delta: delta))
        var worst: Float = 0
        for i in 0..<(prompts.count * V) { worst = max(worst, abs(fast[i] - full[i])) }
        XCTAssertLessThan(worst, tolerance, "\(lm.config.architecture), layer \(layer)", file: file, line: line)
    }
}
