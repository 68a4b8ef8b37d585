//! `cargo run --example wat2wasm -- IN.wat OUT.wasm`: turns a component
//! (or module) in the WebAssembly text format into its binary, with the
//! same `wat` crate the tests use. The benchmarks build their components
//! from `tests/wasm/*.wat` with it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: wat2wasm IN.wat OUT.wasm");
        return ExitCode::from(64);
    };
    let bytes = match wat::parse_file(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wat2wasm: {input}: {e}");
            return ExitCode::from(65);
        }
    };
    if let Err(e) = std::fs::write(output, bytes) {
        eprintln!("wat2wasm: {output}: {e}");
        return ExitCode::from(73);
    }
    ExitCode::SUCCESS
}
