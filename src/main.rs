//! The `fnroute` binary: parse arguments, then hand over to `fnroute::cli`.

fn main() -> std::process::ExitCode {
    fnroute::cli::main()
}
