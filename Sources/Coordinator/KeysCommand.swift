import ArgumentParser
import Foundation
import Protocol

// MARK: keys

extension CoordinatorCommand {
    struct Keys: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make CurveZMQ key pairs for the coordinator, its workers and its clients.",
            discussion: """
            For each NAME, writes DIR/NAME.pub (one line: the public key, 40 Z85 characters) and \
            DIR/NAME.secret (two lines, `public <key>` and `secret <key>`, mode 0600). A secret stays \
            with its owner; public keys go to whoever must know them: the coordinator's to every \
            worker and client (--server-key), theirs to the coordinator's allow-lists (an allow-list \
            is NAME.pub files concatenated, or one key per line with # comments).

            Example (one machine; copy the files where each process runs):
              coordinator keys coordinator worker alice --out keys
              coordinator serve --bind tcp://0.0.0.0:5555 --pub tcp://0.0.0.0:5556 \\
                --curve-secret keys/coordinator.secret --worker-keys keys/worker.pub --client-keys keys/alice.pub
              worker --connect tcp://HOST:5555 --curve-secret keys/worker.secret --server-key keys/coordinator.pub
              coordinator status --coordinator tcp://HOST:5555 \\
                --curve-secret keys/alice.secret --server-key keys/coordinator.pub
            """
        )

        @Argument(help: "Names of the pairs to make (e.g. coordinator worker alice).")
        var names: [String]

        @Option(help: ArgumentHelp("The folder to write them in (created if missing).", valueName: "dir"))
        var out: String

        @Flag(help: "Replace pairs that exist (peers holding their old public keys must be given the new ones).")
        var force = false

        func validate() throws {
            guard !names.isEmpty else { throw ValidationError("name at least one key pair, e.g. `keys worker`") }
            guard Set(names).count == names.count else { throw ValidationError("a name is given twice") }
        }

        func run() throws {
            do {
                for name in names {
                    let pair = try CurveKeyPair.generate()
                    let paths = try pair.write(name: name, directory: out, overwrite: force)
                    print("\(name): \(pair.publicKey)  (\(paths.pub); secret in \(paths.secret))")
                }
            } catch let e as CurveKeyError {
                printError("error: \(e)")
                throw ExitCode(2)
            }
        }
    }
}
