import Foundation

extension PairTaskJobs {
    /// An `add` job (composition, the paper's Table 2 "add"): the sum of its inputs' Δs, each
    /// learned on one task, scored on this job's task with the sum and without it (0-shot), as an
    /// intervention job is scored; no training. The sum is the job's Δ artefact (method "add",
    /// the inputs' ids in `inputs`), so it can be applied and exported like a learned one.
    func runAdd(_ p: Prepared, inputs: [(id: String, data: Data)], progress: Progress?) throws -> JobOutcome {
        let t0 = Date()
        guard inputs.count >= 2 else {
            throw EngineJobError("add sums the Δs of two or more input jobs; this job names \(inputs.count)")
        }
        let arts = try inputs.map { i -> (name: String, artefact: DeltaArtefact) in
            do { return ("input \(i.id)", try DeltaArtefact(data: i.data)) } catch {
                throw EngineJobError("input \(i.id) is not a Δ artefact (add sums intervention jobs' Δs): \(error)")
            }
        }
        let steering: Steering
        do { steering = try Steering(artefacts: arts, model: lm) } catch { throw EngineJobError("\(error)") }
        guard let sum = steering.byLayer[p.spec.layer], steering.byLayer.count == 1 else {
            let layers = arts.map { "\($0.name) at layer \($0.artefact.metadata.layer)" }.joined(separator: ", ")
            throw EngineJobError("add: the job's layer is \(p.spec.layer), but its inputs are \(layers): add Δs "
                                    + "learned at the job's layer (worker evaluate --sum scores Δs of several layers)")
        }
        let scale = Float(p.spec[.deltaScale])
        let delta = scale == 1 ? sum : sum.map { $0 * scale }
        let evs = evaluate(p, prompts: p.split.test.map { p.format.prompt($0.input) }, deltas: [delta, nil]) {
            progress?("eval", $0, $1, [:])
        }
        var metrics: [String: Double] = [
            "n_test": Double(p.split.test.count), "n_inputs": Double(inputs.count),
            "delta_l2": Double(sum.reduce(0) { $0 + $1 * $1 }.squareRoot()),
            "nonzero": Double(sum.filter { $0 != 0 }.count),
        ]
        Self.record(evs[0], into: &metrics)
        Self.record(evs[1], into: &metrics, prefix: "zero_shot_")
        metrics["total_ms"] = Date().timeIntervalSince(t0) * 1000
        let first = arts[0].artefact.metadata
        var extra = [
            "inputs": inputs.map(\.id).joined(separator: ","),
            "input_tasks": arts.map(\.artefact.metadata.task).joined(separator: ","),
            "prompt_format": p.format.query, "target_format": p.format.target,
            "exact_match": "\(evs[0].exactMatch)",
        ]
        extra.merge(p.spec.tunableTexts) { $1 }
        let md = DeltaMetadata(
            model: first.model, modelSHA256: first.modelSHA256, task: p.spec.task, method: JobMethod.add.rawValue,
            layer: p.spec.layer, heads: lm.config.nHeads, headDim: lm.config.headDim, seed: p.spec.seed,
            lambda: p.spec.lambda, gamma: p.spec.gamma, steps: 0, lr: 0, solver: "", precision: "",
            trainSize: p.split.train.count, finalLoss: .nan, extra: extra)
        return JobOutcome(metrics: metrics, artefact: DeltaArtefact(delta: sum, metadata: md).data)
    }
}
