import ArgumentParser
import Engine
import Foundation

/// `worker`: the process that runs jobs. With no subcommand it connects to a coordinator
/// (`worker --connect tcp://host:5555 --cpu`); the subcommands run the engine on this machine alone.
public struct WorkerCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run the model and the Δ solver: for a coordinator, or alone on this machine.",
        subcommands: [
            ServeCommand.self, RunCommand.self, OpinionCommand.self, GenerateCommand.self, EvaluateCommand.self,
            ExportCommand.self, InspectCommand.self, BenchCommand.self,
        ],
        defaultSubcommand: ServeCommand.self
    )
    public init() {}
}
