import ArgumentParser
import XCTest
@testable import Coordinator
@testable import Worker

/// The help a person reads: every subcommand is listed with its abstract, and the examples and
/// defaults that matter are there.
final class HelpTests: XCTestCase {
    func testWorkerHelp() {
        let root = WorkerCommand.helpMessage(columns: 100)
        for s in ["serve (default)", "run", "inspect", "bench"] { XCTAssertTrue(root.contains(s), root) }
        let run = WorkerCommand.helpMessage(for: RunCommand.self, columns: 100)
        for s in ["--task <name-or-path>", "--layer", "--lambda", "--gamma", "--solver", "--json", "Examples:",
                  "worker run --task antonym --layer 4 --seed 0", "(default: 200)"] {
            XCTAssertTrue(run.contains(s), "missing \(s) in:\n\(run)")
        }
        let inspect = WorkerCommand.helpMessage(for: InspectCommand.self, columns: 100)
        XCTAssertTrue(inspect.contains("--prompt") && inspect.contains("--top") && inspect.contains("--json"), inspect)
    }

    func testCoordinatorHelp() {
        let root = CoordinatorCommand.helpMessage(columns: 100)
        for s in ["serve", "submit", "status", "tail", "results", "report", "cancel", "keys", "INTERVENE_COORDINATOR"] {
            XCTAssertTrue(root.contains(s), "missing \(s) in:\n\(root)")
        }
        let serve = CoordinatorCommand.helpMessage(for: CoordinatorCommand.Serve.self, columns: 100)
        for s in ["--curve-secret", "--worker-keys", "--client-keys", "--insecure-no-auth", "--max-grid-jobs",
                  "--max-queued-jobs", "--max-bad-frames"] {
            XCTAssertTrue(serve.contains(s), "missing \(s) in:\n\(serve)")
        }
        let status = CoordinatorCommand.helpMessage(for: CoordinatorCommand.Status.self, columns: 100)
        let worker = WorkerCommand.helpMessage(for: ServeCommand.self, columns: 100)
        for text in [status, worker] {
            XCTAssertTrue(text.contains("--curve-secret") && text.contains("--server-key"), text)
        }
    }

    func testBadWorkerArgumentsAreRefusedClearly() {
        XCTAssertThrowsError(try RunCommand.parse(["--layer", "-1"])) { e in
            XCTAssertTrue(RunCommand.message(for: e).contains("--layer"), RunCommand.message(for: e))
        }
        XCTAssertThrowsError(try RunCommand.parse(["--method", "magic"])) { e in
            XCTAssertTrue(RunCommand.message(for: e).contains("--method"), RunCommand.message(for: e))
        }
        XCTAssertThrowsError(try RunCommand.parse(["--solver", "sgd"])) { e in
            XCTAssertTrue(RunCommand.message(for: e).contains("sgd"), RunCommand.message(for: e))
        }
        XCTAssertThrowsError(try RunCommand.parse(["--set", "lora.targets=q,qkv"])) { e in
            XCTAssertTrue(RunCommand.message(for: e).contains("unknown name \"qkv\""), RunCommand.message(for: e))
        }
        XCTAssertThrowsError(try EvaluateCommand.parse(["--sum", "--delta", "a.safetensors", "--task", "t"])) { e in
            XCTAssertTrue(EvaluateCommand.message(for: e).contains("two or more"), EvaluateCommand.message(for: e))
        }
        XCTAssertThrowsError(try EvaluateCommand.parse(["--sum", "--delta", "a", "--delta", "b"])) { e in
            let m = EvaluateCommand.message(for: e)
            XCTAssertTrue(m.contains("--sum needs --task"), m)
        }
    }
}
