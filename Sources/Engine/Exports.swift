// The engine's API is phrased in the job's types (JobSpec, JobOutcome, SolverMethod, Precision),
// so a module that imports Engine sees them too.
@_exported import JobCore
