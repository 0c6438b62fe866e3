// swift-tools-version:6.0
import PackageDescription

// The numeric target is always optimised: a debug `swift test` would otherwise run the model
// 10-100x slower (see README, "Tests"). No -target-cpu: the build runs on any CPU of its
// architecture; the hot kernels are C in CKernels, their instruction set chosen at run time.
let optimised: [SwiftSetting] = [.unsafeFlags(["-O", "-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "Intervene",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "worker", targets: ["WorkerCLI"]),
        .executable(name: "coordinator", targets: ["CoordinatorCLI"]),
        .executable(name: "engine-bench", targets: ["EngineBench"]),
    ],
    // Pinned exactly here rather than by a committed Package.resolved: the build machines fetch
    // these packages from a mirror whose commit ids differ from GitHub's, and SwiftPM refuses a
    // Package.resolved whose recorded revision differs from the one it fetches ("does not match
    // previously recorded value"), so a resolved file from either side breaks the other.
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
    ],
    targets: [
        // C system libraries (Debian packages installed by cluster/setup.sh).
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS"),
        .systemLibrary(name: "CZMQ", path: "Sources/CZMQ"),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),

        // The int8 kernels (C: Swift has no vpdpbusd) and the fp32 few-row products, each compiled
        // for several instruction sets and picked at run time (per-function target attributes; no
        // global -mavx2).
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O2"])]),

        // The job: typed JobSpec, its canonical form and id, methods and their axes, artefact
        // metadata, SHA-256, JSON. Foundation only: everything else depends on it.
        .target(name: "JobCore"),
        // Model, tokenizer, intervention, solver, tasks. No networking.
        .target(name: "Engine", dependencies: ["JobCore", "CBLAS", "CKernels"], swiftSettings: optimised),
        // Wire contract: protobuf messages, ZeroMQ wrapper, the JobSpec <-> JobParams mapping.
        .target(name: "Protocol", dependencies: [
            "JobCore", "CZMQ", .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ], exclude: ["intervene.proto"]),
        .target(name: "Worker", dependencies: [
            "JobCore", "Engine", "Protocol", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // No Engine: the coordinator links neither OpenBLAS nor the kernels.
        .target(name: "Coordinator", dependencies: [
            "JobCore", "Protocol", "CSQLite", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "WorkerCLI", dependencies: ["Worker"]),
        .executableTarget(name: "CoordinatorCLI", dependencies: ["Coordinator"]),
        .executableTarget(name: "EngineBench", dependencies: ["Engine"], swiftSettings: optimised),

        // Fixtures/ is read through #filePath (committed reference numbers, golden ids).
        .testTarget(name: "EngineTests", dependencies: ["Engine"], exclude: ["Fixtures"], swiftSettings: optimised),
        .testTarget(name: "ProtocolTests", dependencies: ["Protocol", "JobCore"]),
        .testTarget(name: "CoordinatorTests", dependencies: ["Coordinator", "Worker", "Protocol", "Engine", "JobCore"],
                    exclude: ["Fixtures"]),
    ],
    swiftLanguageModes: [.v5]
)
