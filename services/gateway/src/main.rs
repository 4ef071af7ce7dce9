#[tokio::main]
async fn main() -> std::process::ExitCode {
    unilink_gateway::main(env!("CARGO_PKG_VERSION")).await
}
