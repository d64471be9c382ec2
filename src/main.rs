//! The `auth-service` binary: the command line of [`auth_service::cli`].

fn main() -> std::process::ExitCode {
    auth_service::cli::main()
}
