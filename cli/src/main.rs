//! The `tenon` binary: a thin shell over the command line in `tenon_cli`.

fn main() -> std::process::ExitCode {
    tenon_cli::main()
}
