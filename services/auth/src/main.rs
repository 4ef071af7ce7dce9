#[tokio::main]
async fn main() -> std::process::ExitCode {
    unilink_runtime::main::<unilink_auth::Auth>(env!("CARGO_PKG_VERSION")).await
}
