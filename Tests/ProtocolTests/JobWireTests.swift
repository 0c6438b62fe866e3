import Foundation
import JobCore
import Protocol
import XCTest

/// The one JobSpec ↔ JobParams mapping (Protocol/JobWire.swift), which the worker and the
/// coordinator share.
final class JobWireTests: XCTestCase {
    /// Every field set to a value that differs from the default.
    static let everyField: JobSpec = {
        var s = JobSpec(
            model: "m.gguf", task: "antonym", method: .fewShot, layer: 7, lambda: 0.5, gamma: 0.25,
            seed: 3, trainSize: 11, testSize: 22, steps: 33, lr: 0.125, maxNewTokens: 5, shots: 6,
            solver: .fista, precision: .fp32, promptTemplate: "In: {input}",
            targetTemplate: " Out: {output}")
        try! s.set(.deltaScale, 2.5)
        s.inputs = ["0123456789abcdef", "fedcba9876543210"]
        return s
    }()

    func testEveryFieldSurvivesTheBytes() throws {
        // The fixture must really set every field: a field added to JobSpec and left at its
        // default here would make this test blind to it, so that is a failure too.
        let defaults = Mirror(reflecting: JobSpec(task: ""))
        for (child, base) in zip(Mirror(reflecting: Self.everyField).children, defaults.children) {
            XCTAssertNotEqual(
                "\(child.value)", "\(base.value)", "set \(child.label ?? "?") to a non-default value in this test")
        }
        XCTAssertEqual(
            Mirror(reflecting: Self.everyField).children.count, 19,
            "a new JobSpec field: extend this test and the mapping")
        let bytes = try JobParams(Self.everyField).serializedData()
        XCTAssertEqual(try JobSpec(wire: try JobParams(serializedBytes: bytes)), Self.everyField)
        // empty solver and precision mean "not named"
        var plain = Self.everyField
        plain.solver = nil
        plain.precision = nil
        XCTAssertEqual(try JobSpec(wire: JobParams(plain)), plain)
    }

    func testUnknownNamesAreDeterministicErrorsNamingTheField() {
        func message(_ edit: (inout JobParams) -> Void) -> String {
            var p = JobParams(Self.everyField)
            edit(&p)
            do {
                _ = try JobSpec(wire: p)
                return "no error"
            } catch let e as JobSpecError {
                XCTAssertTrue(e.isDeterministic)
                return e.description
            } catch { return "\(error)" }
        }
        XCTAssertEqual(
            message { $0.method = "magic" },
            #"method: expected one of "intervention", "zero-shot", "few-shot", "lora", "ia3", "soft-prompt", "function-vector", "icv", "add", "fv-heads", "synthetic", "synthetic-fail", "synthetic-crash", got "magic""#
        )
        XCTAssertEqual(
            message { $0.solver = "sgd" },
            #"solver: expected one of "adam-avg", "adam", "adam-uniform", "adam-subgradient", "fista", got "sgd""#)
        XCTAssertEqual(message { $0.precision = "fp16" }, #"precision: expected one of "fp32", "int8", got "fp16""#)
        XCTAssertEqual(
            message { $0.tunables["eval.temperature"] = 1 },
            "eval.temperature: unknown parameter; known: " + Tunable.all.map(\.key).joined(separator: ", "))
        XCTAssertEqual(
            message { $0.tunables["eval.delta_scale"] = -1 }, "eval.delta_scale: expected a number in 0…1000, got -1")
    }

    /// Stored job rows and job ids use the Codable form; an unknown name there is an error too.
    func testCodableFormRoundTripsAndRejectsUnknownNames() throws {
        let data = try JSONEncoder().encode(Self.everyField)
        XCTAssertEqual(try JSONDecoder().decode(JobSpec.self, from: data), Self.everyField)
        let bad = String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\"fista\"", with: "\"sgd\"")
        XCTAssertThrowsError(try JSONDecoder().decode(JobSpec.self, from: Data(bad.utf8)))
    }
}
