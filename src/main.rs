//! The `fnroute` binary: parse arguments, then hand over to `fnroute::cli`.

/// mimalloc rather than glibc's malloc: a request allocates and frees many
/// small objects on short-lived tasks (h3 frames, headers, a wasm
/// instance's host state), and under load glibc's allocator took about 15 %
/// of the edge's CPU in a profile (docs/performance.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fnroute::cli::main()
}
