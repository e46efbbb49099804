//! The `kiln` command, built inside the test crate so integration tests can run it as a process.

fn main() -> std::process::ExitCode {
    kiln_cli::main()
}
