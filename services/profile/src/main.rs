#[tokio::main]
async fn main() -> std::process::ExitCode {
    unilink_runtime::main::<unilink_profile::Profiles>(env!("CARGO_PKG_VERSION")).await
}
