fn main() -> std::process::ExitCode {
    hoop::cli::main()
}
