use clap::Parser;

fn main() -> std::process::ExitCode {
    pcg::cli::run(pcg::cli::Cli::parse())
}
