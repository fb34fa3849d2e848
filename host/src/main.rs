//! The `tenon` binary: a thin shell over the library's command line.

fn main() -> std::process::ExitCode {
    tenon::cli::main()
}
