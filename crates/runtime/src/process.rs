//! What every UniLink binary's `main` does, in one place.
//!
//! ```text
//! unilink-<service>            serve until SIGTERM/SIGINT
//! unilink-<service> serve      the same
//! unilink-<service> migrate    apply this service's migrations and exit
//! ```

use std::future::Future;
use std::process::ExitCode;

use unilink_config::Settings;

/// The sub-command a binary was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Serve,
    Migrate,
}

/// Parses the arguments after the program name.
pub fn parse_command(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Serve),
        [one] if one == "serve" => Ok(Command::Serve),
        [one] if one == "migrate" => Ok(Command::Migrate),
        other => Err(format!(
            "unknown arguments {other:?}; expected nothing, `serve` or `migrate`"
        )),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// Reads settings, sets up telemetry, parses the command and runs `body`;
/// prints a one-line reason and exits 1 on failure. Use from `#[tokio::main]`.
pub async fn run<F, Fut, E>(service: &'static str, version: &'static str, body: F) -> ExitCode
where
    F: FnOnce(Settings, Command) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_command(&args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{service}: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _telemetry = match unilink_telemetry::init(service, version, &settings) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{service}: telemetry error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        service,
        version,
        environment = settings.environment.as_str(),
        ?command,
        "starting"
    );
    match body(settings, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(service, error = %e, "exited with an error");
            eprintln!("{service}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed() {
        assert_eq!(parse_command(&[]), Ok(Command::Serve));
        assert_eq!(parse_command(&["migrate".into()]), Ok(Command::Migrate));
        assert_eq!(parse_command(&["serve".into()]), Ok(Command::Serve));
        assert!(
            parse_command(&["migrat".into()])
                .unwrap_err()
                .contains("expected nothing")
        );
        assert!(parse_command(&["migrate".into(), "x".into()]).is_err());
    }
}
