import Foundation

extension PairTaskJobs {
    /// An opinion job's data and group, when its task is an opinion address ("<file>.json#<group>",
    /// see `OpinionTask.address`); nil for a pair task.
    func opinionTask(_ spec: JobSpec) throws -> (task: OpinionTask, path: String, group: String)? {
        guard let a = OpinionTask.address(spec.task) else { return nil }
        do { return (try OpinionTask.load(path: a.path), a.path, a.group) }
        catch { throw EngineJobError((error as? LocalizedError)?.errorDescription ?? "\(error)") }
    }

    /// The Δ problem of an intervention job, on a pair task or an opinion task.
    func deltaProblem(_ spec: JobSpec) throws -> DeltaProblem {
        guard let o = try opinionTask(spec) else { return problem(try prepare(spec)) }
        try lm.checkLayer(spec.layer)
        do {
            return try o.task.problem(lm: lm, group: o.group, layer: spec.layer, seed: spec.seed, train: spec.trainSize,
                                      test: spec.testSize, data: o.path)
        } catch let e as OpinionTaskError { throw EngineJobError(e.errorDescription ?? "\(e)") }
    }

    /// An opinion job: the intervention learns Δ on the group's training questions (restricted KL);
    /// zero-shot and few-shot score the model's answers as prompted (few-shot: `shots` training
    /// questions answered with the group's most frequent choice first). All are scored on the same
    /// held-out questions by alignment and KL (`OpinionTask.score`).
    func runOpinion(_ spec: JobSpec, _ o: (task: OpinionTask, path: String, group: String), progress: Progress?) throws
        -> JobOutcome
    {
        let t0 = Date()
        switch spec.method {
        case .intervention:
            return try runFused([spec], progress: progress)[0]
        case .zeroShot, .fewShot:
            let split: (train: [OpinionQuestion], test: [OpinionQuestion])
            do { split = try o.task.split(group: o.group, seed: spec.seed, train: spec.trainSize, test: spec.testSize) }
            catch let e as OpinionTaskError { throw EngineJobError(e.errorDescription ?? "\(e)") }
            let demos = spec.method == .fewShot ? Array(split.train.prefix(max(spec.shots, 0))) : []
            let prompts = split.test.map {
                demos.isEmpty ? OpinionTask.prompt($0) : OpinionTask.fewShotPrompt(demos, group: o.group, $0)
            }
            progress?("eval", 0, split.test.count, [:])
            let dists = OpinionTask.distributions(lm, prompts: prompts, letters: split.test.map(\.options.count))
            progress?("eval", split.test.count, split.test.count, [:])
            var m = OpinionTask.score(dists, split.test, group: o.group)
            m["n_train"] = Double(split.train.count)
            m["total_ms"] = Date().timeIntervalSince(t0) * 1000
            return JobOutcome(metrics: m)
        default:
            throw EngineJobError(
                "method \(spec.method.rawValue) does not run on opinion tasks (\(spec.task)); "
                    + JobMethod.onOpinionTasks.map(\.rawValue).joined(separator: ", ") + " do")
        }
    }
}
