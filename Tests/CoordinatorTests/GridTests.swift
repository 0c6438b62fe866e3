import Engine
import XCTest
@testable import Coordinator
import Protocol

final class GridTests: XCTestCase {
    func errors(_ json: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try Grid.parse(json)
            XCTFail("expected errors", file: file, line: line)
            return []
        } catch let e as GridErrors {
            return e.errors.map(\.description)
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
            return []
        }
    }

    // MARK: validation

    func testBadLayerItemNamesItsIndex() {
        let e = errors(#"{"experiment": "x", "tasks": ["antonym"], "layers": [3, 5, "x"]}"#)
        XCTAssertEqual(e, [#"layers[2]: expected a non-negative integer, got "x""#])
    }

    func testAllErrorsAreReportedAtOnce() {
        let e = errors("""
        {"experiment": "bad name!", "tasks": [], "methods": ["intervention", "fv2"],
         "layers": [-1, 2.5], "lambda": "0.1", "seeds": [0, 0], "train_size": 0,
         "solver": {"steps": -3, "lr": 0, "momentum": 0.9}, "eval": 4, "device": "tpu", "laers": [1]}
        """)
        let expected = [
            #"laers: unknown key (did you mean "layers"?); expected one of experiment, model, tasks, methods, layers, lambda, gamma, seeds, train_size, test_size, shots, solver, eval, prompt, device, components, lora, ia3, soft_prompt, fv, icv"#,
            #"experiment: expected a name of letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit), got "bad name!""#,
            "tasks: expected a non-empty list, got an empty list",
            #"methods[1]: expected one of "intervention", "zero-shot", "few-shot", "lora", "ia3", "soft-prompt", "function-vector", "icv", "add", "fv-heads", "synthetic", "synthetic-fail", "synthetic-crash", got "fv2""#,
            "layers[0]: expected a non-negative integer, got -1",
            "layers[1]: expected a non-negative integer, got 2.5",
            #"lambda: expected a non-negative number, got "0.1""#,
            "seeds[1]: duplicate of seeds[0] (0)",
            "train_size: expected a positive integer, got 0",
            "solver.momentum: unknown key; expected one of steps, lr, method, precision, tolerance",
            "solver.steps: expected a non-negative integer, got -3",
            "solver.lr: expected a positive number, got 0",
            #"eval: expected an object like {"max_new_tokens": 4}, got 4"#,
            #"device: expected "cpu", "gpu" or "any", got "tpu""#,
        ]
        XCTAssertEqual(e, expected)
    }

    func testSolverMethodIsValidatedAndCarried() throws {
        let e = errors(#"{"experiment": "x", "tasks": ["antonym"], "solver": {"method": "sgd"}}"#)
        XCTAssertEqual(e.count, 1)
        XCTAssertTrue(e[0].hasPrefix("solver.method: expected one of \"adam-avg\", \"adam\""), e[0])
        XCTAssertTrue(e[0].hasSuffix("got \"sgd\""), e[0])
        let g = try Grid.parse(#"{"experiment": "x", "tasks": ["antonym"], "methods": ["intervention", "zero-shot"], "solver": {"method": "fista"}}"#)
        let jobs = g.expand()
        XCTAssertEqual(jobs.first { $0.spec.method == .intervention }?.spec.solver, .fista)
        XCTAssertEqual(jobs.first { $0.spec.method == .zeroShot }?.spec.solver, nil, "zero-shot has no solver axis")
        let other = try Grid.parse(#"{"experiment": "x", "tasks": ["antonym"], "solver": {"method": "adam"}}"#).expand()
        XCTAssertNotEqual(jobs.first { $0.spec.method == .intervention }?.id, other[0].id, "the solver is part of a job's identity")
    }

    func testPrecisionIsValidatedCarriedAndPartOfTheID() throws {
        let e = errors(#"{"experiment": "x", "tasks": ["antonym"], "solver": {"precision": "fp16"}}"#)
        XCTAssertEqual(e, [#"solver.precision: expected one of "fp32", "int8", got "fp16""#])
        let g = try Grid.parse(#"{"experiment": "x", "tasks": ["antonym"], "methods": ["intervention", "zero-shot"], "solver": {"precision": "fp32"}}"#)
        let jobs = g.expand()
        let iv = try XCTUnwrap(jobs.first { $0.spec.method == .intervention })
        XCTAssertEqual(iv.spec.precision, .fp32)
        XCTAssertEqual(jobs.first { $0.spec.method == .zeroShot }?.spec.precision, nil, "zero-shot has no solver axis")
        // no precision named: the default, by name, so the id says what ran
        let plain = try Grid.parse(#"{"experiment": "x", "tasks": ["antonym"], "methods": ["intervention", "zero-shot"]}"#).expand()
        let pv = try XCTUnwrap(plain.first { $0.spec.method == .intervention })
        XCTAssertEqual(pv.spec.precision, Precision.solverDefault)
        XCTAssertNotEqual(pv.id, iv.id, "the precision is part of a job's identity")
        let named = try Grid.parse(#"{"experiment": "x", "tasks": ["antonym"], "solver": {"precision": "int8"}}"#).expand()
        XCTAssertEqual(named[0].id, pv.id, "naming the default is the same job")
        // baselines keep the ids they had before precision existed: no key in their canonical form
        let zs = try XCTUnwrap(plain.first { $0.spec.method == .zeroShot })
        XCTAssertFalse(zs.spec.canonicalJSON.contains("precision"), zs.spec.canonicalJSON)
        XCTAssertTrue(pv.spec.canonicalJSON.contains(#""precision":"int8""#), pv.spec.canonicalJSON)
        // and a stored spec without the key decodes to nil
        let old = try JSONDecoder().decode(JobSpec.self, from: Data(zs.spec.canonicalJSON.utf8))
        XCTAssertEqual(old, zs.spec)
    }

    /// A tunable (here eval.delta_scale) is a grid key of its section, checked against its range,
    /// part of the id only when it differs from its default and only for methods with its axis.
    func testTunablesAreValidatedCarriedAndPartOfTheIDOnlyWhenSet() throws {
        let base = #"{"experiment": "x", "tasks": ["antonym"], "methods": ["intervention", "zero-shot"]"#
        let plain = try Grid.parse(base + "}").expand()
        let atDefault = try Grid.parse(base + #", "eval": {"delta_scale": 1}}"#).expand()
        let scaled = try Grid.parse(base + #", "eval": {"delta_scale": 2.5, "max_new_tokens": 3}}"#).expand()
        XCTAssertEqual(atDefault.map(\.id), plain.map(\.id), "the default value is the same job")
        let iv = try XCTUnwrap(scaled.first { $0.spec.method == .intervention })
        XCTAssertEqual(iv.spec[.deltaScale], 2.5)
        XCTAssertTrue(iv.spec.canonicalJSON.contains(#""tunables":{"eval.delta_scale":2.5}"#), iv.spec.canonicalJSON)
        XCTAssertNotEqual(iv.id, plain.first { $0.spec.method == .intervention }!.id)
        let zs = try XCTUnwrap(scaled.first { $0.spec.method == .zeroShot })
        XCTAssertTrue(zs.spec.tunables.isEmpty, "zero-shot learns no Δ: the scale is not part of it")
        XCTAssertEqual(try JSONDecoder().decode(JobSpec.self, from: Data(iv.spec.canonicalJSON.utf8)), iv.spec)
        XCTAssertEqual(errors(base + #", "eval": {"delta_scale": -1}}"#),
                       ["eval.delta_scale: expected a number in 0…1000, got -1"])
        XCTAssertEqual(errors(base + #", "eval": {"delta_scale": "2"}}"#),
                       [#"eval.delta_scale: expected a number, got "2""#])
        XCTAssertEqual(errors(base + #", "eval": {"delta_scal": 2}}"#),
                       [#"eval.delta_scal: unknown key (did you mean "delta_scale"?); "#
                            + "expected one of max_new_tokens, delta_scale, int8"])
    }

    /// A method's own section ("lora") holds its tunables: carried to that method's jobs only.
    func testMethodSectionsCarryTheirTunables() throws {
        let grid = #"{"experiment": "x", "tasks": ["antonym"], "methods": ["lora", "intervention"], "#
            + #""lora": {"rank": 8, "lr": 0.0005}}"#
        let jobs = try Grid.parse(grid).expand()
        let lora = try XCTUnwrap(jobs.first { $0.spec.method == .lora })
        XCTAssertEqual(lora.spec[.loraRank], 8)
        XCTAssertEqual(lora.spec[.loraLR], 0.0005)
        XCTAssertEqual(lora.spec[.loraAlpha], 8, "unset: the default")
        let iv = try XCTUnwrap(jobs.first { $0.spec.method == .intervention })
        XCTAssertTrue(iv.spec.tunables.isEmpty, "LoRA's parameters are not the intervention's")
        XCTAssertEqual(errors(#"{"experiment": "x", "tasks": ["a"], "lora": {"rank": 0.5}}"#),
                       ["lora.rank: expected an integer in 1…256, got 0.5"])
        XCTAssertEqual(errors(#"{"experiment": "x", "tasks": ["a"], "lora": 4}"#),
                       [#"lora: expected an object like {"rank": 4.0}, got 4"#])
    }

    /// A set-valued tunable (LoRA's targets) takes a list of names; its default set is absent
    /// from the id; one method's settings never reach another method's jobs (their own axes).
    func testSetValuedTunablesAndEachMethodsOwnParameters() throws {
        let base = #"{"experiment": "x", "tasks": ["antonym"], "methods": ["lora", "ia3", "function-vector", "icv"]"#
        let plain = try Grid.parse(base + "}").expand()
        let same = try Grid.parse(base + #", "lora": {"targets": ["o", "k", "q", "v"]}}"#).expand()
        XCTAssertEqual(same.map(\.id), plain.map(\.id), "the default set, in any order, is the same job")
        let jobs = try Grid.parse(
            base + #", "lora": {"targets": ["q", "down"], "rank": 8}, "fv": {"heads": 20}, "icv": {"alpha": 0.5}}"#
        ).expand()
        func job(_ m: JobMethod) throws -> JobSpec { try XCTUnwrap(jobs.first { $0.spec.method == m }).spec }
        XCTAssertEqual(Tunable.loraTargets.names(of: try job(.lora)[.loraTargets]), ["q", "down"])
        XCTAssertEqual(try job(.lora).tunableTexts["lora.targets"], "q,down")
        XCTAssertEqual(try job(.functionVector)[.fvHeads], 20)
        XCTAssertEqual(try job(.icv)[.icvAlpha], 0.5)
        XCTAssertEqual(try job(.ia3).tunables, [:], "LoRA's, FV's and ICV's settings are not IA³'s")
        XCTAssertEqual(try job(.ia3).id, try XCTUnwrap(plain.first { $0.spec.method == .ia3 }).id)
        XCTAssertEqual(Set(try job(.lora).tunables.keys), ["lora.targets", "lora.rank"])
        XCTAssertEqual(errors(base + #", "lora": {"targets": ["q", "qkv"]}}"#),
                       [#"lora.targets: unknown name "qkv"; expected some of q, k, v, o, gate, up, down"#])
        XCTAssertEqual(errors(base + #", "lora": {"targets": 3}}"#),
                       [#"lora.targets: expected a list of names like ["q"], got 3"#])
        XCTAssertEqual(errors(#"{"experiment": "x", "tasks": ["a"], "methods": ["function-vector"], "shots": 12}"#),
                       ["shots: few-shot (and function-vector) draws its 12 demonstrations from the training set, "
                            + "so shots must be at most train_size (10)"])
    }

    /// Opinion tasks ("file.json#group") take the intervention and the prompting baselines only.
    func testFunctionVectorJobsShareOneHeadRankingPerTaskAndSeed() throws {
        let g = try Grid.parse("""
        {"experiment": "x", "tasks": ["antonym", "synonym"], "methods": ["function-vector", "zero-shot"],
         "seeds": [0, 1], "shots": 5, "test_size": 30, "fv": {"heads": 5}}
        """)
        let jobs = g.expand()
        let rankings = jobs.filter { $0.spec.method == .fvHeads }
        let fvs = jobs.filter { $0.spec.method == .functionVector }
        XCTAssertEqual(rankings.count, 4, "one per task × seed")
        XCTAssertEqual(fvs.count, 4)
        for fv in fvs {
            XCTAssertEqual(fv.spec.inputs.count, 1)
            let r = try XCTUnwrap(rankings.first { $0.id == fv.spec.inputs[0] })
            XCTAssertEqual([r.spec.task, "\(r.spec.seed)"], [fv.spec.task, "\(fv.spec.seed)"])
            let (ri, fi) = (jobs.firstIndex { $0.id == r.id }!, jobs.firstIndex { $0.id == fv.id }!)
            XCTAssertLessThan(ri, fi, "inputs come first")
            // the ranking depends on the split only: no FV setting, no test size, no shots
            XCTAssertEqual([r.spec.testSize, r.spec.shots, r.spec.maxNewTokens], [0, 0, 0])
            XCTAssertTrue(r.spec.tunables.isEmpty)
            XCTAssertEqual(r.spec.trainSize, fv.spec.trainSize)
        }
        XCTAssertEqual(g.jobCount, jobs.count)
        // a second FV setting reuses the same rankings
        let two = try Grid.parse("""
        {"experiment": "y", "tasks": ["antonym", "synonym"], "methods": ["function-vector"], "seeds": [0, 1],
         "shots": 5, "test_size": 30, "fv": {"heads": 20}}
        """).expand()
        XCTAssertEqual(Set(two.filter { $0.spec.method == .fvHeads }.map(\.id)), Set(rankings.map(\.id)))
        XCTAssertTrue(Set(two.map(\.id)).isDisjoint(with: fvs.map(\.id)))
    }

    func testAddJobsReadTheirComponentsDeltasAtTheirOwnCoordinates() throws {
        let g = try Grid.parse("""
        {"experiment": "x", "tasks": ["antonym_english-french", "c.json"], "methods": ["add", "intervention"],
         "layers": [3, 4], "seeds": [0, 1], "solver": {"steps": 50},
         "components": {"c.json": ["antonym.json", "0123456789abcdef", "french.json"]}}
        """)
        let jobs = g.expand()
        let adds = jobs.filter { $0.spec.method == .add }
        XCTAssertEqual(adds.count, 8)
        for add in adds {
            let byID = Dictionary(uniqueKeysWithValues: jobs.map { ($0.id, $0.spec) })
            let expected = add.spec.task == "c.json" ? ["antonym.json", nil, "french.json"]
                : ["antonym", "english-french"]
            XCTAssertEqual(add.spec.inputs.map { byID[$0]?.task }, expected)
            for (id, spec) in add.spec.inputs.compactMap({ i in byID[i].map { (i, $0) } }) {
                var same = spec
                same.task = add.spec.task
                same.method = .add
                same.inputs = add.spec.inputs
                XCTAssertEqual(same, add.spec, "the Δ summed is learned at the add job's coordinates")
                XCTAssertLessThan(jobs.firstIndex { $0.id == id }!, jobs.firstIndex { $0.id == add.id }!)
            }
            if add.spec.task == "c.json" { XCTAssertEqual(add.spec.inputs[1], "0123456789abcdef", "a job id as it is") }
        }
        // components once per layer × seed, however many add jobs read them
        XCTAssertEqual(jobs.filter { $0.spec.task == "antonym.json" }.count, 4)
        XCTAssertEqual(jobs.count, 8 + 8 + 4 * 4)
        XCTAssertGreaterThanOrEqual(g.jobCount, jobs.count)
        // the id names what is summed
        var other = adds[0].spec
        other.inputs.swapAt(0, 1)
        XCTAssertNotEqual(other.id, adds[0].id)
    }

    func testComponentsAreValidated() {
        func missing(_ t: String) -> String {
            #"components: add needs the components of task "\#(t)" (its name is not "a_b"): give "#
                + #""components": {"\#(t)": ["a", "b"]} with task names or job ids"#
        }
        XCTAssertEqual(errors(#"{"experiment": "x", "tasks": ["a_b", "plain"], "methods": ["add"]}"#), [missing("plain")])
        XCTAssertEqual(errors(#"{"experiment": "x", "tasks": ["t"], "components": {"t": ["a", "b"]}}"#), [
            #"components: only the add method reads components; put "add" in methods"#,
        ])
        let bad = #"{"experiment": "x", "tasks": ["t"], "methods": ["add"], "components": {"u": ["a", "b"], "t": ["a"]}}"#
        XCTAssertEqual(errors(bad), [
            "components.u: not one of the grid's tasks",
            "components.t: expected two or more task names or job ids to add, got 1",
            missing("t"),
        ])
    }

    func testOpinionTasksTakeTheirMethodsOnly() throws {
        let ok = try Grid.parse(#"{"experiment": "o", "tasks": ["q.json#North", "q.json#South"], "#
            + #""methods": ["intervention", "zero-shot", "few-shot"]}"#).expand()
        XCTAssertEqual(Set(ok.map(\.spec.task)), ["q.json#North", "q.json#South"])
        XCTAssertEqual(errors(#"{"experiment": "o", "tasks": ["antonym", "q.json#North"], "methods": ["icv"]}"#),
                       [#"methods: "icv" does not run on opinion tasks ("file.json#group"); on them only "intervention", "#
                            + #""zero-shot", "few-shot" do: put the others in a grid of their own"#])
    }

    func testPromptTemplatesAreValidatedAndCarried() throws {
        let e = errors(#"{"experiment": "x", "tasks": ["antonym"], "prompt": {"query": "Q: x", "target": 3, "style": "y"}}"#)
        XCTAssertEqual(e.count, 3, "\(e)")
        XCTAssertTrue(e.contains { $0.hasPrefix("prompt.style: unknown key") }, "\(e)")
        XCTAssertTrue(e.contains { $0.hasPrefix("prompt.query: expected a string containing {input}") }, "\(e)")
        XCTAssertTrue(e.contains { $0.hasPrefix("prompt.target: expected a string containing {output}") }, "\(e)")
        let jobs = try Grid.parse(#"{"experiment": "x", "tasks": ["antonym"], "prompt": {"query": "{input} ->", "target": " {output}"}}"#).expand()
        XCTAssertEqual(jobs[0].spec.promptTemplate, "{input} ->")
        let plain = try Grid.parse(#"{"experiment": "x", "tasks": ["antonym"]}"#).expand()
        XCTAssertNotEqual(jobs[0].id, plain[0].id, "the template is part of a job's identity")
    }

    func testMissingRequiredFields() {
        XCTAssertEqual(errors("{}"), [
            "experiment: required; expected a non-empty string",
            "tasks: required; expected a task name (non-empty string) or a list of them",
        ])
    }

    func testNotAnObjectAndInvalidJSON() {
        XCTAssertEqual(errors("[1, 2]"), ["expected a JSON object with the grid's fields, got a list"])
        let e = errors("{\"experiment\": \"x\",\n  \"tasks\": [\"a\" \"b\"]}")
        XCTAssertEqual(e, ["not valid JSON at line 2, column 17: expected ',' or ']' in a list"])
    }

    func testDuplicateKeyAndNestedTypeErrors() {
        let e = errors(#"{"experiment": "x", "tasks": "a", "tasks": "b", "solver": [1], "seeds": {"a": 1}}"#)
        XCTAssertEqual(e, [
            "tasks: duplicate key",
            "seeds: expected a non-negative integer or a list of them, got an object",
            #"solver: expected an object like {"steps": 200, "lr": 0.1}, got a list"#,
        ])
    }

    func testFewShotNeedsEnoughTrainingExamples() {
        let e = errors(#"{"experiment": "x", "tasks": "a", "methods": "few-shot", "train_size": 5, "shots": 8}"#)
        XCTAssertEqual(e, ["shots: few-shot (and function-vector) draws its 8 demonstrations from the training set, so shots must be at most train_size (5)"])
    }

    func testBooleansAreNotNumbers() {
        XCTAssertEqual(errors(#"{"experiment": "x", "tasks": "a", "layers": [true]}"#),
                       ["layers[0]: expected a non-negative integer, got true"])
    }

    // MARK: expansion

    func testScalarsAndDefaults() throws {
        let g = try Grid.parse(#"{"experiment": "x", "tasks": "antonym", "layers": 3, "seeds": 7}"#)
        XCTAssertEqual(g.tasks, ["antonym"])
        XCTAssertEqual(g.layers, [3])
        XCTAssertEqual(g.methods, [.intervention])
        XCTAssertEqual(g.device, .any)
        let jobs = g.expand()
        XCTAssertEqual(jobs.count, 1)
        let d = JobSpec(task: "antonym")
        XCTAssertEqual(jobs[0].spec, JobSpec(model: d.model, task: "antonym", method: .intervention, layer: 3,
                                             lambda: d.lambda, gamma: d.gamma, seed: 7, trainSize: d.trainSize,
                                             testSize: d.testSize, steps: d.steps, lr: d.lr,
                                             maxNewTokens: d.maxNewTokens, shots: 0,
                                             solver: SolverMethod.defaultMethod,
                                             precision: Precision.solverDefault),
                       "a grid that names no solver or precision gets the defaults, by name")
    }

    func testCartesianProductWithCollapsedAxes() throws {
        let g = try Grid.parse("""
        {"experiment": "t1", "tasks": ["antonym", "synonym"], "methods": ["zero-shot", "few-shot", "intervention"],
         "layers": [3, 4, 5], "lambda": [0.01, 0.1], "gamma": [0.01], "seeds": [0, 1, 2],
         "train_size": 10, "test_size": 50, "shots": 5, "solver": {"steps": 60, "lr": 0.05},
         "eval": {"max_new_tokens": 3}, "device": "cpu"}
        """)
        let jobs = g.expand()
        let by = Dictionary(grouping: jobs, by: { $0.spec.method })
        XCTAssertEqual(by[.zeroShot]?.count, 2 * 3, "zero-shot: task × seed")
        XCTAssertEqual(by[.fewShot]?.count, 2 * 3, "few-shot: task × seed")
        XCTAssertEqual(by[.intervention]?.count, 2 * 3 * 2 * 1 * 3, "intervention: task × layer × λ × γ × seed")
        XCTAssertEqual(jobs.count, 6 + 6 + 36)
        XCTAssertEqual(g.jobCount, jobs.count)
        XCTAssertEqual(Set(jobs.map(\.id)).count, jobs.count, "ids are unique")
        XCTAssertTrue(jobs.allSatisfy { $0.device == .cpu })
        let zs = by[.zeroShot]![0].spec
        XCTAssertEqual([zs.layer, zs.steps, zs.shots], [0, 0, 0])
        XCTAssertEqual(zs.lambda, 0)
        XCTAssertEqual(zs.maxNewTokens, 3)
        XCTAssertEqual(by[.fewShot]![0].spec.shots, 5)
        let iv = by[.intervention]![0].spec
        XCTAssertEqual(iv.steps, 60)
        XCTAssertEqual(iv.lr, 0.05)
        XCTAssertEqual(iv.testSize, 50)
        XCTAssertEqual(iv.shots, 0, "intervention does not depend on shots")
    }

    func testJobIDsAreStableAcrossSubmissionsAndKeyOrder() throws {
        let a = try Grid.parse("""
        {"experiment": "e", "tasks": ["antonym"], "layers": [3, 5], "lambda": 0.01, "gamma": 0.01,
         "seeds": [0, 1, 2], "solver": {"steps": 60, "lr": 0.1}, "test_size": 50}
        """)
        let b = try Grid.parse("""
        {"test_size": 50, "solver": {"lr": 0.1, "steps": 60}, "seeds": [0, 1, 2], "gamma": [0.01],
         "lambda": [1e-2], "layers": [3, 5], "tasks": "antonym", "experiment": "other-name"}
        """)
        XCTAssertEqual(a.expand().map(\.id), b.expand().map(\.id))
        XCTAssertEqual(try Grid.parse(a.canonicalSource).expand().map(\.id), a.expand().map(\.id))
        // A known value: the id is a 16-hex-digit SHA-256 prefix of the canonical parameters.
        let spec = a.expand()[0].spec
        XCTAssertEqual(spec.id.count, 16)
        XCTAssertTrue(spec.canonicalJSON.hasPrefix(#"{"gamma":0.01,"lambda":0.01,"layer":3,"lr":0.1,"maxNewTokens":"#), spec.canonicalJSON)
        // Changing any parameter changes the id; an irrelevant one (zero-shot's layer) does not.
        var other = spec
        other.seed = 99
        XCTAssertNotEqual(other.id, spec.id)
        var z1 = JobSpec(task: "antonym", method: .zeroShot, layer: 1)
        let z2 = JobSpec(task: "antonym", method: .zeroShot, layer: 9)
        XCTAssertEqual(z1.id, z2.id)
        z1.seed = 1
        XCTAssertNotEqual(z1.id, z2.id)
    }

    func testTooLargeGridIsRefused() {
        let seeds = (0..<1000).map(String.init).joined(separator: ",")
        let layers = (0..<101).map(String.init).joined(separator: ",")
        let e = errors(#"{"experiment": "big", "tasks": "a", "layers": [\#(layers)], "seeds": [\#(seeds)]}"#)
        XCTAssertEqual(e, ["the grid expands to 101000 jobs, more than the 100000 one submission may have "
                           + "(coordinator serve --max-grid-jobs): split it into several experiments"])
        let text = #"{"experiment": "big", "tasks": "a", "layers": [1, 2], "seeds": [1, 2]}"#
        XCTAssertThrowsError(try Grid.parse(text, maxJobs: 3)) { XCTAssertTrue(($0 as? GridErrors)?.tooLarge == true) }
        XCTAssertEqual(try Grid.parse(text, maxJobs: 4).jobCount, 4)
    }

    func testShippedGridsAreValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let quick = try Grid.parse(contentsOf: root.appendingPathComponent("cluster/grids/quickstart.json"))
        XCTAssertEqual(quick.expand().count, 6)
        XCTAssertEqual(quick.tasks, ["antonym"])
        XCTAssertEqual(quick.layers, [3, 5])
        let syn = try Grid.parse(contentsOf: root.appendingPathComponent("cluster/grids/synthetic.json"))
        XCTAssertTrue(syn.methods.allSatisfy { $0.family == .synthetic })
    }

    // MARK: JSON

    func testJSONParserEdgeCases() throws {
        XCTAssertEqual(try JSONValue.parse(#"{"a": [1, 2.5, -3e2, true, null, "\u00e9\n"]}"#).canonical,
                       #"{"a":[1,2.5,-300,true,null,"é\n"]}"#)
        XCTAssertThrowsError(try JSONValue.parse("[01]"))
        XCTAssertThrowsError(try JSONValue.parse("{} x"))
        XCTAssertThrowsError(try JSONValue.parse(String(repeating: "[", count: 100) + String(repeating: "]", count: 100)))
    }
}

extension Grid {
    /// The grid written back as JSON (for round-trip tests).
    var canonicalSource: String {
        func list<T>(_ xs: [T], _ f: (T) -> String) -> String { "[" + xs.map(f).joined(separator: ",") + "]" }
        return """
        {"experiment": \(JSONValue.quote(experiment)), "model": \(JSONValue.quote(model)),
         "tasks": \(list(tasks, JSONValue.quote)), "methods": \(list(methods, { JSONValue.quote($0.rawValue) })),
         "layers": \(list(layers, String.init)), "lambda": \(list(lambdas, { "\($0)" })),
         "gamma": \(list(gammas, { "\($0)" })), "seeds": \(list(seeds, String.init)),
         "train_size": \(trainSize), "test_size": \(testSize), "shots": \(shots),
         "solver": {"steps": \(steps), "lr": \(lr)\(precision.map { ", \"precision\": \"\($0)\"" } ?? "")},
         "eval": {"max_new_tokens": \(maxNewTokens)},
         "device": "\(device.rawValue)"}
        """
    }
}
