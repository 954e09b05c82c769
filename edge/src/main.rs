fn main() -> std::process::ExitCode {
    burrow_edge::cli::main()
}
