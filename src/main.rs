//! `cas-vpn`: main → run → exit code. Everything else lives in the library.

fn main() {
    let cli = match cas_vpn::cli::parse() {
        Ok(cli) => cli,
        Err(code) => std::process::exit(code),
    };
    // `cas-vpn terminal list | head` must end quietly when the reader goes away (as every Unix tool does), not
    // panic on a broken pipe. The long-running commands keep SIGPIPE ignored: their sockets report EPIPE instead.
    if !cli.cmd.is_long_running() {
        cas_vpn::sys::process::default_sigpipe();
    }
    tracing_subscriber::fmt()
        // `serve` tells what it does; one-shot commands stay quiet unless asked (RUST_LOG).
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            if matches!(cli.cmd, cas_vpn::cli::Cmd::Serve { .. }) { "info".into() } else { "warn".into() }
        }))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cas-vpn: cannot start the async runtime: {e}");
            std::process::exit(cas_vpn::cli::EXIT_FAILED);
        }
    };
    let code = match rt.block_on(cas_vpn::cli::run(cli)) {
        Ok(()) => cas_vpn::cli::EXIT_OK,
        Err(e) => {
            eprintln!("cas-vpn: {}", cas_vpn::cli::error_line(&e));
            cas_vpn::cli::EXIT_FAILED
        }
    };
    std::process::exit(code);
}
