fn main() -> std::process::ExitCode {
    burrow_connector::cli::main()
}
