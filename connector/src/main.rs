// mimalloc: the proxy path allocates and frees many small buffers per request across threads;
// glibc malloc spent ~10% of the connector's CPU there (perf, tests/bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    burrow_connector::cli::main()
}
