#[tokio::main]
async fn main() -> std::process::ExitCode {
    unilink_runtime::main::<unilink_signaling::Signaling>(env!("CARGO_PKG_VERSION")).await
}
